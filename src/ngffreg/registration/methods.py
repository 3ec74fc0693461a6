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

It may also answer ``"declined"``: the block is better left to the transform it was
pre-warped with (zero residual), e.g. because the fit did not improve the images' match on
voxels held out of it.

A method that releases the GIL for its whole run declares ``releases_gil = True``; others
run in a child process of their worker so that the worker keeps answering its scheduler
(:mod:`~ngffreg.registration.isolation`).

Built in: :class:`Greedy` (the default: the compiled engine of
:mod:`~ngffreg.registration.greedy`), :class:`AntsSyN`, :class:`AntsAffine` and
:class:`ElastixBSpline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from ..blocks import core_slices
from ..errors import InputError
from ..transforms import Transform
from . import ants_backend, elastix_backend, greedy
from .backend import check_choice


@dataclass(frozen=True)
class BlockInfo:
    """What a block method may want to know about its block."""

    id: int
    index: tuple[int, int, int]
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]
    level: int
    unit: str
    #: Where the pre-warped moving block holds data (true) rather than the zeros of
    #: points outside the moving image; ``None`` when it holds data everywhere.
    moving_valid: np.ndarray | None = None


@dataclass
class BlockResult:
    """A block method's answer (see the module docstring)."""

    status: str
    transform: Transform | None = None
    valid: np.ndarray | None = None
    message: str = ""
    metrics: dict[str, Any] | None = None


BlockMethod = Callable[[xr.DataArray, xr.DataArray, Transform, BlockInfo], BlockResult]


#: Deformable types served by the greedy engine (``GreedySVF``: stationary velocity).
GREEDY_TYPES = ("Greedy", "GreedySVF")
#: Iterations per level (coarse to fine) of the greedy engine for each accuracy.
GREEDY_SCHEDULES = {"low": (30, 15, 5), "medium": (50, 25, 10), "high": (100, 50, 20)}
#: A greedy block must raise the held-out voxels' local correlation by more than this.
GREEDY_MIN_GAIN = 0.0


@dataclass(frozen=True)
class Greedy:
    """The compiled greedy engine on a block pair (:mod:`~ngffreg.registration.greedy`):
    local normalised cross-correlation (``metric="ncc"``, window half-width ``radius``
    voxels) or ``"ssd"``, iteration schedule from ``accuracy``
    (:data:`GREEDY_SCHEDULES`) unless ``iterations`` is given, smoothing ``sigma_update``
    and ``sigma_field`` (voxels, or lengths such as ``"80 um"``), ``velocity=True`` for a
    stationary velocity field.

    Do no harm: voxels in a lattice of small cubes (one in eight, ``hold_out_cell`` voxels
    wide) are held out of the fit; unless the fit raises their mean local correlation in
    the block's core by more than ``min_gain``, the block answers ``"declined"`` and keeps
    the transform it was pre-warped with. ``hold_out_cell=0`` fits every voxel and judges
    nothing.

    ``data_only`` (default True): where the block's points leave the moving image
    (``BlockInfo.moving_valid``), fit only where the pre-warped block holds data; the part
    without data keeps the pre-warp transform. ``False`` fits the whole block, which pulls
    the edge of the data over that part (stretched tissue where there is none: on a known
    map with missing strips, ``benchmarks/bench_strips.py``, a median error of 3.7 µm in
    the strips against 0.8 µm, and a p95 of 2.5 against 0.6 µm where the moving image has
    data)."""

    accuracy: str = "medium"
    metric: str = "ncc"
    radius: Any = 2
    iterations: tuple[int, ...] | None = None
    step: float = 1.0
    sigma_update: Any = 1.732
    sigma_field: Any = 0.707
    velocity: bool = False
    hold_out_cell: int = 4
    gradient: str = "central"
    min_gain: float = GREEDY_MIN_GAIN
    data_only: bool = True

    releases_gil: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_choice("accuracy", self.accuracy, tuple(GREEDY_SCHEDULES))
        self.options()

    def options(self) -> greedy.GreedyOptions:
        return greedy.GreedyOptions(
            metric=self.metric, radius=self.radius,
            iterations=self.iterations or GREEDY_SCHEDULES[self.accuracy], step=self.step,
            sigma_update=self.sigma_update, sigma_field=self.sigma_field,
            velocity=self.velocity, inverse=False, gradient=self.gradient)

    def moving_mask(self, valid: np.ndarray | None) -> np.ndarray | None:
        """What the engine is told of where the pre-warped moving array holds data
        (``valid``): the mask with ``data_only`` where some of it holds none, else None
        (fit everywhere)."""
        return valid if self.data_only and valid is not None and not valid.all() else None

    def __call__(self, fixed: xr.DataArray, moving: xr.DataArray, initial: Transform,
                 info: BlockInfo) -> BlockResult:
        hold = (greedy.hold_out_cells(fixed.shape, self.hold_out_cell)
                if self.hold_out_cell else None)
        options = self.options()
        result = greedy.greedy_register(
            fixed, moving, options, hold_out=hold, judge=core_slices(info.core, info.region),
            moving_mask=self.moving_mask(info.moving_valid))
        if result.held_out is not None:
            before, after = result.held_out
            if not after - before > self.min_gain:
                return BlockResult("declined", message=(
                    f"no gain on held-out voxels (local correlation {before:.4f} → "
                    f"{after:.4f})"), metrics={"held_out_before": before,
                                               "held_out_after": after})
            return BlockResult("ok", result.transform, metrics={
                "held_out_before": before, "held_out_after": after})
        return BlockResult("ok", result.transform)


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
        check_choice("accuracy", self.accuracy, elastix_backend.ACCURACIES)
        check_choice("metric", self.metric, elastix_backend.METRICS)

    def __call__(self, fixed: xr.DataArray, moving: xr.DataArray, initial: Transform,
                 info: BlockInfo) -> BlockResult:
        result = elastix_backend.run_elastix(
            fixed, moving, ["bspline"], accuracy=self.accuracy, grid_spacing=self.grid_spacing,
            metric=self.metric, random_seed=self.random_seed)
        return BlockResult("ok", result.transform)


BLOCK_METHODS: dict[str, Callable[..., BlockMethod]] = {
    "greedy": Greedy,
    "ants-syn": AntsSyN,
    "ants-affine": AntsAffine,
    "elastix-bspline": ElastixBSpline,
}


def default_block_method(nonlinear_type: str = "Greedy", accuracy: str = "medium"
                         ) -> BlockMethod:
    """The block method a deformable type names: :class:`Greedy` for ``Greedy`` and
    ``GreedySVF``, :class:`AntsSyN` for the ANTs types."""
    if nonlinear_type in GREEDY_TYPES:
        return Greedy(accuracy=accuracy, velocity=nonlinear_type == "GreedySVF")
    return AntsSyN(accuracy=accuracy, nonlinear_type=nonlinear_type)


def block_method(method: Any = None, **options: Any) -> BlockMethod:
    """A block method from a name (``"greedy"``, ``"ants-syn"``, ``"ants-affine"``,
    ``"elastix-bspline"``) with ``options``, or a user's callable returned unchanged."""
    if method is None:
        method = "greedy"
    if callable(method):
        return method
    if method not in BLOCK_METHODS:
        raise InputError(f"Unknown block method {method!r}; use one of "
                         f"{', '.join(BLOCK_METHODS)} or pass a callable "
                         "(fixed, moving, initial, info) -> BlockResult.")
    return BLOCK_METHODS[method](**options)
