"""The coarse step: a whole-volume registration at a low pyramid level.

The level is chosen by ``downsample_factor`` (the level whose spacing is closest to, and
not coarser than, level 0's times the factor), by ``target_spacing``, or by
``memory_budget`` (the finest level whose registration fits: about
:data:`BYTES_PER_VOXEL` per fixed voxel). Linear stages (``linear_type``) run first, then an
optional deformable stage (``nonlinear_type``), all in one ANTs call; the result is a
fixed→moving transform ``[coarse field, affine]`` in physical space, with its inverse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from dask.utils import parse_bytes

from ..errors import InputError
from ..image import Grid, spacing, to_units, units
from ..pyramid import levels as pyramid_levels
from ..pyramid import to_pyramid
from ..qc import ncc, otsu_threshold
from ..transforms.model import Identity, Transform
from ..warp import warp
from . import ants_backend

#: Rough peak memory of an ANTs SyN registration per fixed voxel (measured: ~1.65 GB for
#: the 7.2 M-voxel mni/ch2 pair), used to pick a level from a memory budget.
BYTES_PER_VOXEL = 240


def image_levels(image: Any, *, voxel_size: Any = None, unit: str | None = None,
                 name: str = "image") -> list[xr.DataArray]:
    """The resolution levels (finest first) of a path, an image, a pyramid or a list of
    levels; a single image gets a lazy pyramid (down to 32 voxels per axis)."""
    from ..io.read import open_levels

    if isinstance(image, (list, tuple)):
        lv = list(image)
    elif isinstance(image, xr.DataTree):
        lv = pyramid_levels(image)
    elif isinstance(image, xr.DataArray):
        lv = [image]
    else:
        lv = open_levels(image, voxel_size=voxel_size, unit=unit, name=name)
    for level in lv:
        if tuple(level.dims) != ("z", "y", "x"):
            raise InputError(
                f"Registration takes 3-D images with dims (z, y, x); got dims {level.dims} "
                f"for {name}. Select one channel and time point first (e.g. image.isel(c=0)).")
    if len(lv) == 1:
        lv = pyramid_levels(to_pyramid(lv[0]))
    return lv


def pick_level(levels: Seq[xr.DataArray], *, downsample_factor: float | None = None,
               target_spacing: Any = None, memory_budget: Any = None,
               level: int | None = None) -> int:
    """Index of the level to register at (see the module docstring); ``level`` wins."""
    if level is not None:
        if not 0 <= level < len(levels):
            raise InputError(f"level {level} does not exist; the image has {len(levels)} "
                             "levels.")
        return int(level)
    if memory_budget is not None:
        budget = parse_bytes(memory_budget) if isinstance(memory_budget, str) else memory_budget
        for i, lv in enumerate(levels):
            if lv.size * BYTES_PER_VOXEL <= float(budget):
                return i
        return len(levels) - 1
    if target_spacing is None:
        factor = 4.0 if downsample_factor is None else float(downsample_factor)
        if factor < 1:
            raise InputError(f"downsample_factor must be ≥ 1; got {downsample_factor}.")
        target_spacing = np.asarray(spacing(levels[0])) * factor
    target = np.broadcast_to(np.asarray(target_spacing, dtype=np.float64), (3,))
    best = 0
    for i, lv in enumerate(levels):
        # a level may be a little coarser than asked on an axis (anisotropic pyramids)
        if np.all(np.asarray(spacing(lv)) <= target * 1.5):
            best = i
    return best


def matching_level(levels: Seq[xr.DataArray], like: xr.DataArray) -> int:
    """The level of ``levels`` whose spacing is closest (log scale) to ``like``'s."""
    want = np.log(np.asarray(spacing(like)))
    unit = units(like)
    costs = [float(np.abs(np.log(np.asarray(spacing(to_units(lv, unit) if units(lv) != unit
                                                    else lv))) - want).sum())
             for lv in levels]
    return int(np.argmin(costs))


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
    nonlinear_type: str | None = "SyN",
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
) -> CoarseResult:
    """Register the whole volumes at a coarse level (see the module docstring).

    Raises :class:`~ngffreg.errors.InputError` for unknown types or accuracies, and when the
    result leaves the fixed foreground outside the moving image (no overlap).
    """
    stages = []
    if linear_type:
        stages += ants_backend.linear_stages(linear_type, linear_accuracy)
    if nonlinear_type:
        stages.append(ants_backend.nonlinear_stage(nonlinear_type, nonlinear_accuracy,
                                                   metric=metric))
    fi = pick_level(fixed_levels, downsample_factor=downsample_factor,
                    target_spacing=target_spacing, memory_budget=memory_budget, level=level)
    fixed = fixed_levels[fi]
    mi = matching_level(moving_levels, fixed)
    moving = moving_levels[mi]
    if units(moving) != units(fixed):
        moving = to_units(moving, units(fixed))
    fixed = fixed.copy(data=np.asarray(fixed.data.compute() if hasattr(fixed.data, "compute")
                                       else fixed.data))
    moving = moving.copy(data=np.asarray(moving.data.compute()
                                         if hasattr(moving.data, "compute") else moving.data))
    t0 = time.perf_counter()
    if stages:
        result = ants_backend.run_ants(
            fixed, moving, stages, fixed_mask=_mask_on(fixed_mask, fixed),
            moving_mask=_mask_on(moving_mask, moving), random_seed=random_seed)
        transform, inverse = result.transform, result.inverse
    else:
        transform, inverse = Identity(), Identity()
    seconds = time.perf_counter() - t0
    before = ncc(fixed.values, warp(moving, Identity(), like=fixed).values)
    after = ncc(fixed.values, warp(moving, transform, like=fixed).values)
    overlap = overlap_fraction(fixed, moving, transform)
    metrics = {"fixed_shape": list(fixed.shape), "moving_shape": list(moving.shape),
               "fixed_spacing": list(spacing(fixed)), "moving_spacing": list(spacing(moving)),
               "ncc_before": before, "ncc_after": after, "seconds": seconds,
               "overlap": overlap, "stages": [s.transform for s in stages]}
    if overlap < 0.05:
        raise InputError(
            f"After the coarse step only {overlap:.1%} of the fixed image's foreground maps "
            "into the moving image: the images do not overlap. Check that both are in the same "
            "physical space (origin, orientation, units, voxel size), or give an initial "
            "transform.")
    return CoarseResult(transform, inverse, fi, mi, metrics)


def _mask_on(mask: xr.DataArray | None, like: xr.DataArray) -> xr.DataArray | None:
    """A mask resampled (nearest) onto ``like``'s grid, when given."""
    if mask is None:
        return None
    return warp(mask, Identity(), like=like, interpolator="nearestNeighbor").compute()
