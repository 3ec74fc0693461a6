"""Block methods: how one block pair is registered.

The protocol follows itk-dreg's block-pair registration method. A block method is any
callable

    method(fixed, moving, initial, info) -> BlockResult

- ``fixed``: the fixed block (an in-memory image, dims z, y, x, with its physical grid);
- ``moving``: the moving image already resampled onto the fixed block's grid through the
  current transform (``initial``), so the two overlap voxel for voxel;
- ``initial``: the current fixed → moving transform (coarse result), for methods that want
  to look at the unwarped moving data themselves;
- ``info``: a :class:`BlockInfo` (block index, regions, level, unit).

It returns a :class:`BlockResult`: ``status`` (``"ok"`` or ``"failed"``), the *residual*
``transform`` (fixed block points → points of the pre-warped moving block, both in fixed
physical space), and optionally ``valid`` (a boolean mask on the block grid where the
residual can be trusted; outside it the blend gives the block no weight). Raising an
exception is allowed: the block is then marked failed and filled from its neighbours.

Built in: :class:`AntsSyN` (the default), :class:`AntsAffine` and :class:`ElastixBSpline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..transforms.model import Transform
from . import ants_backend, elastix_backend


@dataclass(frozen=True)
class BlockInfo:
    """What a block method may want to know about its block."""

    id: int
    index: tuple[int, int, int]
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]
    level: int
    unit: str


@dataclass
class BlockResult:
    """A block method's answer (see the module docstring)."""

    status: str
    transform: Transform | None = None
    valid: np.ndarray | None = None
    message: str = ""


BlockMethod = Callable[[xr.DataArray, xr.DataArray, Transform, BlockInfo], BlockResult]


@dataclass(frozen=True)
class AntsSyN:
    """Deformable ANTs registration of a block pair (``SyN``/``SyNOnly``: SyN;
    ``Elastic``: Gaussian displacement field), cross-correlation by default, iterating
    down to the block's own resolution (schedules in
    :data:`~ngffreg.registration.ants_backend.NONLINEAR_SCHEDULES`)."""

    accuracy: str = "medium"
    nonlinear_type: str = "SyNOnly"
    metric: str = "CC"
    radius: int = 2
    iterations: tuple[int, ...] | None = None
    random_seed: int | None = 1

    def __post_init__(self) -> None:
        ants_backend.nonlinear_stage(self.nonlinear_type, self.accuracy, metric=self.metric,
                                     radius=self.radius, iterations=self.iterations)

    def __call__(self, fixed: xr.DataArray, moving: xr.DataArray, initial: Transform,
                 info: BlockInfo) -> BlockResult:
        stage = ants_backend.nonlinear_stage(self.nonlinear_type, self.accuracy,
                                             metric=self.metric, radius=self.radius,
                                             iterations=self.iterations)
        result = ants_backend.run_ants(fixed, moving, [stage], initialize="identity",
                                       random_seed=self.random_seed, inverse=False)
        return BlockResult("ok", result.transform)


@dataclass(frozen=True)
class AntsAffine:
    """A linear ANTs registration of a block pair (``linear_type``), returned as the
    residual affine."""

    accuracy: str = "medium"
    linear_type: str = "Affine"
    random_seed: int | None = 1

    def __post_init__(self) -> None:
        ants_backend.linear_stages(self.linear_type, self.accuracy)

    def __call__(self, fixed: xr.DataArray, moving: xr.DataArray, initial: Transform,
                 info: BlockInfo) -> BlockResult:
        result = ants_backend.run_ants(
            fixed, moving, ants_backend.linear_stages(self.linear_type, self.accuracy),
            initialize="identity", random_seed=self.random_seed, inverse=False)
        return BlockResult("ok", result.transform)


@dataclass(frozen=True)
class ElastixBSpline:
    """A B-spline elastix registration of a block pair (schedules in
    :data:`~ngffreg.registration.elastix_backend.ELASTIX_SCHEDULES`), its control points
    ``grid_spacing`` apart (physical units of the block; default
    :data:`~ngffreg.registration.elastix_backend.DEFAULT_GRID_VOXELS` voxels), normalised
    correlation by default. elastix runs in the calling process: use worker processes
    (``workers`` > 1 or a dask client with processes), not threads."""

    accuracy: str = "medium"
    grid_spacing: float | tuple[float, float, float] | None = None
    metric: str = "AdvancedNormalizedCorrelation"
    random_seed: int | None = 1

    def __post_init__(self) -> None:
        elastix_backend._check("accuracy", self.accuracy, elastix_backend.ACCURACIES)
        elastix_backend._check("metric", self.metric, elastix_backend.METRICS)

    def __call__(self, fixed: xr.DataArray, moving: xr.DataArray, initial: Transform,
                 info: BlockInfo) -> BlockResult:
        result = elastix_backend.run_elastix(
            fixed, moving, ["bspline"], accuracy=self.accuracy, grid_spacing=self.grid_spacing,
            metric=self.metric, random_seed=self.random_seed)
        return BlockResult("ok", result.transform)


BLOCK_METHODS: dict[str, Callable[..., BlockMethod]] = {
    "ants-syn": AntsSyN,
    "ants-affine": AntsAffine,
    "elastix-bspline": ElastixBSpline,
}


def block_method(method: Any = None, **options: Any) -> BlockMethod:
    """A block method from a name (``"ants-syn"``, ``"ants-affine"``, ``"elastix-bspline"``)
    with ``options``, or a user's callable returned unchanged."""
    if method is None:
        method = "ants-syn"
    if callable(method):
        return method
    if method not in BLOCK_METHODS:
        raise InputError(f"Unknown block method {method!r}; use one of "
                         f"{', '.join(BLOCK_METHODS)} or pass a callable "
                         "(fixed, moving, initial, info) -> BlockResult.")
    return BLOCK_METHODS[method](**options)
