"""What a run will do, decided once from its options and its images: :func:`resolve`.

The options (:class:`~ngffreg.registration.options.RegistrationOptions`) say what the user
asked for; :class:`RunPlan` says what that means on these images and this machine: the
block method, the fine level, the block passes (level, block size), the memory plan, the
number of block workers and the coarse level. :func:`run_params` is what a rerun compares to
decide whether it may resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import auto_block_size, block_shape
from ..errors import InputError
from ..image import Grid
from .blockwise import check_picklable
from .coarse import COARSE_MAX_VOXELS, pick_level
from .execution import plan_resources
from .methods import block_method, default_block_method
from .options import RegistrationOptions


@dataclass(frozen=True)
class RunPlan:
    """The resolved run: see the module docstring."""

    method: Any
    fine_level: int
    passes: tuple[tuple[int, Any], ...]
    chunk_size: Any
    resources: Any
    workers: int
    coarse_level: int | None
    #: the coarse step's memory budget: ``coarse_memory_budget``, else the budget's share
    coarse_budget: Any = None


def resolve(opts: RegistrationOptions, fixed_levels: list[xr.DataArray], *,
            client: Any = None) -> RunPlan:
    """The plan of a run of ``opts`` on ``fixed_levels`` (blocks on ``client`` if given)."""
    method = opts.method
    if method is None and opts.nonlinear_type_fine is not None:
        method = default_block_method(opts.nonlinear_type_fine, opts.fine_accuracy)
    elif method is not None:
        method = block_method(method)
    distributed = client is not None or bool(opts.scheduler_address)
    if method is not None and (distributed or (opts.workers or 0) > 1):
        check_picklable(method)
    fine = (pick_level(fixed_levels, target_spacing=opts.fine_spacing)
            if opts.fine_spacing is not None else
            pick_level(fixed_levels, level=opts.fine_level or 0))
    chunk_size, resources = opts.chunk_size, None
    if isinstance(chunk_size, str) and chunk_size == "auto":
        if opts.memory_budget is not None:
            resources = plan_resources(opts.memory_budget, workers=opts.workers,
                                       overlap_fraction=opts.overlap_fraction)
            chunk_size = resources.chunk_size
        else:
            chunk_size = auto_block_size(opts.block_memory, opts.overlap_fraction)
    passes = pass_levels(fixed_levels, fine, chunk_size, opts.block_levels)
    largest = max((block_shape(size, Grid.of(fixed_levels[level])) for level, size in passes),
                  key=lambda shape: int(np.prod(shape)))  # a bad chunk size fails here
    if opts.memory_budget is not None and resources is None:
        resources = plan_resources(opts.memory_budget, workers=opts.workers,
                                   chunk_size=largest, overlap_fraction=opts.overlap_fraction)
    workers = (resources.workers if resources is not None else opts.workers
               if opts.workers is not None else default_workers(largest, opts.overlap_fraction))
    if (opts.workers is None and workers > 1 and method is not None and not distributed
            and not _picklable(method)):
        workers = 1  # a lambda or local function runs here rather than failing
    coarse_level, coarse_budget = opts.coarse_level, opts.coarse_memory_budget
    if resources is not None and coarse_budget is None:
        coarse_budget = resources.coarse_memory  # the run budget's share
        if coarse_level is None:
            coarse_level = max(
                pick_level(fixed_levels, downsample_factor=opts.downsample_factor,
                           target_spacing=opts.coarse_spacing, max_voxels=COARSE_MAX_VOXELS),
                pick_level(fixed_levels, memory_budget=coarse_budget))
    return RunPlan(method, fine, tuple(passes), chunk_size, resources, workers, coarse_level,
                   coarse_budget)


def run_params(opts: RegistrationOptions, plan: RunPlan, fixed: Any, moving: Any,
               fixed_levels: list[xr.DataArray],
               moving_levels: list[xr.DataArray]) -> dict[str, Any]:
    """The parameters a rerun must match to resume (the run store hashes them)."""
    return {
        "fixed": str(fixed) if isinstance(fixed, (str, Path)) else "in-memory",
        "moving": str(moving) if isinstance(moving, (str, Path)) else "in-memory",
        "fixed_shape": list(fixed_levels[0].shape), "moving_shape": list(moving_levels[0].shape),
        "downsample_factor": opts.downsample_factor, "coarse_level": plan.coarse_level,
        "coarse_spacing": opts.coarse_spacing, "coarse_memory_budget": plan.coarse_budget,
        "fine_level": plan.fine_level, "chunk_size": plan.chunk_size,
        "overlap_fraction": opts.overlap_fraction,
        "block_levels": [list(p) for p in plan.passes],
        "linear_type": opts.linear_type, "nonlinear_type_coarse": opts.nonlinear_type_coarse,
        "nonlinear_type_fine": opts.nonlinear_type_fine, "linear_accuracy": opts.linear_accuracy,
        "coarse_accuracy": opts.coarse_accuracy, "fine_accuracy": opts.fine_accuracy,
        "method": repr(plan.method), "min_foreground": opts.min_foreground,
        "backend": opts.backend,
    }


def pass_levels(fixed_levels: list[xr.DataArray], fine: int, chunk_size: Any,
                block_levels: Any) -> list[tuple[int, Any]]:
    """The block passes, coarse to fine: ``[(level, chunk_size), …]``; one pass on the fine
    level unless ``block_levels`` lists more (``[(2, 64), (1, 64), (0, 48)]``)."""
    if not block_levels:
        return [(fine, chunk_size)]
    out = []
    for item in block_levels:
        try:
            level, size = item
        except (TypeError, ValueError):
            raise InputError(f"block_levels takes (level, chunk_size) pairs; got {item!r}."
                             ) from None
        if not 0 <= int(level) < len(fixed_levels):
            raise InputError(f"block_levels names level {level}; the fixed image has "
                             f"{len(fixed_levels)} levels.")
        out.append((int(level), size))
    if [lv for lv, _ in out] != sorted((lv for lv, _ in out), reverse=True):
        raise InputError("block_levels must go from coarse to fine (decreasing levels).")
    return out


def default_workers(block: Any, overlap_fraction: float = 0.25) -> int:
    """Block workers when none are asked for: one per CPU this process may use, as many
    as 80 % of the available memory holds (besides the main process)."""
    import psutil

    from ..blocks import block_bytes
    from .execution import MAIN_BASE_BYTES, usable_cpus

    room = 0.8 * psutil.virtual_memory().available - MAIN_BASE_BYTES
    fit = int(room // block_bytes(block, overlap_fraction))
    return max(1, min(usable_cpus(), fit))


def _picklable(method: Any) -> bool:
    try:
        check_picklable(method)
    except InputError:
        return False
    return True


__all__ = ["RunPlan", "default_workers", "pass_levels", "resolve", "run_params"]
