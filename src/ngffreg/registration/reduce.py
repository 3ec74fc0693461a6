"""Blending block fields into one smooth field, chunk by chunk and lazily.

Each block's residual field lives on its grown region. Its weight is a product over the
three axes of a ramp across each core face that the block shares with a neighbour:

    ramp(t) = ½ (1 + sin(π t / 2))  for |t| < 1,   1 above,   0 below,

with ``t`` the signed distance from the face (voxels, positive inside the core) divided by
the blend half-width ``blend_sigma``. Across a face the two neighbours' ramps sum to one
exactly (``ramp(t) + ramp(-t) = 1``), the weight and its derivative are continuous, and
voxels farther than ``blend_sigma`` outside a core get no weight from that block, so the
grown region's edge (where a registration is least reliable) is not used. The sum is still
divided by the total weight, so the weights sum to one everywhere.

Blocks that failed or were rejected contribute a constant: the mean core displacement of
their usable neighbours (zero when none), so a failed block is filled from its
neighbours and, through the zero residual, from the coarse transform. Skipped blocks (no
signal) and declined ones (their fit did not pay on held-out voxels) contribute zero: the
coarse transform alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..blocks import BlockPlan
from ..image import SPATIAL_DIMS
from ..transforms import DisplacementField
from .blockwise import KEPT, read_field


def default_blend_sigma(plan: BlockPlan) -> float:
    """Half the smallest overlap (voxels): the outer half of each grown region is unused."""
    return max(0.5, min(plan.overlap) / 2.0)


def ramp(t: np.ndarray) -> np.ndarray:
    """The blending ramp: 0 below −1, 1 above 1, ½(1 + sin(πt/2)) between."""
    t = np.clip(t, -1.0, 1.0)
    return 0.5 * (1.0 + np.sin(0.5 * np.pi * t))


def axis_weight(index: np.ndarray, core: tuple[int, int], n: int, width: float) -> np.ndarray:
    """The block's weight profile along one axis at voxel ``index`` (faces on the image's
    border get no ramp)."""
    w = np.ones(index.shape, dtype=np.float64)
    c0, c1 = core
    if c0 > 0:
        w *= ramp((index - (c0 - 0.5)) / width)
    if c1 < n:
        w *= ramp(((c1 - 0.5) - index) / width)
    return w


def overlapping(regions: np.ndarray, loc: Any) -> np.ndarray:
    """Indices of the blocks whose grown ``regions`` (n, 3, 2: start, stop per axis) overlap
    the box ``loc`` (((start, stop),) * 3), found at once: a chunk of the blend touches only
    the blocks that reach it, however many blocks there are."""
    lo = np.array([a for a, _ in loc])
    hi = np.array([b for _, b in loc])
    hit = np.all((regions[:, :, 0] < hi) & (regions[:, :, 1] > lo), axis=1)
    return np.flatnonzero(hit)


def fill_vectors(plan: BlockPlan, records: list[dict[str, Any]]) -> dict[int, np.ndarray]:
    """For every block not used as computed, the constant displacement it contributes."""
    by_id = {r["id"]: r for r in records}
    fills: dict[int, np.ndarray] = {}
    for b in plan.blocks:
        rec = by_id[b.id]
        if rec["status"] == "ok":
            continue
        if rec["status"] in KEPT:
            fills[b.id] = np.zeros(3)
            continue
        means = [np.asarray(by_id[o.id]["core_mean"]) for o in plan.neighbours(b)
                 if by_id[o.id]["status"] == "ok" and "core_mean" in by_id[o.id]]
        fills[b.id] = np.mean(means, axis=0) if means else np.zeros(3)
        rec["filled_with"] = [float(v) for v in fills[b.id]]
    return fills


def blend(
    plan: BlockPlan,
    records: list[dict[str, Any]],
    work: Path,
    *,
    blend_sigma: float | None = None,
    chunks: int = 64,
) -> DisplacementField:
    """The blended residual field on the plan's grid, lazy: each chunk reads only the
    parts of the block fields that overlap it."""
    width = float(blend_sigma) if blend_sigma is not None else default_blend_sigma(plan)
    width = float(np.clip(width, 0.5, max(0.5, min(plan.overlap) - 0.5)))
    fills = fill_vectors(plan, records)
    shape = plan.grid.shape
    blocks = plan.blocks
    work = Path(work)
    regions = np.array([b.region for b in blocks], dtype=np.int64).reshape(-1, 3, 2)

    def block_fn(block_info=None) -> np.ndarray:
        loc = block_info[None]["array-location"][1:]
        out_shape = tuple(b - a for a, b in loc)
        total = np.zeros((3, *out_shape), dtype=np.float64)
        weight = np.zeros(out_shape, dtype=np.float64)
        for i in overlapping(regions, loc):
            b = blocks[i]
            lo = [max(a, r0) for (a, _), (r0, _) in zip(loc, b.region, strict=True)]
            hi = [min(e, r1) for (_, e), (_, r1) in zip(loc, b.region, strict=True)]
            if any(h <= low for low, h in zip(lo, hi, strict=True)):
                continue
            profiles = [axis_weight(np.arange(lo[k], hi[k], dtype=np.float64), b.core[k],
                                    shape[k], width) for k in range(3)]
            w = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None]
            if not w.any():
                continue
            out_sl = tuple(slice(lo[k] - loc[k][0], hi[k] - loc[k][0]) for k in range(3))
            if b.id in fills:
                part = fills[b.id][:, None, None, None] * np.ones((1, *w.shape))
            else:
                src = tuple(slice(lo[k] - b.region[k][0], hi[k] - b.region[k][0])
                            for k in range(3))
                part = np.asarray(read_field(work, b.id)[(slice(None), *src)], dtype=np.float64)
            total[(slice(None), *out_sl)] += w[None] * part
            weight[out_sl] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), 0.0)
        return out.astype(np.float32)

    chunking = da.core.normalize_chunks((3, chunks, chunks, chunks), (3, *shape))
    data = da.map_blocks(block_fn, chunks=chunking, dtype=np.float32,
                         meta=np.empty((0, 0, 0, 0), dtype=np.float32))
    image = plan.grid.image(data, dims=("c", *SPATIAL_DIMS), name="fine")
    return DisplacementField(field=image, outside="zero", name="fine")
