"""Thin-plate splines: :class:`ThinPlateSpline`, the landmark-driven transform of BigWarp."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import TransformError
from .base import Transform, _frozen, as_points


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class ThinPlateSpline(Transform):
    """A 3-D thin-plate spline (kernel r² log r plus an affine part) that maps each
    ``source`` landmark exactly onto its ``target`` landmark (both (N, 3), z, y, x).

    Its :meth:`inverse` is the spline fitted the other way (target → source), which
    is exact at the landmarks and approximate between them.
    """

    source: Any = None
    target: Any = None

    def __post_init__(self) -> None:
        src = as_points(self.source, "source landmarks")
        dst = as_points(self.target, "target landmarks")
        if len(src) != len(dst):
            raise TransformError(
                f"{len(src)} source landmarks but {len(dst)} target landmarks; they must pair up.")
        if len(src) < 4:
            raise TransformError(
                f"A 3-D thin-plate spline needs at least 4 landmarks; got {len(src)}.")
        object.__setattr__(self, "source", _frozen(src))
        object.__setattr__(self, "target", _frozen(dst))

    @cached_property
    def _interpolator(self):
        from scipy.interpolate import RBFInterpolator

        try:
            return RBFInterpolator(self.source, self.target - self.source,
                                   kernel="thin_plate_spline", degree=1)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise TransformError(
                f"The landmarks do not define a thin-plate spline ({exc}); they need at "
                "least 4 points that are not all in one plane.") from exc

    def _describe(self) -> list[str]:
        return [f"{len(self.source)} landmarks"]

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points + self._interpolator(points)

    def inverse(self) -> ThinPlateSpline:
        return ThinPlateSpline(source=self.target, target=self.source, **self._swapped())
