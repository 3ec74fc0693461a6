"""What the registration backends share, and the contract each one keeps.

A backend registers a fixed/moving pair of physical images and returns the fixed → moving
transform in their physical space and unit; it validates its own options, by name, with
:func:`check_choice` (one message for every unknown option value). The backends:

- :mod:`~ngffreg.registration.ants_backend` (ANTsPy: linear stages, SyN);
- :mod:`~ngffreg.registration.elastix_backend` (ITK-elastix: linear, B-spline);
- :mod:`~ngffreg.registration.greedy` (the compiled engine; blocks and the coarse
  deformable step).

Both external toolkits run on lengths scaled into their comfortable range and on float32
arrays in memory: :func:`in_memory` and :func:`unscale` are those two steps, written once.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any, Protocol

import numpy as np
import xarray as xr

from ..errors import InputError
from ..image import load
from ..transforms import Affine, DisplacementField, Sequence, Transform


class Backend(Protocol):
    """The contract: options checked by name (``InputError`` saying the allowed values),
    a pair registered in physical space, the fixed → moving transform returned."""

    ACCURACIES: tuple[str, ...]

    def check_options(self, **options: Any) -> None: ...


def check_choice(name: str, value: Any, allowed: Seq[str]) -> str:
    """``value`` when it is one of ``allowed``; else an error naming them."""
    if value not in allowed:
        raise InputError(f"Unknown {name} {value!r}; use one of: {', '.join(allowed)}.")
    return value


def in_memory(image: xr.DataArray) -> np.ndarray:
    """The image's voxels as float32, computed (what the external toolkits take)."""
    return np.asarray(load(image).values, dtype=np.float32)


def unscale(t: Transform, k: float, unit: str) -> Transform:
    """A transform fitted on coordinates multiplied by ``k``, in the original coordinates
    (``T(p) = T_k(k p) / k``), held in memory."""
    if isinstance(t, Sequence):
        return Sequence(transforms=tuple(unscale(s, k, unit) for s in t.transforms))
    if isinstance(t, DisplacementField):
        grid = t.grid
        data = np.asarray(t.field.values, dtype=np.float32)
        return DisplacementField.from_array(
            data / np.float32(k) if k != 1 else data, spacing=grid.spacing / k,
            origin=grid.origin / k, direction=grid.direction, unit=unit)
    m = np.array(t.matrix, dtype=np.float64)
    m[:3, 3] /= k
    return Affine(matrix=m)


__all__ = ["Backend", "check_choice", "in_memory", "unscale"]
