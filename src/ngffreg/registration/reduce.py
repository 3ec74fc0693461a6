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

import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..blocks import BlockPlan
from ..image import SPATIAL_DIMS, Grid
from ..sampling import read_region
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


def lattice(n: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """The fine indices of a grid ``factor`` times coarser along an axis of ``n`` voxels:
    ``0, f, 2f, …`` until the fine grid's last voxel is covered (the last point may lie up
    to ``f - 1`` voxels past it), and, per point, how far past the last voxel it lies (0
    inside)."""
    m = -(-(n - 1) // factor) + 1 if n > 1 else 1
    points = np.arange(m, dtype=np.int64) * factor
    return points, np.maximum(points - (n - 1), 0)


class _Blender:
    """The blended field at any lattice of fine voxel indices (the outer product of one
    index array per axis): each block that reaches the lattice's box adds its weighted
    residual, read only where the lattice meets it."""

    def __init__(self, plan: BlockPlan, records: list[dict[str, Any]], work: Path,
                 width: float) -> None:
        self.plan, self.work, self.width = plan, Path(work), width
        self.fills = fill_vectors(plan, records)
        self.regions = np.array([b.region for b in plan.blocks],
                                dtype=np.int64).reshape(-1, 3, 2)
        self.token = f"blend-{uuid.uuid4().hex}"  # this blend's entries in the chunk cache
        self._fields: dict[int, da.Array] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fields": {}}  # opened again where it runs

    def field_part(self, block_id: int, box: tuple[slice, ...]) -> np.ndarray:
        """``box`` of a block's stored field, through the process's chunk cache: a block
        field chunk is decoded once, not once for every output chunk it reaches."""
        data = self._fields.get(block_id)
        if data is None:
            data = self._fields[block_id] = da.from_zarr(
                read_field(self.work, block_id), name=f"from-zarr-{self.token}-{block_id}")
        return read_region(data, (slice(None), *box), cache=self.token)

    def at(self, idx: list[np.ndarray]) -> np.ndarray:
        """(3, *lens) float64 at the sorted, distinct fine indices ``idx`` (z, y, x), all
        inside the grid."""
        shape = self.plan.grid.shape
        out_shape = tuple(len(i) for i in idx)
        total = np.zeros((3, *out_shape), dtype=np.float64)
        weight = np.zeros(out_shape, dtype=np.float64)
        box = [(int(i[0]), int(i[-1]) + 1) for i in idx]
        for n in overlapping(self.regions, box):
            b = self.plan.blocks[n]
            # the lattice points inside the block's region: a contiguous run, as idx is sorted
            runs = [np.searchsorted(i, r, side="left") for i, r in zip(idx, b.region,
                                                                         strict=True)]
            if any(r1 <= r0 for r0, r1 in runs):
                continue
            pos = [i[r0:r1] for i, (r0, r1) in zip(idx, runs, strict=True)]
            profiles = [axis_weight(p.astype(np.float64), b.core[k], shape[k], self.width)
                        for k, p in enumerate(pos)]
            w = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None]
            if not w.any():
                continue
            out_sl = tuple(slice(r0, r1) for r0, r1 in runs)
            if b.id in self.fills:
                part = self.fills[b.id][:, None, None, None] * np.ones((1, *w.shape))
            else:
                src = tuple(slice(int(p[0]) - r[0], int(p[-1]) + 1 - r[0])
                            for p, r in zip(pos, b.region, strict=True))
                part = np.asarray(self.field_part(b.id, src), dtype=np.float64)
                picks = [p - p[0] for p in pos]
                if any(len(p) != s.stop - s.start for p, s in zip(picks, src, strict=True)):
                    part = part[np.ix_(range(3), *picks)]
            total[(slice(None), *out_sl)] += w[None] * part
            weight[out_sl] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), 0.0)

    def on_lattice(self, points: list[np.ndarray], past: list[np.ndarray]) -> np.ndarray:
        """The field at lattice ``points`` (per axis, fine indices, maybe past the last
        voxel by ``past``): a point past the grid continues the last two voxels' slope, so
        linear interpolation between it and the point before reproduces a field that is
        linear there."""
        n = self.plan.grid.shape
        evals = [np.unique(np.concatenate([p[q == 0], [m - 2, m - 1] if (q > 0).any() and m > 1
                                           else []])).astype(np.int64)
                 for p, q, m in zip(points, past, n, strict=True)]
        values = self.at(evals)
        for k, (p, q, e) in enumerate(zip(points, past, evals, strict=True)):
            inside = np.searchsorted(e, np.minimum(p, n[k] - 1))
            picked = np.take(values, inside, axis=k + 1)
            if (q > 0).any():
                last = np.take(values, [len(e) - 1], axis=k + 1)
                before = np.take(values, [max(len(e) - 2, 0)], axis=k + 1)
                shape = [1] * picked.ndim
                shape[k + 1] = len(p)
                picked = picked + q.reshape(shape) * (last - before)
            values = picked
        return values


#: The stored fine field may be coarser than the blocks' grid while linear interpolation
#: reproduces the blend within this many voxels at the 99th percentile
#: (:func:`choose_factor`).
FIELD_TOLERANCE = 0.1
#: Coarser storage factors tried by ``"auto"``, and the fewest points an axis keeps.
FIELD_FACTORS = (2, 4)
MIN_FIELD_POINTS = 8
#: Sample boxes (fine voxels per edge) and how many the rule looks at.
SAMPLE_EDGE, SAMPLE_BOXES = 33, 8


def blend_width(plan: BlockPlan, blend_sigma: float | None = None) -> float:
    """The ramps' half-width in voxels: ``blend_sigma`` (default half the smallest
    overlap), kept within the overlap."""
    width = float(blend_sigma) if blend_sigma is not None else default_blend_sigma(plan)
    return float(np.clip(width, 0.5, max(0.5, min(plan.overlap) - 0.5)))


def choose_factor(plan: BlockPlan, records: list[dict[str, Any]], work: Path, *,
                  blend_sigma: float | None = None, tolerance: float = FIELD_TOLERANCE,
                  factors: tuple[int, ...] = FIELD_FACTORS) -> tuple[int, dict[str, Any]]:
    """How much coarser than the blocks' grid the blended field can be stored.

    The rule: the largest factor ``f`` (of ``factors``, keeping at least
    :data:`MIN_FIELD_POINTS` points per axis) for which linear interpolation between the
    blend's values at every ``f``-th voxel reproduces the blend itself within
    ``tolerance`` voxels at the 99th percentile, measured on boxes of
    :data:`SAMPLE_EDGE` voxels centred where registered blocks' cores meet (seams and
    block fields both); 1 when none does, or no block was registered. Returns the factor
    and what was measured (error per factor, voxels: p99 and max)."""
    from scipy.ndimage import map_coordinates

    shape = np.array(plan.grid.shape)
    usable = [f for f in factors if int(shape.min()) // f >= MIN_FIELD_POINTS]
    by_id = {r["id"]: r for r in records}
    ok = [b for b in plan.blocks if by_id.get(b.id, {}).get("status") == "ok"]
    report: dict[str, Any] = {"tolerance_voxel": tolerance, "boxes": 0, "error_voxel": {}}
    if not usable or not ok:
        return 1, report
    picks = [ok[i] for i in np.unique(np.linspace(0, len(ok) - 1, SAMPLE_BOXES).round()
                                      .astype(int))]
    blender = _Blender(plan, records, work, blend_width(plan, blend_sigma))
    errors: dict[int, list[np.ndarray]] = {f: [] for f in usable}
    edge = min(SAMPLE_EDGE, int(shape.min()))
    for b in picks:
        centre = np.array([c1 for _, c1 in b.core])
        lo = np.clip(centre - edge // 2, 0, shape - edge)
        values = blender.at([np.arange(a, a + edge) for a in lo])
        values /= plan.grid.spacing[:, None, None, None]  # voxels
        for f in usable:
            first = (-lo) % f  # the lattice of the whole grid, as blend(factor=f) stores it
            sub = values[(slice(None), *(slice(int(a), None, f) for a in first))]
            count = np.array(sub.shape[1:])
            if np.any(count < 2):
                continue
            ends = first + (count - 1) * f  # interpolate only between lattice points
            grid = np.meshgrid(*[np.arange(a, e + 1) for a, e in zip(first, ends,
                                                                   strict=True)],
                               indexing="ij")
            coords = [(g - a) / f for g, a in zip(grid, first, strict=True)]
            truth = values[(slice(None), *(slice(int(a), int(e) + 1)
                                           for a, e in zip(first, ends, strict=True)))]
            err = np.stack([map_coordinates(sub[c], coords, order=1) - truth[c]
                            for c in range(3)])
            errors[f].append(np.sqrt((err ** 2).sum(axis=0)).ravel())
    report["boxes"] = len(picks)
    factor = 1
    for f in usable:
        if not errors[f]:
            continue
        e = np.concatenate(errors[f])
        p99, top = float(np.percentile(e, 99)), float(e.max())
        report["error_voxel"][str(f)] = {"p99": round(p99, 5), "max": round(top, 5)}
        if p99 > tolerance:
            break
        factor = f
    return factor, report


def blend(
    plan: BlockPlan,
    records: list[dict[str, Any]],
    work: Path,
    *,
    blend_sigma: float | None = None,
    chunks: int = 64,
    factor: int = 1,
) -> DisplacementField:
    """The blended residual field, lazy: each chunk reads only the parts of the block
    fields that overlap it. On the plan's grid, or with ``factor`` > 1 on a grid that many
    times coarser along each axis from the same origin (:func:`lattice`; its values are the
    blend's own at those voxels, nothing is averaged away)."""
    blender = _Blender(plan, records, work, blend_width(plan, blend_sigma))
    axes = [lattice(n, factor) for n in plan.grid.shape]

    def block_fn(block_info=None) -> np.ndarray:
        loc = block_info[None]["array-location"][1:]
        points = [a[0][lo:hi] for a, (lo, hi) in zip(axes, loc, strict=True)]
        past = [a[1][lo:hi] for a, (lo, hi) in zip(axes, loc, strict=True)]
        return blender.on_lattice(points, past).astype(np.float32)

    shape = tuple(len(a[0]) for a in axes)
    chunking = da.core.normalize_chunks((3, chunks, chunks, chunks), (3, *shape))
    data = da.map_blocks(block_fn, chunks=chunking, dtype=np.float32,
                         meta=np.empty((0, 0, 0, 0), dtype=np.float32),
                         name=f"ngffreg-blend-{uuid.uuid4().hex}")
    g = plan.grid
    grid = Grid(shape, g.spacing * factor, g.frame_origin, g.direction, g.unit)
    image = grid.image(data, dims=("c", *SPATIAL_DIMS), name="fine")
    return DisplacementField(field=image, outside="zero", name="fine")
