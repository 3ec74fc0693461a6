"""Block plans in physical space, and the moving region a fixed block needs.

A plan cuts one level of the fixed image (its grid) into cores that tile it without
overlap; each block is its core grown by ``overlap`` voxels per side (clipped to the
image). Block registrations run on the grown blocks; blending (``registration.reduce``)
uses weights that are one deep inside a core and fall smoothly to zero across the core's
faces, so the grown blocks' edges, where a registration is least reliable, carry no
weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError
from .image import Grid, load
from .transforms import Transform
from .units import normalize_unit, unit_factor

Region = tuple[slice, slice, slice]
#: A length with its unit, e.g. ``"1.5 mm"``: the number and the unit.
LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµμ]+)\s*$")


def subgrid(grid: Grid, region: Region) -> Grid:
    """The grid of ``region`` (index slices) of ``grid``."""
    start = np.array([s.start or 0 for s in region], dtype=np.float64)
    shape = [len(range(*s.indices(n))) for s, n in zip(region, grid.shape, strict=True)]
    return Grid(shape, grid.spacing, grid.frame_origin + grid.spacing * start, grid.direction,
                grid.unit)


def core_slices(core: Seq[tuple[int, int]], region: Seq[tuple[int, int]]
                ) -> tuple[slice, slice, slice]:
    """A block's core as index slices of its grown region (both in level voxels)."""
    return tuple(slice(c0 - r0, c1 - r0)  # type: ignore[return-value]
                 for (c0, c1), (r0, _) in zip(core, region, strict=True))


def index_points(grid: Grid, index: np.ndarray) -> np.ndarray:
    """Physical positions of (N, 3) (continuous) grid indices."""
    frame = grid.frame_origin + grid.spacing * np.asarray(index, dtype=np.float64)
    return frame if grid.is_axis_aligned else frame @ grid.direction.T


def block_shape(chunk_size: Any, grid: Grid) -> tuple[int, int, int]:
    """Block core size in voxels of ``grid`` from ``chunk_size``: an int or (z, y, x) ints
    (voxels), or lengths such as ``"1.5 mm"`` / ``("200 um", "1 mm", "1 mm")``."""
    values = chunk_size if isinstance(chunk_size, (list, tuple)) else [chunk_size] * 3
    if len(values) != 3:
        raise InputError(f"chunk_size needs one value or three (z, y, x); got {chunk_size!r}.")
    out = []
    for v, step in zip(values, grid.spacing, strict=True):
        if isinstance(v, str):
            m = LENGTH.match(v)
            if m is None:
                try:
                    v = int(v)
                except ValueError:
                    raise InputError(
                        f"chunk_size {v!r} is neither a voxel count nor a length such as "
                        "'1.5 mm'.") from None
            else:
                length = float(m.group(1)) * unit_factor(normalize_unit(m.group(2)), grid.unit)
                v = max(1, round(length / step))
        if isinstance(v, float) and not v.is_integer():
            raise InputError(f"chunk_size in voxels must be whole numbers; got {v!r}. Give a "
                             "length with its unit (e.g. '1.5 mm') for physical sizes.")
        if int(v) < 8:
            raise InputError(f"chunk_size {int(v)} is too small: a block needs at least 8 "
                             "voxels per axis to register.")
        out.append(int(v))
    return out[0], out[1], out[2]


#: Memory of one block registration, measured with ANTs SyN (``tests``' sizes 48³–160³):
#: a worker process with ANTs loaded (~600 MB) plus ~280 bytes per voxel of the grown block.
BLOCK_BASE_BYTES = 600 * 2**20
BLOCK_BYTES_PER_VOXEL = 280


def block_bytes(core: Any, overlap_fraction: float = 0.25) -> int:
    """Memory of one block registration (a worker process with ANTs loaded and its block):
    ``core`` is the block core in voxels (int or z, y, x), grown by ``overlap_fraction``
    per side."""
    sides = np.broadcast_to(np.asarray(core, dtype=np.float64), (3,))
    voxels = float(np.prod(np.ceil(sides * (1 + 2 * overlap_fraction))))
    return int(BLOCK_BASE_BYTES + BLOCK_BYTES_PER_VOXEL * voxels)


def auto_block_size(memory_budget: Any, overlap_fraction: float = 0.25) -> int:
    """The largest block core (voxels per axis, a multiple of 8) whose registration fits in
    ``memory_budget`` (bytes or a string such as ``"1 GiB"``) per worker process."""
    from .units import parse_bytes

    budget = parse_bytes(memory_budget)
    room = float(budget) - BLOCK_BASE_BYTES
    if room <= 16**3 * BLOCK_BYTES_PER_VOXEL:
        raise InputError(
            f"A block memory budget of {memory_budget} leaves no room for a block: one worker "
            f"with ANTs loaded needs about {BLOCK_BASE_BYTES / 2**20:.0f} MiB plus "
            f"{BLOCK_BYTES_PER_VOXEL} bytes per block voxel. Give at least 0.7 GiB per worker.")
    side = (room / BLOCK_BYTES_PER_VOXEL) ** (1 / 3) / (1 + 2 * overlap_fraction)
    return max(8, int(side // 8) * 8)


def _edges(n: int, size: int) -> np.ndarray:
    """Core boundaries along one axis: about ``n / size`` near-equal cores."""
    count = max(1, round(n / size))
    return np.round(np.linspace(0, n, count + 1)).astype(int)


@dataclass(frozen=True)
class Block:
    """One block: ``index`` in the block grid, ``core`` and grown ``region`` (voxel
    ``[start, stop)`` per axis on the plan's grid), foreground fraction and whether the
    plan skips it (no signal)."""

    id: int
    index: tuple[int, int, int]
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]
    foreground: float = 1.0
    skip: bool = False

    @property
    def core_slices(self) -> Region:
        return tuple(slice(a, b) for a, b in self.core)  # type: ignore[return-value]

    @property
    def slices(self) -> Region:
        return tuple(slice(a, b) for a, b in self.region)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in self.region)  # type: ignore[return-value]


@dataclass(frozen=True)
class BlockPlan:
    """Blocks on the grid of one fixed level (``level``), with the core ``size`` and the
    ``overlap`` (voxels per side) they were made with."""

    grid: Grid
    level: int
    size: tuple[int, int, int]
    overlap: tuple[int, int, int]
    edges: tuple[tuple[int, ...], ...]
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(len(e) - 1 for e in self.edges)  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.blocks)

    def neighbours(self, block: Block) -> list[Block]:
        """The blocks whose index differs from ``block``'s by at most one per axis."""
        out = []
        for other in self.blocks:
            if other.id != block.id and max(
                    abs(a - b) for a, b in zip(other.index, block.index, strict=True)) <= 1:
                out.append(other)
        return out

    def to_dict(self) -> dict[str, Any]:
        g = self.grid
        return {"grid": {"shape": list(g.shape), "spacing": g.spacing.tolist(),
                         "frame_origin": g.frame_origin.tolist(),
                         "direction": g.direction.tolist(), "unit": g.unit},
                "level": self.level, "size": list(self.size), "overlap": list(self.overlap),
                "edges": [list(map(int, e)) for e in self.edges],
                "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BlockPlan:
        g = doc["grid"]
        grid = Grid(g["shape"], g["spacing"], g["frame_origin"], g["direction"], g["unit"])
        blocks = tuple(Block(id=b["id"], index=tuple(b["index"]),
                             core=tuple(tuple(c) for c in b["core"]),
                             region=tuple(tuple(r) for r in b["region"]),
                             foreground=b["foreground"], skip=b["skip"])
                       for b in doc["blocks"])
        return cls(grid, doc["level"], tuple(doc["size"]), tuple(doc["overlap"]),
                   tuple(tuple(e) for e in doc["edges"]), blocks)


def foreground_fractions(grid: Grid, edges: Seq[np.ndarray], image: xr.DataArray,
                         threshold: float | None = None) -> np.ndarray:
    """Per block core, the fraction of ``image`` voxels (any level of the fixed image,
    ideally a coarse one: it is loaded whole) above ``threshold`` (Otsu's by default)."""
    from .qc import otsu_threshold

    data = np.asarray(load(image).values, dtype=np.float32)
    thr = otsu_threshold(data) if threshold is None else float(threshold)
    src = Grid.of(image)
    cidx = grid.continuous_index(src.points())
    counts = tuple(len(e) - 1 for e in edges)
    pos = []
    ok = np.ones(len(cidx), dtype=bool)
    for k in range(3):
        c = cidx[:, k] + 0.5
        ok &= (c >= 0) & (c < grid.shape[k])
        pos.append(np.clip(np.searchsorted(edges[k], c, side="right") - 1, 0, counts[k] - 1))
    flat = np.ravel_multi_index(pos, counts)[ok]
    total = np.bincount(flat, minlength=math.prod(counts))
    signal = np.bincount(flat, weights=(data.ravel()[ok] > thr).astype(np.float64),
                         minlength=math.prod(counts))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, signal / np.maximum(total, 1), 0.0)
    return frac.reshape(counts)


def plan_blocks(
    grid: Grid,
    chunk_size: Any = 128,
    overlap_fraction: float = 0.25,
    *,
    level: int = 0,
    foreground: xr.DataArray | None = None,
    min_foreground: float = 0.02,
    threshold: float | None = None,
) -> BlockPlan:
    """Cut ``grid`` (the fixed level the blocks register at) into blocks.

    ``chunk_size``: the core size (see :func:`block_shape`); the cores are made near-equal
    (about ``n / chunk_size`` of them per axis). ``overlap_fraction``: the overlap added on
    each side, as a fraction of the core size. ``foreground``: an image of the fixed volume
    (a coarse level is enough) used to skip blocks whose fraction of voxels above
    ``threshold`` (Otsu's) is below ``min_foreground``.
    """
    if not 0 <= overlap_fraction < 1:
        raise InputError(f"overlap_fraction must be in [0, 1); got {overlap_fraction}.")
    size = block_shape(chunk_size, grid)
    overlap = tuple(math.ceil(overlap_fraction * s) for s in size)
    edges = [_edges(n, s) for n, s in zip(grid.shape, size, strict=True)]
    counts = tuple(len(e) - 1 for e in edges)
    frac = (foreground_fractions(grid, edges, foreground, threshold) if foreground is not None
            else np.ones(counts))
    blocks = []
    for bid, index in enumerate(np.ndindex(*counts)):
        core = tuple((int(edges[k][index[k]]), int(edges[k][index[k] + 1])) for k in range(3))
        region = tuple((max(0, a - overlap[k]), min(grid.shape[k], b + overlap[k]))
                       for k, (a, b) in enumerate(core))
        f = float(frac[index])
        blocks.append(Block(bid, tuple(int(i) for i in index), core, region, f,
                            bool(f < min_foreground)))
    return BlockPlan(grid, level, size, overlap, tuple(tuple(int(v) for v in e) for e in edges),
                     tuple(blocks))


def boundary_indices(shape: Seq[int], step: int = 4) -> np.ndarray:
    """Index points (N, 3) on all six faces of a box of ``shape``, every ``step`` voxels
    along each face (its last row and column included), corners included."""
    axes = [np.unique(np.r_[np.arange(0, n, step), n - 1]).astype(np.float64) for n in shape]
    faces = []
    for k in range(3):
        others = [axes[j] for j in range(3) if j != k]
        a, b = np.meshgrid(*others, indexing="ij")
        for value in {0.0, float(shape[k] - 1)}:
            pts = np.empty((a.size, 3))
            pts[:, k] = value
            pts[:, [j for j in range(3) if j != k]] = np.stack([a.ravel(), b.ravel()], axis=1)
            faces.append(pts)
    return np.unique(np.concatenate(faces), axis=0)


def moving_region(block_grid: Grid, transform: Transform, moving_grid: Grid, *,
                  margin: int = 4, step: int = 4) -> Region | None:
    """The region of the moving grid (index slices) that a fixed block needs: samples of
    the block's whole boundary pushed through ``transform`` (fixed → moving), their
    bounding box grown by ``margin`` voxels. ``None`` when it misses the moving image."""
    pts = transform.apply(index_points(block_grid, boundary_indices(block_grid.shape, step)))
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) == 0:
        return None
    cidx = moving_grid.continuous_index(pts)
    lo = np.floor(cidx.min(axis=0)).astype(int) - margin
    hi = np.ceil(cidx.max(axis=0)).astype(int) + margin + 1
    n = np.asarray(moving_grid.shape)
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    if np.any(hi - lo < 2):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore
