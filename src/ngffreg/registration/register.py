"""The registration pipeline, end to end: coarse → blocks → blend → warp → output store.

:func:`register` is the functional core the faces (``ChunkedRegistration``, the CLI, the
``.reg`` accessor) call. Its output store (``OUT.ome.zarr``):

- the registered image: moving resampled onto the fixed grid, an OME-Zarr 0.6 pyramid;
- ``coordinateTransformations``: the fixed → moving ``registration`` transform,
  ``sequence[fine field, coarse field, affine]`` (NGFF 0.6, readable without ngffreg);
- ``transforms/``: the same for ANTs users (``global_linear_transform.mat``,
  ``global_nonlinear_warp.nii.gz``, ``fine_warp.nii.gz``; ``ants_transformlist.json``
  lists them in the order ``ants.apply_transforms`` takes);
- ``blocks/``: each block's residual field and record (what a rerun resumes from);
- ``qc/``: ``blocks.csv`` (status, correlation before/after, Jacobian range, time per
  block), ``summary.json``.

While running, everything goes to ``OUT.ome.zarr.partial/``; finished blocks found there by
a rerun with the same parameters are not registered again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import BlockPlan, auto_block_size, block_shape, plan_blocks
from ..errors import InputError, OutputError
from ..image import Grid, spacing, to_units, units
from ..qc import field_report
from ..transforms.model import DisplacementField, Sequence, Transform, sample_field
from ..warp import choose_moving_level, interpolation_order
from . import ants_backend
from .blockwise import block_table, check_picklable, run_blocks
from .coarse import CoarseResult, coarse_register, elastix_kinds, image_levels, pick_level
from .execution import block_client, plan_resources
from .methods import GREEDY_TYPES, block_method, default_block_method
from .reduce import blend
from .staging import map_fields, store_array

#: Fine fields with more voxels than this are not exported as NIfTI for ANTs (ITK would
#: hold them whole: 16 M voxels are about 0.4 GiB as float64).
ANTS_EXPORT_MAX_VOXELS = 2**24


@dataclass
class RegistrationResult:
    """What :func:`register` produced."""

    transform: Transform
    coarse: CoarseResult
    plan: BlockPlan | None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    output: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fine: DisplacementField | None = None
    fine_report: dict[str, Any] = field(default_factory=dict)
    n_fine: int = 1

    @property
    def table(self) -> list[dict[str, Any]]:
        return block_table(self.blocks)


def _params_key(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def _prepare_work(output: Path, params: dict[str, Any], overwrite: bool) -> tuple[Path, Any]:
    """The ``.partial`` folder of a run, locked for it (see :func:`_lock`); what is in it
    is kept when its parameters match (resume), else removed: results of other parameters
    are never mixed in."""
    if output.exists() and not overwrite:
        raise OutputError(f"{output} exists; pass overwrite=True (--overwrite) to replace it.")
    work = output.parent / (output.name + ".partial")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create {work}: {exc}") from None
    lock = _lock(work, output)
    key = _params_key(params)
    stamp = work / "params.json"
    try:
        old = json.loads(stamp.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("key") != key:
        for entry in work.iterdir():
            if entry.name != ".lock":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    tmp = work / "params.json.tmp"
    tmp.write_text(json.dumps({"key": key, "params": params}, indent=1, default=str))
    os.replace(tmp, stamp)
    return work, lock


def _passes(fixed_levels: list[xr.DataArray], fine: int, chunk_size: Any,
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


def _fine_level(fixed_levels: list[xr.DataArray], fine_level: int | None,
                fine_spacing: Any) -> int:
    if fine_spacing is not None:
        return pick_level(fixed_levels, target_spacing=fine_spacing)
    return pick_level(fixed_levels, level=fine_level or 0)


def register(
    fixed: Any,
    moving: Any,
    output: str | Path | None = None,
    *,
    downsample_factor: float | None = 4,
    coarse_level: int | None = None,
    coarse_spacing: Any = None,
    coarse_memory_budget: Any = None,
    fine_level: int | None = 0,
    fine_spacing: Any = None,
    chunk_size: Any = 64,
    overlap_fraction: float = 0.25,
    block_levels: Any = None,
    block_memory: Any = "1 GiB",
    linear_type: str | None = "Affine",
    nonlinear_type_coarse: str | None = "Greedy",
    nonlinear_type_fine: str | None = "Greedy",
    linear_accuracy: str = "medium",
    coarse_accuracy: str = "medium",
    fine_accuracy: str = "medium",
    method: Any = None,
    backend: str = "ants",
    interpolator: str = "linear",
    blend_sigma: float | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    min_foreground: float = 0.02,
    fixed_voxel_size: Any = None,
    moving_voxel_size: Any = None,
    unit: str | None = None,
    workers: int | None = None,
    client: Any = None,
    scheduler_address: str | None = None,
    memory_budget: Any = None,
    block_timeout: float | None = None,
    overwrite: bool = False,
    export_ants: bool | None = None,
    progress: Any = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: coarse at a pyramid level, fine on blocks, blended.

    Parameters
    ----------
    fixed, moving
        Paths (any format :func:`ngffreg.open_image` reads), images, pyramids
        (``xarray.DataTree``) or lists of levels, dims z, y, x.
    output : path, optional
        The output store ``OUT.ome.zarr`` (see the module docstring); without it nothing
        is written and the blocks run in a temporary folder.
    downsample_factor, coarse_level, coarse_spacing, coarse_memory_budget
        The coarse level: ``coarse_level`` if given, else from a memory budget, a target
        spacing, or level 0's spacing × ``downsample_factor`` (default 4).
    fine_level, fine_spacing
        The fixed level the blocks register at (default 0, full resolution).
    chunk_size, overlap_fraction
        Block core size (voxels: int or z, y, x; or lengths such as ``"2 mm"``) and the
        overlap added per side as a fraction of it.
    block_memory
        With ``chunk_size="auto"``: the memory one block registration may use (per worker
        process); the block size is the largest that fits
        (:func:`ngffreg.blocks.auto_block_size`).
    block_levels
        Multi-resolution blocks: ``[(level, chunk_size), …]`` from coarse to fine, e.g.
        ``[(1, 64), (0, 32)]``; each pass registers its blocks through everything found so
        far and adds its blended field in front. Default: one pass on ``fine_level``.
    linear_type, nonlinear_type_coarse, nonlinear_type_fine
        ``Translation``/``Rigid``/``Similarity``/``Affine``; ``Greedy`` (the default: the
        compiled engine, :mod:`~ngffreg.registration.greedy`), ``GreedySVF`` (its
        stationary-velocity form), or the ANTs types ``SyNOnly``/``SyN``/``Elastic``; or
        ``None`` to skip that step.
    linear_accuracy, coarse_accuracy, fine_accuracy
        ``low``, ``medium`` or ``high`` (iteration schedules in
        :mod:`ngffreg.registration.ants_backend`).
    method
        The block method: a name (``"greedy"``, ``"ants-syn"``, ``"ants-affine"``,
        ``"elastix-bspline"``) or a callable ``(fixed, moving, initial, info) ->
        BlockResult``; default: the one ``nonlinear_type_fine`` names, at
        ``fine_accuracy``.
    backend
        The coarse step's registration: ``"ants"`` (default) or ``"elastix"`` (ITK-elastix;
        ``nonlinear_type_coarse`` ``"BSpline"`` or ``None``). Blocks choose via ``method``.
    interpolator, blend_sigma
        Interpolation of the registered image; half-width (voxels) of the blend across block
        faces (default: half the overlap).
    fixed_mask, moving_mask
        Masks for the coarse step (any grid; resampled).
    min_foreground
        Blocks with a smaller fraction of foreground voxels are skipped.
    workers, client, scheduler_address
        Where the blocks run (:mod:`~ngffreg.registration.execution`): a
        ``dask.distributed`` client or the address of a dask scheduler; else a LocalCluster
        of ``workers`` single-threaded processes (default: as many as the CPUs and the
        memory allow; 1 runs them in this process).
    memory_budget
        Memory for the whole process tree (e.g. ``"8 GiB"``): sets the worker count, the
        block size (with ``chunk_size="auto"``) and the coarse level
        (:func:`~ngffreg.registration.execution.plan_resources`); too small for one block
        is refused with the smallest that would do.
    block_timeout
        Seconds one block may take; a block still running then is flagged failed (filled
        from its neighbours) and its worker restarted. Needs worker processes: with
        ``workers=1`` a one-worker LocalCluster is started.
    export_ants
        Write ``transforms/`` for ANTs (default: when the fine field is small enough).
    progress
        A callable given each finished block's record.
    """
    t_start = time.perf_counter()
    interpolation_order(interpolator)
    for name, value in (("linear_accuracy", linear_accuracy),
                        ("coarse_accuracy", coarse_accuracy), ("fine_accuracy", fine_accuracy)):
        ants_backend._check(name, value, ants_backend.ACCURACIES)
    if linear_type is not None:
        ants_backend._check("linear_type", linear_type, ants_backend.LINEAR_TYPES)
    deformable = (*GREEDY_TYPES, *ants_backend.NONLINEAR_TYPES)
    if backend == "elastix":
        elastix_kinds(linear_type, None if nonlinear_type_coarse in GREEDY_TYPES
                      else nonlinear_type_coarse)
    elif backend != "ants":
        raise InputError(f"Unknown backend {backend!r}; use ants or elastix.")
    for name, value in (("nonlinear_type_coarse",
                         nonlinear_type_coarse if backend == "ants" else None),
                        ("nonlinear_type_fine", nonlinear_type_fine)):
        if value is not None:
            ants_backend._check(name, value, deformable)

    fixed_levels = image_levels(fixed, voxel_size=fixed_voxel_size, unit=unit, name="fixed")
    moving_levels = image_levels(moving, voxel_size=moving_voxel_size, unit=unit,
                                 name="moving")
    fixed_unit = units(fixed_levels[0])
    moving_levels = [lv if units(lv) == fixed_unit else to_units(lv, fixed_unit)
                     for lv in moving_levels]
    if method is None and nonlinear_type_fine is not None:
        method = default_block_method(nonlinear_type_fine, fine_accuracy)
    elif method is not None:
        method = block_method(method)
    if method is not None and (client is not None or scheduler_address or
                               (workers is not None and workers > 1)):
        check_picklable(method)
    fi = _fine_level(fixed_levels, fine_level, fine_spacing)
    if not 0 <= overlap_fraction < 1:
        raise InputError(f"overlap_fraction must be in [0, 1); got {overlap_fraction}.")
    if block_timeout is not None and not float(block_timeout) > 0:
        raise InputError(f"block_timeout must be a positive number of seconds; got "
                         f"{block_timeout!r}.")
    auto_chunk = isinstance(chunk_size, str) and chunk_size == "auto"
    resources = None
    if memory_budget is not None and auto_chunk:
        resources = plan_resources(memory_budget, workers=workers,
                                   overlap_fraction=overlap_fraction)
        chunk_size = resources.chunk_size
    elif auto_chunk:
        chunk_size = auto_block_size(block_memory, overlap_fraction)
    passes = _passes(fixed_levels, fi, chunk_size, block_levels)
    largest = max((block_shape(size, Grid.of(fixed_levels[level])) for level, size in passes),
                  key=lambda shape: int(np.prod(shape)))  # a bad chunk size fails here
    if memory_budget is not None and resources is None:
        resources = plan_resources(memory_budget, workers=workers, chunk_size=largest,
                                   overlap_fraction=overlap_fraction)
    n_workers = (resources.workers if resources is not None else
                 workers if workers is not None else default_workers(largest, overlap_fraction))
    if (workers is None and n_workers > 1 and method is not None and client is None
            and not scheduler_address and not _picklable(method)):
        n_workers = 1  # a lambda or local function runs here rather than failing
    if resources is not None and coarse_memory_budget is None and coarse_level is None:
        coarse_level = max(
            pick_level(fixed_levels, downsample_factor=downsample_factor,
                       target_spacing=coarse_spacing),
            pick_level(fixed_levels, memory_budget=resources.coarse_memory))
    params = {
        "fixed": str(fixed) if isinstance(fixed, (str, Path)) else "in-memory",
        "moving": str(moving) if isinstance(moving, (str, Path)) else "in-memory",
        "fixed_shape": list(fixed_levels[0].shape), "moving_shape": list(moving_levels[0].shape),
        "downsample_factor": downsample_factor, "coarse_level": coarse_level,
        "coarse_spacing": coarse_spacing, "coarse_memory_budget": coarse_memory_budget,
        "fine_level": fi, "chunk_size": chunk_size, "overlap_fraction": overlap_fraction,
        "block_levels": [list(p) for p in passes],
        "linear_type": linear_type, "nonlinear_type_coarse": nonlinear_type_coarse,
        "nonlinear_type_fine": nonlinear_type_fine, "linear_accuracy": linear_accuracy,
        "coarse_accuracy": coarse_accuracy, "fine_accuracy": fine_accuracy,
        "method": repr(method), "min_foreground": min_foreground, "backend": backend,
    }
    log = _logger(progress)
    if resources is not None:
        log(resources.describe())
    timings: dict[str, float] = {}
    tmp_holder = None
    if output is not None:
        output = Path(output).expanduser().resolve()
        work, lock = _prepare_work(output, params, overwrite)
    else:
        lock = None
        import tempfile

        tmp_holder = tempfile.TemporaryDirectory(prefix="ngffreg-register-")
        work = Path(tmp_holder.name)

    stack = contextlib.ExitStack()
    try:
        if scheduler_address and client is None and method is not None:
            # reach the cluster before any work: a wrong address fails in seconds
            client = stack.enter_context(block_client(1, address=scheduler_address, log=log))
        # 1. coarse -------------------------------------------------------------------
        t0 = time.perf_counter()
        coarse = _load_coarse(work)
        if coarse is None:
            coarse = coarse_register(
                fixed_levels, moving_levels, linear_type=linear_type,
                nonlinear_type=nonlinear_type_coarse, linear_accuracy=linear_accuracy,
                nonlinear_accuracy=coarse_accuracy, downsample_factor=downsample_factor,
                target_spacing=coarse_spacing, memory_budget=coarse_memory_budget,
                level=coarse_level, fixed_mask=fixed_mask, moving_mask=moving_mask,
                backend=backend)
            coarse = _save_coarse(coarse, work)
        timings["coarse_s"] = time.perf_counter() - t0

        # 2-3. blocks and blend, pass by pass (coarse level to fine) --------------------------
        plan = None
        records: list[dict[str, Any]] = []
        fine = None
        fine_report: dict[str, Any] = {}
        transform: Transform = coarse.transform
        steps = steps_of(coarse.transform)
        fine_fields: list[DisplacementField] = []
        if method is not None:
            fg_level = fixed_levels[min(coarse.fixed_level, len(fixed_levels) - 1)]
            cluster = stack.enter_context(block_client(
                n_workers, client=client, address=scheduler_address,
                memory_limit=resources.block_memory * 5 // 4 if resources else None,
                need_cluster=block_timeout is not None, log=log))
            for k, (level, size) in enumerate(passes):
                t0 = time.perf_counter()
                pass_work = work if len(passes) == 1 else work / f"pass{k}"
                current = Sequence(transforms=(*fine_fields[::-1], *steps))
                plan, pass_records = run_pass(
                    fixed_levels, moving_levels, level, size, overlap_fraction, fg_level, current,
                    method, pass_work, min_foreground=min_foreground, client=cluster,
                    block_timeout=block_timeout, progress=progress)
                for r in pass_records:
                    r["pass"] = k
                timings[f"blocks_s{'' if len(passes) == 1 else k}"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                field_k, fine_report = blend_pass(plan, pass_records, pass_work, blend_sigma,
                                                  "fine" if len(passes) == 1 else f"fine{k}")
                timings[f"blend_s{'' if len(passes) == 1 else k}"] = time.perf_counter() - t0
                if len(passes) > 1:
                    fine_report["pass"] = k
                fine_fields.append(field_k)
                records += pass_records
            fine = fine_fields[-1]
            transform = Sequence(transforms=(*fine_fields[::-1], *steps))
            stack.close()  # the workers give their memory back before the warp

        result = RegistrationResult(transform, coarse, plan, records, None, timings, fine,
                                    fine_report, max(1, len(fine_fields)))
        result._coarse_images = (fixed_levels[coarse.fixed_level],
                                 moving_levels[coarse.moving_level])
        result._levels = (fixed_levels, moving_levels)  # for the QC report
        result._inputs = {"fixed": _input_record(fixed, fixed_voxel_size, unit),
                          "moving": _input_record(moving, moving_voxel_size, unit)}
        if output is None:
            result.timings["total_s"] = time.perf_counter() - t_start
            result._tmp = tmp_holder  # keeps the block fields alive with the result
            return result

        # 4. warp and write into ``work``, then publish in one rename ------------------------
        t0 = time.perf_counter()
        from ..warp import write_warped

        staged = work / output.name
        if staged.exists():  # what a killed run left
            shutil.rmtree(staged)
        write_warped(moving_levels, transform, staged, like=fixed_levels[0],
                     interpolator=interpolator, progress=bool(progress))
        timings["warp_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        _write_extras(staged, work, result, export_ants)
        _publish(staged, output)
        result.output = output
        # from here on the transform reads its fields from the published store, not ``work``
        from ..transforms.ngff import read_registration

        stored = read_registration(output)
        result.transform = stored
        stored_steps = steps_of(getattr(stored, "forward", stored))
        n_fine = len(fine_fields)
        if fine is not None:  # the finest pass's field comes first in the sequence
            result.fine = stored_steps[0] if len(stored_steps) > 1 else None
        # the coarse result must not read from ``work`` either: its transform is the tail
        # of the stored sequence, its inverse (coarse level, small) is held in memory
        result.coarse = dataclasses.replace(
            coarse, transform=(Sequence(transforms=stored_steps[n_fine:])
                               if len(stored_steps) - n_fine > 1 else stored_steps[n_fine]),
            inverse=map_fields(coarse.inverse, DisplacementField.compute))
        shutil.rmtree(work, ignore_errors=True)
        return result
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and output is not None:
            raise OutputError(
                f"The disk is full (or over quota) while writing {output} ({exc.strerror}). "
                f"Free some space and run the same command again: the blocks finished so "
                f"far are kept in {work} and will not be registered again; nothing was "
                f"written to {output}.") from exc
        raise
    finally:
        stack.close()
        if lock is not None:
            lock.close()


def default_workers(block: Any, overlap_fraction: float = 0.25) -> int:
    """Block workers when none are asked for: one per CPU, as many as 80 % of the
    available memory holds (besides the main process)."""
    import psutil

    from ..blocks import block_bytes
    from .execution import MAIN_BASE_BYTES

    room = 0.8 * psutil.virtual_memory().available - MAIN_BASE_BYTES
    fit = int(room // block_bytes(block, overlap_fraction))
    return max(1, min(os.cpu_count() or 1, fit))


def _picklable(method: Any) -> bool:
    try:
        check_picklable(method)
    except InputError:
        return False
    return True


def _logger(progress: Any) -> Any:
    if not progress:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def _lock(work: Path, output: Path) -> Any:
    """Hold ``work/.lock`` for this run (released when the process ends, however it
    ends); a second run on the same output is refused."""
    import fcntl

    fh = open(work / ".lock", "a+")  # held (locked) for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise OutputError(
            f"{output} is being written by another run ({holder or 'unknown process'}). "
            "Wait for it to finish, or stop it; its finished blocks will be reused by the "
            "next run with the same parameters.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    return fh


def _load_coarse(work: Path) -> CoarseResult | None:
    """The coarse result an earlier (killed) run of the same parameters saved."""
    import pickle

    path = work / "coarse" / "result.pkl"
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        return None


def _save_coarse(coarse: CoarseResult, work: Path) -> CoarseResult:
    """The coarse result with its fields written to ``work/coarse`` (read lazily, small
    to send to workers), saved for a rerun."""
    import pickle

    from .staging import persist_transform

    folder = work / "coarse"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    coarse = dataclasses.replace(
        coarse, transform=persist_transform(coarse.transform, folder, "forward"),
        inverse=(persist_transform(coarse.inverse, folder, "inverse")
                 if coarse.inverse is not None else None))
    tmp = folder / "result.pkl.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(coarse, fh)
    os.replace(tmp, folder / "result.pkl")
    return coarse


def _publish(staged: Path, output: Path) -> None:
    """Move the finished store into place in one rename (an old one, with overwrite,
    is renamed aside first and removed after)."""
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    try:
        os.replace(staged, output)
    except OSError as exc:
        if old is not None:
            os.replace(old, output)
        raise OutputError(f"Could not move the finished result into {output}: {exc}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def steps_of(transform: Transform) -> tuple[Transform, ...]:
    """The steps of a :class:`Sequence`, or the transform alone."""
    return transform.transforms if isinstance(transform, Sequence) else (transform,)


def run_pass(fixed_levels: list[xr.DataArray], moving_levels: list[xr.DataArray],
             level: int, chunk_size: Any, overlap_fraction: float, foreground: xr.DataArray,
             current: Transform, method: Any, work: Path, *, min_foreground: float = 0.02,
             client: Any = None, block_timeout: float | None = None,
             progress: Any = None) -> tuple[BlockPlan, list[dict[str, Any]]]:
    """One pass of blocks on fixed level ``level`` (the moving level whose spacing fits),
    registered through ``current``; the plan goes to ``work/plan.json``, the blocks to
    ``work/blocks``."""
    work.mkdir(parents=True, exist_ok=True)
    fixed = fixed_levels[level]
    moving = moving_levels[choose_moving_level(moving_levels, spacing(fixed),
                                               units(fixed))[0]]
    plan = plan_blocks(Grid.of(fixed), chunk_size, overlap_fraction, level=level,
                       foreground=foreground, min_foreground=min_foreground)
    (work / "plan.json").write_text(json.dumps(plan.to_dict()))
    records = run_blocks(plan, fixed, moving, current, method, work, client=client,
                         block_timeout=block_timeout, progress=progress)
    return plan, records


def blend_pass(plan: BlockPlan, records: list[dict[str, Any]], work: Path,
               blend_sigma: float | None = None,
               name: str = "fine") -> tuple[DisplacementField, dict[str, Any]]:
    """A pass's blocks blended into one field, stored in ``work`` and read back lazily,
    with its QC report (Jacobian, folds, seams)."""
    field = _store_field(blend(plan, records, work, blend_sigma=blend_sigma), work, name=name)
    return field, field_report(field, plan.edges)


def _store_field(field: DisplacementField, work: Path, name: str = "fine") -> DisplacementField:
    """Compute the blended field once into ``work/fine`` and return it read lazily."""
    grid = field.grid
    return DisplacementField.from_array(
        store_array(field.field.data, work / "fine"), spacing=grid.spacing,
        origin=grid.origin, direction=grid.direction, unit=grid.unit, name=name)


def _write_extras(output: Path, work: Path, result: RegistrationResult,
                  export_ants: bool | None) -> None:
    """Blocks, QC table and summary, and the ANTs export, into the published store."""
    if (work / "blocks").is_dir():
        shutil.move(str(work / "blocks"), str(output / "blocks"))
    for pass_dir in sorted(work.glob("pass*")):  # multi-resolution blocks
        (output / "blocks").mkdir(exist_ok=True)
        if (pass_dir / "blocks").is_dir():
            shutil.move(str(pass_dir / "blocks"), str(output / "blocks" / pass_dir.name))
        if (pass_dir / "plan.json").is_file():
            shutil.move(str(pass_dir / "plan.json"),
                        str(output / "blocks" / pass_dir.name / "plan.json"))
    if (work / "plan.json").is_file():
        shutil.move(str(work / "plan.json"), str(output / "blocks" / "plan.json")
                    if (output / "blocks").is_dir() else str(output / "plan.json"))
    qc = output / "qc"
    qc.mkdir(exist_ok=True)
    rows = result.table
    if rows:
        with open(qc / "blocks.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v)
                                 for k, v in row.items()})
    statuses: dict[str, int] = {}
    for r in result.blocks:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = {"coarse": result.coarse.metrics, "coarse_level": result.coarse.fixed_level,
               "blocks": statuses, "timings": result.timings, "fine_field": result.fine_report,
               "flagged": [r["id"] for r in result.blocks
                           if r["status"] in ("failed", "rejected")],
               "inputs": getattr(result, "_inputs", {}), "figures": []}
    (qc / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _figures(qc, result)  # the QC report; it lists its figures in summary.json
    fine = result.fine
    if export_ants is None:
        export_ants = fine is None or int(np.prod(fine.grid.shape)) <= ANTS_EXPORT_MAX_VOXELS
    if export_ants:
        export_ants_transforms(result, output / "transforms")


def _figures(qc: Path, result: RegistrationResult) -> list[str]:
    """The QC report (:func:`ngffreg.qc_report.write_report`) in ``qc/``: ``overlay.png``,
    ``checkerboard.png``, ``blocks.png``, ``block_layers.png``, ``jacobian.png`` and
    ``index.html``, from the levels this run registered. A report that fails is a warning
    (``ngffreg qc OUT`` retries it), never a failed registration."""
    import warnings

    from ..qc_report import write_report

    fixed, moving = getattr(result, "_levels", (None, None))
    try:
        write_report(qc.parent, fixed=fixed, moving=moving)
    except Exception as exc:
        warnings.warn(f"The QC report could not be written ({type(exc).__name__}: {exc}); "
                      f"run `ngffreg qc {qc.parent.name}` to try again.", stacklevel=2)
        return []
    return json.loads((qc / "summary.json").read_text()).get("figures", [])


def _input_record(image: Any, voxel_size: Any, unit: str | None) -> dict[str, Any]:
    """Where an input came from, for ``ngffreg qc`` to open it again: its path (``None``
    when it was in memory) and the voxel_size/unit options it was read with."""
    path = (str(Path(image).expanduser().resolve()) if isinstance(image, (str, os.PathLike))
            else None)
    return {"path": path, "voxel_size": None if voxel_size is None else
            np.asarray(voxel_size, dtype=np.float64).tolist(), "unit": unit}


def export_ants_transforms(result: RegistrationResult, folder: Path) -> list[str]:
    """The seed's file layout for ANTs users: ``global_linear_transform.mat``,
    ``global_nonlinear_warp.nii.gz`` (when the coarse step was deformable) and
    ``fine_warp.nii.gz`` (the blended fine field); returns the ``transformlist`` for
    ``ants.apply_transforms(fixed, moving, transformlist)`` (also written to
    ``ants_transformlist.json``)."""
    from ..transforms.files import write_displacement_field, write_itk_transform

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    steps = list(steps_of(result.transform))
    n_fine = result.n_fine if result.fine is not None else 0
    out = []
    if n_fine:
        fine = steps[0] if n_fine == 1 else sample_field(
            Sequence(transforms=tuple(steps[:n_fine])), like=result.fine)
        write_displacement_field(fine, folder / "fine_warp.nii.gz")
        out.append("fine_warp.nii.gz")
    for step in steps[n_fine:]:
        if step.is_linear:
            path = folder / "global_linear_transform.mat"
            write_itk_transform(step, path)
        else:
            path = folder / "global_nonlinear_warp.nii.gz"
            write_displacement_field(step, path)
        out.append(path.name)
    (folder / "ants_transformlist.json").write_text(json.dumps(out))
    return [str(folder / n) for n in out]


__all__ = ["RegistrationResult", "export_ants_transforms", "register"]
