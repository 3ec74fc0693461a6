"""Fine registration block by block: each task reads its own regions and writes its own
result.

For one block, :func:`register_block`:

1. reads the fixed block (its grown region on the plan level);
2. finds the moving region it needs by pushing samples of the block's whole boundary
   through the current (coarse) transform, and reads only that region;
3. resamples that region onto the fixed block's grid through the current transform;
4. runs the block method on the pair, which gives a residual transform;
5. samples the residual as a displacement field on the block grid and measures it:
   normalised cross-correlation over the block's core before and after, and the minimum
   Jacobian determinant;
6. writes the field and its record atomically into ``<work>/blocks/`` (a Zarr v3 array
   per block, the record in its attributes).

A block that fails (the method raises or answers ``"failed"``), folds (Jacobian ≤ 0) or
ends worse than it started is not used as is: the reduce step fills it from its
neighbours. A block without signal, or whose core the moving image does not reach, is
skipped, and a block the method declines (its fit did not pay on held-out voxels) is kept
as it was: both get a zero residual (the coarse transform).

Where the block's points leave the moving image (a round that did not image a strip, or
an image that ends), the pre-warped block holds zeros; the block method is told where
(``BlockInfo.moving_valid``; ``Greedy(data_only=True)`` then fits only where there is
data).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import Block, BlockPlan, core_slices, moving_region, subgrid
from ..image import Grid, load, units
from ..qc import block_table as block_table
from ..qc import jacobian_determinant, ncc
from ..transforms import Transform, sample_field
from ..warp import warp, warp_covered
from .execution import run_on_cluster
from .isolation import call_method
from .methods import BlockInfo, BlockMethod, BlockResult

#: Statuses whose field is used as computed.
USED = ("ok",)
#: Statuses whose block keeps the pre-warp transform (zero residual).
KEPT = ("skipped", "declined")
#: How the moving region is resampled onto the block grid before the block method sees it
#: (a cubic B-spline blurs less than linear interpolation).
PREWARP_INTERPOLATOR = "bSpline"
#: Chunk side of a stored block field (voxels).
FIELD_CHUNK = 64
#: A block whose correlation drops by more than this is rejected.
NCC_TOLERANCE = 0.01
#: Voxels the moving image is resampled beyond each side of a block's region that lies on
#: the fixed image's edge, for the judge only: a residual that leads a core voxel past
#: that edge then reads the moving image there (its data where it goes on beyond the
#: fixed image, zero where it ends), as the registered image will.
JUDGE_MARGIN = 8
#: A block is judged only on the core voxels that read moving data before and after its
#: fit, where at least this fraction of the core does (else on the whole core).
JUDGE_MIN_FRACTION = 0.1


def block_path(work: Path, block_id: int) -> Path:
    return Path(work) / "blocks" / f"b{block_id:06d}"


def read_record(work: Path, block_id: int) -> dict[str, Any] | None:
    """The record of a finished block, or ``None``."""
    import zarr

    path = block_path(work, block_id)
    if not (path / "zarr.json").is_file():
        return None
    return dict(zarr.open_array(str(path), mode="r").attrs.get("ngffreg_block", {})) or None


def read_field(work: Path, block_id: int) -> Any:
    """The stored residual field of a block: a Zarr array (3, z, y, x) on its region."""
    import zarr

    return zarr.open_array(str(block_path(work, block_id)), mode="r")


def _write_block(work: Path, block: Block, field: np.ndarray, record: dict[str, Any]) -> None:
    import zarr

    final = block_path(work, block.id)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    # chunks of the blend's size: a blend chunk reads only the parts of a block it overlaps
    chunks = (3, *(min(n, FIELD_CHUNK) for n in field.shape[1:]))
    arr = zarr.create_array(store=str(tmp), shape=field.shape, chunks=chunks,
                            dtype=np.float32, zarr_format=3)
    arr[...] = field.astype(np.float32)
    arr.attrs["ngffreg_block"] = json.loads(json.dumps(record))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _block_record(block: Block) -> dict[str, Any]:
    """The start of a block's record: where it is."""
    return {"id": block.id, "index": list(block.index), "core": [list(c) for c in block.core],
            "region": [list(r) for r in block.region], "foreground": block.foreground}


def register_block(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Register one block (see :func:`_register_block`). Every dask computation inside
    runs here, on the calling thread: a block task on a cluster worker must not send work
    back to the cluster (a restarted worker would fail the other workers' blocks)."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return _register_block(*args, **kwargs)


def _register_block(
    block: Block,
    plan: BlockPlan,
    fixed: xr.DataArray,
    moving: xr.DataArray,
    initial: Transform,
    method: BlockMethod,
    work: Path | None = None,
) -> dict[str, Any]:
    """Register one block (see the module docstring); returns its record (status,
    metrics, timings) and, when ``work`` is given, writes the field and record there."""
    t0 = time.perf_counter()
    bgrid = subgrid(plan.grid, block.slices)
    record = _block_record(block)
    zero = np.zeros((3, *block.shape), dtype=np.float32)
    if block.skip:
        return _finish(work, block, zero, record, t0, status="skipped",
                       message="no signal in the fixed block")
    field = zero
    where = _worker()
    record["worker"] = where[0]
    _mark_running(work, block.id, where)
    try:
        fixed_block = load(fixed.isel(z=block.slices[0], y=block.slices[1],
                                       x=block.slices[2]))
        mgrid = Grid.of(moving)
        wide, inner = _judge_grid(bgrid, block.region, plan.grid.shape)
        region = moving_region(wide, initial, mgrid)
        core = core_slices(block.core, block.region)
        valid = None
        if region is not None:
            record["moving_region"] = [[s.start, s.stop] for s in region]
            moving_part = load(moving.isel(z=region[0], y=region[1], x=region[2]))
            seen, covered = warp_covered(moving_part, initial, like=wide,
                                         interpolator=PREWARP_INTERPOLATOR)
            valid = covered[inner]
        record["moving_coverage"] = 0.0 if valid is None else float(valid.mean())
        if valid is None or not valid[core].any():  # nothing to fit: the pre-warp holds
            return _finish(work, block, zero, record, t0, status="skipped",
                           message="the moving image does not reach this block's core")
        prewarped = bgrid.image(seen.values[inner], name=seen.name or "image")
        before = ncc(fixed_block.values[core], prewarped.values[core])
        info = BlockInfo(block.id, block.index, block.core, block.region, plan.level,
                         units(fixed), None if valid.all() else valid)
        t1 = time.perf_counter()
        result = call_method(method, fixed_block, prewarped, initial, info)
        record["method_seconds"] = time.perf_counter() - t1
        if not isinstance(result, BlockResult):
            raise TypeError(f"the block method returned {type(result).__name__}, "
                            "not a BlockResult")
        if result.metrics:
            record.update({k: _plain(v) for k, v in result.metrics.items()})
        if result.status == "declined":  # left to the pre-warp transform: zero residual
            record.update(ncc_before=before, ncc_after=before, status="declined",
                          message=result.message or "declined by the block method")
        else:
            field = _judge(result, record, fixed_block, seen, bgrid, core, before,
                           covered=covered, inner=inner)
    except Exception as exc:  # a block's failure is recorded, never fatal to the run
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=4))
    return _finish(work, block, field, record, t0)


def _finish(work: Path | None, block: Block, field: np.ndarray, record: dict[str, Any],
            t0: float, **status: str) -> dict[str, Any]:
    """Complete a block's record (``status``, time) and write it with its field."""
    record.update(status, seconds=time.perf_counter() - t0)
    if work is not None:
        _write_block(Path(work), block, field, record)
        with contextlib.suppress(OSError):
            _running_path(work, block.id).unlink()
    return record


def _judge_grid(bgrid: Grid, region: Any, shape: Any) -> tuple[Grid, tuple[slice, ...]]:
    """The block grid grown by :data:`JUDGE_MARGIN` on each side whose region lies on the
    level's edge, and the block grid's index slices in it."""
    pads = [(JUDGE_MARGIN if r0 == 0 else 0, JUDGE_MARGIN if r1 == n else 0)
            for (r0, r1), n in zip(region, shape, strict=True)]
    if not any(lo or hi for lo, hi in pads):
        return bgrid, tuple(slice(None) for _ in pads)
    lo = np.array([p[0] for p in pads], dtype=np.float64)
    wide = Grid([n + a + b for n, (a, b) in zip(bgrid.shape, pads, strict=True)],
                bgrid.spacing, bgrid.frame_origin - bgrid.spacing * lo, bgrid.direction,
                bgrid.unit)
    return wide, tuple(slice(a, a + n) for n, (a, _) in zip(bgrid.shape, pads, strict=True))


def _judge(result: BlockResult, record: dict[str, Any], fixed_block: xr.DataArray,
           prewarped: xr.DataArray, bgrid: Grid, core: tuple[slice, ...],
           before: float, covered: np.ndarray | None = None,
           inner: tuple[slice, ...] | None = None) -> np.ndarray:
    """The residual field of an answer that is not declined, measured into ``record``
    (correlation after, Jacobian range, largest displacement) with its status: ``ok``, or
    ``rejected`` when it folds or lowers the correlation. Raises for a failed answer.
    ``prewarped``: the moving image resampled through the pre-warp transform onto the block
    grid or a grid around it (:func:`_judge_grid`)."""
    if result.status != "ok" or result.transform is None:
        raise RuntimeError(result.message or f"the block method answered {result.status}")
    residual = result.transform
    field = _field_on(residual, bgrid)
    if result.valid is not None:
        field = np.where(np.asarray(result.valid, dtype=bool)[None], field, 0.0)
    after_img = load(warp(prewarped, residual, like=bgrid, interpolator="linear"))
    after = ncc(fixed_block.values[core], after_img.values[core])
    if covered is not None and not covered.all():
        # judged only where both the pre-warp and the residual read moving data: zeros
        # past the data's edge say nothing about the fit
        cov = prewarped.copy(data=covered.astype(np.float32))
        reads = load(warp(cov, residual, like=bgrid, interpolator="linear")).values[core]
        both = covered[inner][core] & (reads > 1 - 1e-6)
        record["judged_fraction"] = float(both.mean())
        if both.mean() >= JUDGE_MIN_FRACTION:
            f = fixed_block.values[core]
            before = ncc(f, prewarped.values[inner][core], both)
            after = ncc(f, after_img.values[core], both)
    # the core and one voxel around it is all the core's central differences need
    span = [sl.indices(n)[:2] for sl, n in zip(core, field.shape[1:], strict=True)]
    grown = tuple(slice(max(a - 1, 0), min(b + 1, n))
                  for (a, b), n in zip(span, field.shape[1:], strict=True))
    crop = tuple(slice(a - g.start, b - g.start) for (a, b), g in zip(span, grown, strict=True))
    jac = jacobian_determinant(field[(slice(None), *grown)], bgrid.spacing,
                               bgrid.direction)[crop]
    record.update(ncc_before=before, ncc_after=after, jacobian_min=float(jac.min()),
                  core_mean=[float(v) for v in
                             field[(slice(None), *core)].reshape(3, -1).mean(axis=1)],
                  jacobian_max=float(jac.max()),
                  displacement_max=float(np.sqrt((field ** 2).sum(axis=0)).max()))
    if not jac.min() > 0:
        record.update(status="rejected", message="the residual folds (Jacobian ≤ 0)")
    elif np.isfinite(before) and np.isfinite(after) and after < before - NCC_TOLERANCE:
        record.update(status="rejected",
                      message=f"correlation fell from {before:.3f} to {after:.3f}")
    else:
        record.update(status="ok", message="")
    return field


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a metric value."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _field_on(residual: Transform, grid: Grid) -> np.ndarray:
    """The residual's displacement (3, z, y, x) on the block grid: the field's own values
    when it is a displacement field on that very grid, else sampled."""
    from ..transforms import DisplacementField

    if isinstance(residual, DisplacementField) and residual.grid.matches(grid):
        return np.asarray(residual.field.values, dtype=np.float32)
    return np.asarray(sample_field(residual, like=grid).field.data.compute(
        scheduler="synchronous"), dtype=np.float32)


def check_picklable(method: BlockMethod) -> None:
    """Refuse, with advice, a block method that cannot reach worker processes."""
    import pickle

    try:
        pickle.dumps(method)
    except Exception as exc:
        from ..errors import InputError

        raise InputError(
            f"The block method cannot be sent to worker processes ({exc}). Define it at "
            "module level (not a lambda or a local function), or run with workers=1.") from None


def _running_path(work: Path, block_id: int) -> Path:
    return Path(work) / "blocks" / ".running" / f"b{block_id:06d}"


def _worker() -> tuple[str, str]:
    """The address and local directory (new on every restart) of the dask worker this
    runs on, or ``("", "")``."""
    with contextlib.suppress(Exception):
        from distributed import get_worker

        worker = get_worker()
        return worker.address, worker.local_directory
    return "", ""


def _mark_running(work: Path | None, block_id: int, where: tuple[str, str]) -> None:
    """Note when and where a block started (the client enforces ``block_timeout`` from
    it)."""
    if work is None:
        return
    path = _running_path(work, block_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"start": time.time(), "worker": where[0],
                                "worker_id": where[1]}))


def _running(work: Path, block_id: int) -> dict[str, Any] | None:
    try:
        return json.loads(_running_path(work, block_id).read_text())
    except (OSError, ValueError):
        return None


def _flag(work: Path, block: Block, message: str) -> dict[str, Any]:
    """Write a failed record (zero residual) for a block the client gave up on."""
    record = {**_block_record(block), "status": "failed", "message": message,
              "seconds": None}
    _write_block(work, block, np.zeros((3, *block.shape), dtype=np.float32), record)
    _unmark(work, block)
    return record


def task_arguments(plan: BlockPlan, fixed: xr.DataArray, moving: xr.DataArray,
                   initial: Transform, method: BlockMethod, work: Path) -> tuple[Any, ...]:
    """What every block task carries besides its block: the plan without its block list,
    images and transform backed by stores (in-memory data is written to ``work/staged``
    first, see :mod:`~ngffreg.registration.staging`)."""
    from .staging import persist_transform, stage_image

    staged = Path(work) / "staged"
    return (replace(plan, blocks=()), stage_image(fixed, staged, f"fixed_l{plan.level}"),
            stage_image(moving, staged, f"moving_l{plan.level}"),
            persist_transform(initial, staged, prefix="initial"), method, Path(work))


def run_blocks(
    plan: BlockPlan,
    fixed: xr.DataArray,
    moving: xr.DataArray,
    initial: Transform,
    method: BlockMethod,
    work: Path,
    *,
    client: Any = None,
    block_timeout: float | None = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Register every block of ``plan`` not already finished in ``work``; returns all
    records in block order (read back from ``work``, the source of truth).

    With ``client`` (a ``dask.distributed`` client, or an
    :class:`~ngffreg.registration.execution.OnDemandCluster`) the blocks are tasks on its
    workers:
    a worker that dies mid-block has its block retried elsewhere (dask's
    ``allowed-failures``); a block whose worker died every time, or that runs longer than
    ``block_timeout`` seconds (its worker is then restarted), is flagged failed and filled
    from its neighbours. Without a client they run here, one after the other.
    """
    work = Path(work)
    shutil.rmtree(work / "blocks" / ".running", ignore_errors=True)  # marks of a killed run
    todo = [b for b in plan.blocks if read_record(work, b.id) is None]
    if todo:
        args = task_arguments(plan, fixed, moving, initial, method, work)
        report = None
        if progress:
            def report(rec: dict[str, Any]) -> None:
                progress({**rec, "of": len(todo), "resumed": len(plan.blocks) - len(todo)})
        if hasattr(client, "for_blocks"):  # a LocalCluster started now, if worth it
            client = client.for_blocks(len(todo))
        if client is not None:
            check_picklable(method)
            run_on_cluster(
                client, register_block, todo, args, key=lambda b: f"ngffreg-block-{b.id}",
                timeout=block_timeout, progress=report, flag=lambda b, m: _flag(work, b, m),
                started=lambda b: _running(work, b.id), forget=lambda b: _unmark(work, b),
                needs=f"ngffreg installed, and to see the inputs and {work}")
        else:
            for b in todo:
                rec = register_block(b, *args)
                if report:
                    report(rec)
    records = []
    for b in plan.blocks:
        rec = read_record(work, b.id)
        if rec is None:  # pragma: no cover - every path above writes one
            raise RuntimeError(f"block {b.id} has no record in {work}")
        records.append(rec)
    return records


def _unmark(work: Path, block: Block) -> None:
    with contextlib.suppress(OSError):
        _running_path(work, block.id).unlink()
