"""The coarse step: a whole-volume registration at a low pyramid level.

The level is chosen by ``downsample_factor`` (the level whose spacing is closest to, and
not coarser than, level 0's times the factor, and coarser still when that level has more
than :data:`COARSE_MAX_VOXELS` voxels, so that the step's memory does not grow with the
volume), by ``target_spacing``, or by ``memory_budget`` (the finest level whose
registration fits: about :data:`BYTES_PER_VOXEL` per fixed voxel). Linear stages
(``linear_type``) run first, then an optional deformable stage (``nonlinear_type``):
``"Greedy"`` (the default, the compiled engine of :mod:`~ngffreg.registration.greedy` on
the moving image resampled through the linear result; ``"GreedySVF"`` for its
stationary-velocity form) or an ANTs type (``SyN``, ``SyNOnly``, ``Elastic``: all stages
in one ANTs call). The result is a fixed→moving transform ``[coarse field, affine]`` in
physical space, with its inverse. ``backend="elastix"`` runs the same steps with
ITK-elastix instead (linear types as in ANTs; the deformable stage is ``"BSpline"``; see
:func:`elastix_kinds`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError
from ..image import Grid, load, spacing, to_units, units
from ..pyramid import coarsest_level, finest_level
from ..pyramid import image_levels as image_levels
from ..qc import ncc, otsu_threshold
from ..transforms import Identity, Transform
from ..units import parse_bytes
from ..warp import warp, warp_covered
from . import ants_backend, elastix_backend
from .backend import check_choice
from .isolation import call_in_child
from .methods import GREEDY_SCHEDULES, GREEDY_TYPES

#: Rough peak memory of an ANTs SyN registration per fixed voxel (measured: ~1.65 GB for
#: the 7.2 M-voxel mni/ch2 pair), used to pick a level from a memory budget.
BYTES_PER_VOXEL = 240
#: The ANTs call's environment: ITK's multi-threaded sums differ from run to run (the
#: phantom's rigid map moved by 0.05 mm between two identical runs with 2 threads).
ONE_THREAD_ENV = {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
#: The most voxels of a coarse level chosen by ``downsample_factor`` (4 M: about 1 GiB at
#: :data:`BYTES_PER_VOXEL`; the greedy engine needs ~170 B per voxel): on a larger volume
#: the step runs on a coarser level, the blocks finding the rest. Measured on the brain at
#: 64× (904 M voxels): at factor 4 (level 2, 14 M voxels) the step peaked at 2.11 GiB in
#: 163 s; capped (level 3, 1.8 M voxels) at 1.65 GiB in 125 s, as at 8× (1.69 GiB).
#: ``coarse_level``, ``coarse_spacing`` or ``coarse_memory_budget`` choose otherwise.
COARSE_MAX_VOXELS = 2**22
#: The linear stages run one level finer than the coarse level up to this size (voxels):
#: 4 M, as :data:`COARSE_MAX_VOXELS`. On the EASI-FISH pair the level finer (16.4 M
#: voxels) took ANTs 135 s of a 158 s coarse step and 1.93 GiB; on the coarse level itself
#: (2.0 M) the step took 40 s and the whole run ended better (foreground NCC 0.488
#: against 0.480).
LINEAR_MAX_VOXELS = 2**22
#: Peak memory of ANTs' linear stages (the child process, both images, its base included)
#: per fixed voxel: 1.93 GiB on the EASI-FISH pair's level 1 (16.4 M voxels).
LINEAR_BYTES_PER_VOXEL = 120


def pick_level(levels: Seq[xr.DataArray], *, downsample_factor: float | None = None,
               target_spacing: Any = None, memory_budget: Any = None,
               level: int | None = None, max_voxels: float | None = None) -> int:
    """Index of the level to register at (see the module docstring); ``level`` wins.
    ``max_voxels``: with ``downsample_factor`` (no ``target_spacing``), the coarsest of the
    factor's level and the finest level with at most that many voxels."""
    if level is not None:
        if not 0 <= level < len(levels):
            raise InputError(f"level {level} does not exist; the image has {len(levels)} "
                             "levels.")
        return int(level)
    if memory_budget is not None:
        return finest_level([lv.size for lv in levels],
                            float(parse_bytes(memory_budget)) / BYTES_PER_VOXEL)
    by_factor = target_spacing is None
    if by_factor:
        factor = 4.0 if downsample_factor is None else float(downsample_factor)
        if factor < 1:
            raise InputError(f"downsample_factor must be ≥ 1; got {downsample_factor}.")
        target_spacing = np.asarray(spacing(levels[0])) * factor
    # a level may be a little coarser than asked on an axis (anisotropic pyramids)
    chosen = coarsest_level([spacing(lv) for lv in levels], target_spacing, slack=0.5)
    if by_factor and max_voxels is not None:
        chosen = max(chosen, finest_level([lv.size for lv in levels], max_voxels))
    return chosen


def matching_level(levels: Seq[xr.DataArray], like: xr.DataArray) -> int:
    """The level of ``levels`` whose spacing is closest (log scale) to ``like``'s."""
    want = np.log(np.asarray(spacing(like)))
    unit = units(like)
    costs = [float(np.abs(np.log(np.asarray(spacing(to_units(lv, unit) if units(lv) != unit
                                                    else lv))) - want).sum())
             for lv in levels]
    return int(np.argmin(costs))


def _moving_like(moving_levels: Seq[xr.DataArray], fixed: xr.DataArray
                 ) -> tuple[int, xr.DataArray]:
    """The moving level matching ``fixed`` (:func:`matching_level`), in ``fixed``'s unit."""
    i = matching_level(moving_levels, fixed)
    moving = moving_levels[i]
    return i, to_units(moving, units(fixed)) if units(moving) != units(fixed) else moving


@dataclass
class CoarseResult:
    """The coarse registration: ``transform`` (fixed → moving), ``inverse``, the levels it
    ran at and its measurements."""

    transform: Transform
    inverse: Transform | None
    fixed_level: int
    moving_level: int
    metrics: dict[str, Any] = field(default_factory=dict)


def overlap_fraction(fixed: xr.DataArray, moving: xr.DataArray, transform: Transform) -> float:
    """The fraction of the fixed image's foreground (Otsu) that ``transform`` maps into the
    moving image."""
    data = np.asarray(fixed.values, dtype=np.float32)
    fg = data > otsu_threshold(data)
    if not fg.any():
        return 0.0
    pts = Grid.of(fixed).points()[fg.ravel()]
    step = max(1, len(pts) // 20000)
    cidx = Grid.of(moving).continuous_index(transform.apply(pts[::step]))
    return float(Grid.of(moving).inside(cidx).mean())


def coarse_register(
    fixed_levels: Seq[xr.DataArray],
    moving_levels: Seq[xr.DataArray],
    *,
    linear_type: str | None = "Affine",
    nonlinear_type: str | None = "Greedy",
    linear_accuracy: str = "medium",
    nonlinear_accuracy: str = "medium",
    downsample_factor: float | None = 4,
    target_spacing: Any = None,
    memory_budget: Any = None,
    level: int | None = None,
    metric: str = "CC",
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    random_seed: int | None = 1,
    backend: str = "ants",
) -> CoarseResult:
    """Register the whole volumes at a coarse level (see the module docstring).

    ``backend``: ``"ants"`` (default) or ``"elastix"``. Raises
    :class:`~ngffreg.errors.InputError` for unknown types or accuracies, and when the
    result leaves the fixed foreground outside the moving image (no overlap).
    """
    stages: list[Any] = []
    engine = nonlinear_type if nonlinear_type in GREEDY_TYPES else None
    if engine:  # the linear stages with the backend, then the greedy engine
        nonlinear_type = None
        check_choice("accuracy", nonlinear_accuracy, tuple(GREEDY_SCHEDULES))
    if backend == "elastix":
        stages = elastix_kinds(linear_type, nonlinear_type)
        check_choice("linear_accuracy", linear_accuracy, elastix_backend.ACCURACIES)
        check_choice("nonlinear_accuracy", nonlinear_accuracy,
                               elastix_backend.ACCURACIES)
    elif backend != "ants":
        raise InputError(f"Unknown backend {backend!r}; use ants or elastix.")
    if backend == "ants" and linear_type:
        stages += ants_backend.linear_stages(linear_type, linear_accuracy)
    if backend == "ants" and nonlinear_type:
        stages.append(ants_backend.nonlinear_stage(nonlinear_type, nonlinear_accuracy,
                                                   metric=metric))
    fi = pick_level(fixed_levels, downsample_factor=downsample_factor,
                    target_spacing=target_spacing, memory_budget=memory_budget, level=level,
                    max_voxels=COARSE_MAX_VOXELS)
    fixed = fixed_levels[fi]
    mi, moving = _moving_like(moving_levels, fixed)
    fixed, moving = load(fixed), load(moving)
    t0 = time.perf_counter()
    initial: dict[str, Any] = {}  # where the linear stages started (ANTs)
    li = fi  # the level they ran on
    if stages and backend == "elastix":
        transform = _run_elastix(fixed, moving, stages, linear_accuracy, nonlinear_accuracy,
                                 metric, _mask_on(fixed_mask, fixed),
                                 _mask_on(moving_mask, moving), random_seed)
        inverse = transform.inverse() if transform.is_linear else None
    elif stages:
        lf, lm = fixed, moving
        li = fi if nonlinear_type else linear_level(fixed_levels, fi, memory_budget)
        if li != fi:
            lf = load(fixed_levels[li])
            lm = load(_moving_like(moving_levels, lf)[1])
        start, initial = _start(fixed, moving) if linear_type else (None, {})
        result = call_in_child(  # one ITK thread: the same answer run after run
            ants_backend.run_ants, lf, lm, stages, fixed_mask=_mask_on(fixed_mask, lf),
            moving_mask=_mask_on(moving_mask, lm), random_seed=random_seed,
            initial_transform=start, env=ONE_THREAD_ENV)
        transform, inverse = result.transform, result.inverse
    else:
        transform, inverse = Identity(), Identity()
    deformable: dict[str, Any] = {}
    if engine:
        transform, inverse, deformable = _run_greedy(
            fixed, moving, transform, inverse, engine, nonlinear_accuracy,
            _mask_on(fixed_mask, fixed))
    seconds = time.perf_counter() - t0
    before = ncc(fixed.values, warp(moving, Identity(), like=fixed).values)
    after = ncc(fixed.values, warp(moving, transform, like=fixed).values)
    overlap = overlap_fraction(fixed, moving, transform)
    metrics = {"fixed_shape": list(fixed.shape), "moving_shape": list(moving.shape),
               "fixed_spacing": list(spacing(fixed)), "moving_spacing": list(spacing(moving)),
               "ncc_before": before, "ncc_after": after, "seconds": seconds,
               "overlap": overlap, "backend": backend,
               "stages": [getattr(s, "transform", s) for s in stages] + (
                   [engine] if engine else []), **deformable,
               **({"initial": initial} if initial else {}),
               **({"linear_level": li} if stages and backend == "ants" else {})}
    if overlap < 0.05:
        raise InputError(
            f"After the coarse step only {overlap:.1%} of the fixed image's foreground maps "
            "into the moving image: the images do not overlap. Check that both are in the same "
            "physical space (origin, orientation, units, voxel size), or give an initial "
            "transform.")
    return CoarseResult(transform, inverse, fi, mi, metrics)


def linear_level(fixed_levels: Seq[xr.DataArray], level: int, memory_budget: Any = None) -> int:
    """The level ANTs' linear stages run on for a coarse step at ``level``: the level
    twice finer (their schedules stop one halving short of the image they get, so they
    end at ``level``'s own resolution) when it has at most :data:`LINEAR_MAX_VOXELS` voxels
    and, under ``memory_budget``, about :data:`LINEAR_BYTES_PER_VOXEL` per voxel fits in
    it; else ``level`` itself."""
    if level == 0:
        return level
    voxels = fixed_levels[level - 1].size
    if voxels > LINEAR_MAX_VOXELS or (memory_budget is not None and voxels
                                      * LINEAR_BYTES_PER_VOXEL > parse_bytes(memory_budget)):
        return level
    return level - 1


#: The correlation search's start replaces ANTs' centroid start when its overlap
#: correlates better by more than this (NCC).
START_MARGIN = 0.05


def _start(fixed: xr.DataArray, moving: xr.DataArray) -> tuple[Transform | None, dict[str, Any]]:
    """Where the linear stages start: ANTs' own (the intensity centroids aligned), unless
    the translation with the best correlating overlap over every shift
    (:func:`~ngffreg.registration.initial.initial_translation`) correlates better by more
    than :data:`START_MARGIN`; then that translation. Returns it (None: ANTs' own) and
    what was measured."""
    from .initial import initial_translation

    def centroid(image: xr.DataArray) -> np.ndarray:
        w = np.clip(np.asarray(image.values, dtype=np.float64), 0, None)
        grid = Grid.of(image)
        idx = np.array([np.tensordot(w, np.arange(n), axes=([k], [0])).sum() /
                        max(w.sum(), 1e-12) for k, n in enumerate(w.shape)])
        return grid.origin + grid.direction @ (grid.spacing * idx)

    reference = centroid(moving) - centroid(fixed)
    found, report = initial_translation(fixed, moving, reference=reference)
    report["centroid_translation"] = reference.tolist()
    better = (report.get("ncc") is not None and report["ncc"]
              > report.get("reference_ncc", -1.0) + START_MARGIN)
    report["used"] = "correlation" if better else "centroids"
    return (found if better else None), report


def _run_greedy(fixed: xr.DataArray, moving: xr.DataArray, linear: Transform,
                linear_inverse: Transform | None, engine: str, accuracy: str,
                fixed_mask: xr.DataArray | None
                ) -> tuple[Transform, Transform | None, dict[str, Any]]:
    """The greedy engine after the linear stages: the moving image resampled onto the fixed
    grid through ``linear``, registered there; ``[field, linear]`` and its inverse, and what
    was decided. As for blocks, voxels in a lattice of small cubes are held out of the
    fit: when it does not raise their local correlation, the linear result is kept."""
    from ..transforms import Sequence
    from .greedy import greedy_register, hold_out_cells
    from .methods import Greedy

    prewarped, covered = warp_covered(moving, linear, like=fixed, interpolator="bSpline")
    method = Greedy(accuracy=accuracy, velocity=engine == "GreedySVF")
    options = dataclasses.replace(method.options(), inverse=True)
    result = greedy_register(fixed, prewarped, options, fixed_mask=fixed_mask,
                             moving_mask=method.moving_mask(covered),
                             hold_out=hold_out_cells(fixed.shape, method.hold_out_cell))
    before, after = result.held_out
    record = {"held_out_before": before, "held_out_after": after,
              "deformable": "ok" if after - before > method.min_gain else "declined"}
    if record["deformable"] == "declined":
        return linear, linear_inverse, record
    # the stored field's name (coordinateTransformations/coarse in the output store)
    result = dataclasses.replace(result, transform=result.transform.renamed(name="coarse"))
    if isinstance(linear, Identity):
        return result.transform, result.inverse, record
    inverse = None
    if result.inverse is not None and linear_inverse is not None:
        inverse = Sequence(transforms=(linear_inverse, result.inverse))
    return Sequence(transforms=(result.transform, linear)), inverse, record


def _mask_on(mask: xr.DataArray | None, like: xr.DataArray) -> xr.DataArray | None:
    """A mask resampled (nearest) onto ``like``'s grid, when given."""
    if mask is None:
        return None
    return warp(mask, Identity(), like=like, interpolator="nearestNeighbor").compute()


#: elastix stages per linear type (``Affine`` is preceded by a rigid stage, as in ANTs).
ELASTIX_LINEAR = {"Translation": ["translation"], "Rigid": ["rigid"],
                  "Similarity": ["similarity"], "Affine": ["rigid", "affine"]}
#: Deformable types only the elastix backend has.
ELASTIX_NONLINEAR = {"BSpline": "bspline"}


def elastix_kinds(linear_type: str | None, nonlinear_type: str | None) -> list[str]:
    """The elastix transform kinds for ngffreg's ``linear_type`` (``Translation``,
    ``Rigid``, ``Similarity``, ``Affine``) and ``nonlinear_type`` (``BSpline``; the ANTs
    types ``SyN``, ``SyNOnly`` and ``Elastic`` are refused)."""
    kinds: list[str] = []
    if linear_type:
        check_choice("linear_type", linear_type, ants_backend.LINEAR_TYPES)
        kinds += ELASTIX_LINEAR[linear_type]
    if nonlinear_type:
        if nonlinear_type in ants_backend.NONLINEAR_TYPES:
            raise InputError(f"nonlinear_type {nonlinear_type!r} is an ANTs transform; the "
                             "elastix backend has 'BSpline' (or None), or use backend='ants'.")
        check_choice("nonlinear_type", nonlinear_type, tuple(ELASTIX_NONLINEAR))
        kinds.append(ELASTIX_NONLINEAR[nonlinear_type])
    return kinds


def _run_elastix(fixed: xr.DataArray, moving: xr.DataArray, kinds: list[str],
                 linear_accuracy: str, nonlinear_accuracy: str, metric: str,
                 fixed_mask: xr.DataArray | None, moving_mask: xr.DataArray | None,
                 random_seed: int | None) -> Transform:
    """The coarse step with elastix: linear stages on mutual information (as ANTs), then the
    B-spline stage on ``metric`` (``CC`` → normalised correlation, ``MI`` → Mattes mutual
    information), each at its own accuracy."""
    linear = [k for k in kinds if k != "bspline"]
    common = {"fixed_mask": fixed_mask, "moving_mask": moving_mask, "random_seed": random_seed}
    transform: Transform | None = None
    if linear:
        transform = elastix_backend.run_elastix(fixed, moving, linear, accuracy=linear_accuracy,
                                                **common).transform
    if "bspline" in kinds:
        deformable = elastix_backend.run_elastix(
            fixed, moving, ["bspline"], accuracy=nonlinear_accuracy, initial_transform=transform,
            metric="AdvancedMattesMutualInformation" if metric == "MI"
            else "AdvancedNormalizedCorrelation", **common)
        transform = deformable.transform
    if transform is None:
        raise InputError("The elastix coarse step has nothing to do: give a linear type or "
                         "nonlinear_type_coarse='BSpline'.")
    return transform
