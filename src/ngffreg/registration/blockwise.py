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
neighbours. A block without signal is skipped (zero residual: the coarse transform).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import Block, BlockPlan, moving_region, subgrid
from ..image import Grid, load, units
from ..qc import jacobian_determinant, ncc
from ..transforms.model import Transform, sample_field
from ..warp import warp
from .methods import BlockInfo, BlockMethod, BlockResult

#: Statuses whose field is used as computed.
USED = ("ok",)
#: How the moving region is resampled onto the block grid before the block method sees it
#: (a cubic B-spline blurs less than linear interpolation).
PREWARP_INTERPOLATOR = "bSpline"
#: A block whose correlation drops by more than this is rejected.
NCC_TOLERANCE = 0.01


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
    arr = zarr.create_array(store=str(tmp), shape=field.shape, chunks=field.shape,
                            dtype=np.float32, zarr_format=3)
    arr[...] = field.astype(np.float32)
    arr.attrs["ngffreg_block"] = json.loads(json.dumps(record))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _core_mask(block: Block) -> tuple[slice, slice, slice]:
    return tuple(slice(c0 - r0, c1 - r0)  # type: ignore[return-value]
                 for (c0, c1), (r0, _) in zip(block.core, block.region, strict=True))


def register_block(
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
    record: dict[str, Any] = {"id": block.id, "index": list(block.index),
                              "core": [list(c) for c in block.core],
                              "region": [list(r) for r in block.region],
                              "foreground": block.foreground}
    zero = np.zeros((3, *block.shape), dtype=np.float32)
    if block.skip:
        record.update(status="skipped", message="no signal in the fixed block",
                      seconds=time.perf_counter() - t0)
        if work is not None:
            _write_block(Path(work), block, zero, record)
        return record
    field = zero
    try:
        fixed_block = load(fixed.isel(z=block.slices[0], y=block.slices[1],
                                       x=block.slices[2]))
        mgrid = Grid.of(moving)
        region = moving_region(bgrid, initial, mgrid)
        if region is None:
            raise RuntimeError("the block maps outside the moving image")
        record["moving_region"] = [[s.start, s.stop] for s in region]
        moving_part = load(moving.isel(z=region[0], y=region[1], x=region[2]))
        prewarped = load(warp(moving_part, initial, like=bgrid, interpolator=PREWARP_INTERPOLATOR))
        core = _core_mask(block)
        before = ncc(fixed_block.values[core], prewarped.values[core])
        info = BlockInfo(block.id, block.index, block.core, block.region, plan.level,
                         units(fixed))
        t1 = time.perf_counter()
        result = method(fixed_block, prewarped, initial, info)
        record["method_seconds"] = time.perf_counter() - t1
        if not isinstance(result, BlockResult):
            raise TypeError(f"the block method returned {type(result).__name__}, "
                            "not a BlockResult")
        if result.status != "ok" or result.transform is None:
            raise RuntimeError(result.message or f"the block method answered {result.status}")
        residual = result.transform
        field = np.asarray(sample_field(residual, like=bgrid).field.data.compute(
            scheduler="synchronous"), dtype=np.float32)
        if result.valid is not None:
            field = np.where(np.asarray(result.valid, dtype=bool)[None], field, 0.0)
        after_img = load(warp(prewarped, residual, like=bgrid, interpolator="linear"))
        after = ncc(fixed_block.values[core], after_img.values[core])
        jac = jacobian_determinant(field, bgrid.spacing, bgrid.direction)[core]
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
    except Exception as exc:  # a block's failure is recorded, never fatal to the run
        record.update(status="failed", message=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc(limit=4))
    record["seconds"] = time.perf_counter() - t0
    if work is not None:
        _write_block(Path(work), block, field, record)
    return record


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


def run_blocks(
    plan: BlockPlan,
    fixed: xr.DataArray,
    moving: xr.DataArray,
    initial: Transform,
    method: BlockMethod,
    work: Path,
    *,
    workers: int = 1,
    client: Any = None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Register every block of ``plan`` not already finished in ``work``; returns all
    records in block order.

    With ``client`` (a ``dask.distributed`` client) the blocks are submitted to its
    workers; otherwise ``workers`` > 1 uses a pool of that many processes, and 1 runs
    them here, one after the other.
    """
    work = Path(work)
    done = {b.id: read_record(work, b.id) for b in plan.blocks}
    todo = [b for b in plan.blocks if done[b.id] is None]
    records = {i: r for i, r in done.items() if r is not None}
    args = (plan, fixed, moving, initial, method, work)
    if (client is not None or workers > 1) and todo:
        check_picklable(method)
    if client is not None:
        futures = [client.submit(register_block, b, *args, key=f"ngffreg-block-{b.id}",
                                 pure=False) for b in todo]
        from dask.distributed import as_completed

        for fut in as_completed(futures):
            rec = fut.result()
            records[rec["id"]] = rec
            if progress:
                progress(rec)
    elif workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = [pool.submit(register_block, b, *args) for b in todo]
            for fut in as_completed(futs):
                rec = fut.result()
                records[rec["id"]] = rec
                if progress:
                    progress(rec)
    else:
        for b in todo:
            rec = register_block(b, *args)
            records[rec["id"]] = rec
            if progress:
                progress(rec)
    return [records[b.id] for b in plan.blocks]


def block_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per block for the QC table."""
    keys = ("id", "index", "status", "foreground", "ncc_before", "ncc_after", "jacobian_min",
            "jacobian_max", "displacement_max", "seconds", "message")
    return [{k: r.get(k) for k in keys} for r in records]

