"""Interpolating a (possibly lazy, larger than memory) array at continuous indices.

One routine serves both displacement fields (three components) and images (one): the
array is ``(C, z, y, x)``; the values at ``m`` continuous indices come back as ``(m, C)``.
Only the region the points need is read: their bounding box grown by the interpolator's
footprint, in one piece when it is small enough, else chunk by chunk (each chunk plus the
footprint halo). Reads of dask arrays run on the calling thread (synchronous scheduler),
so the routine is safe inside dask tasks and on distributed workers.

Edge rule (ITK's): neighbours past the array's edge repeat the edge. Whether a point is
inside at all is the caller's business (see :meth:`ngffreg.image.Grid.inside`).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage

#: Largest region (bytes, float64) read in one piece; beyond it, points go chunk by chunk.
REGION_BYTES = 256 * 2**20
#: Extra voxels around a cubic B-spline region, so that prefiltering the region alone
#: matches prefiltering the whole array (the filter's influence decays as 0.268ⁿ: < 1e-6).
SPLINE_MARGIN = 10
ORDERS = (0, 1, 3)


def footprint(order: int) -> tuple[int, int]:
    """Voxels needed around ``floor(index)``: ``[floor + lo, floor + hi)``."""
    if order in (0, 1):
        return 0, 2
    if order == 3:
        return -1 - SPLINE_MARGIN, 3 + SPLINE_MARGIN
    raise ValueError(f"Interpolation order must be one of {ORDERS}; got {order}.")


def read_region(data: Any, region: tuple[slice, ...]) -> np.ndarray:
    """``data[region]`` as numpy, in its own dtype; dask arrays are read on this thread."""
    part = data[region]
    if isinstance(part, da.Array):
        part = part.compute(scheduler="synchronous")
    return np.asarray(part)


def interpolate(region: np.ndarray, local: np.ndarray, order: int = 1) -> np.ndarray:
    """Values ``(m, C)`` of a ``(C, z, y, x)`` region at local continuous indices ``(m, 3)``.

    Order 0 keeps the region's dtype (labels stay exact); orders 1 and 3 compute in float64.
    """
    coords = local.T
    if order == 0:
        out = np.empty((len(local), region.shape[0]), dtype=region.dtype)
        for k in range(region.shape[0]):
            # round half up, as ITK's nearest-neighbour interpolator
            ndimage.map_coordinates(region[k], np.floor(coords + 0.5), output=out[:, k],
                                    order=0, mode="nearest", prefilter=False)
        return out
    out = np.empty((len(local), region.shape[0]), dtype=np.float64)
    for k in range(region.shape[0]):
        values = region[k].astype(np.float64, copy=False)
        if order == 3:
            values = ndimage.spline_filter(values, order=3, mode="mirror")
        ndimage.map_coordinates(values, coords, output=out[:, k], order=order,
                                mode="mirror" if order == 3 else "nearest", prefilter=False)
    return out


def chunk_bounds(data: Any) -> list[np.ndarray]:
    """Chunk edges along z, y, x of a ``(C, z, y, x)`` array (one chunk for numpy)."""
    if isinstance(data, da.Array):
        return [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks[1:]]
    return [np.array([0, n]) for n in data.shape[1:]]


def _box(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    return (slice(None), *(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))


def region_bounds(cidx: np.ndarray, n: Any, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The index box ``[lo, hi)`` of an array of shape ``n`` (z, y, x) that interpolating at
    the continuous indices ``cidx`` (m, 3) reads: the floor indices, clipped to the array,
    grown by the footprint. (Flooring and clipping are monotonic, so the box comes from the
    per-axis extremes of ``cidx``: no per-point integer arrays.)"""
    lo_off, hi_off = footprint(order)
    n = np.asarray(n, dtype=np.int64)
    lo, hi = cidx.min(axis=0), cidx.max(axis=0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        with np.errstate(invalid="ignore"):  # a NaN point counts as index 0, as before
            base = np.clip(np.floor(cidx).astype(np.int64), 0, n - 1)
        lo, hi = base.min(axis=0), base.max(axis=0)
    lo = np.clip(np.floor(lo), 0, n - 1).astype(np.int64)
    hi = np.clip(np.floor(hi), 0, n - 1).astype(np.int64)
    return np.clip(lo + lo_off, 0, n - 1), np.clip(hi + hi_off, 1, n)


def sample(data: Any, cidx: np.ndarray, *, order: int = 1,
           region_bytes: int = REGION_BYTES) -> np.ndarray:
    """Interpolate the ``(C, z, y, x)`` array ``data`` at continuous indices ``(m, 3)``."""
    lo_off, hi_off = footprint(order)
    n = np.asarray(data.shape[1:])
    channels = data.shape[0]
    if len(cidx) == 0:
        return np.zeros((0, channels), dtype=data.dtype if order == 0 else np.float64)
    lo, hi = region_bounds(cidx, n, order)
    if 8 * channels * int(np.prod(hi - lo)) <= region_bytes:
        return interpolate(read_region(data, _box(lo, hi)), cidx - lo, order)
    base = np.clip(np.floor(cidx).astype(np.int64), 0, n - 1)
    # Too large a region: group the points by the chunk of their floor index.
    bounds = chunk_bounds(data)
    counts = [len(b) - 1 for b in bounds]
    ids = [np.searchsorted(b, base[:, k], side="right") - 1 for k, b in enumerate(bounds)]
    flat = np.ravel_multi_index(ids, counts)
    order_ = np.argsort(flat, kind="stable")
    uniq, starts = np.unique(flat[order_], return_index=True)
    ends = np.append(starts[1:], len(order_))
    out = None
    for chunk, s, e in zip(uniq, starts, ends, strict=True):
        sel = order_[s:e]
        cid = np.unravel_index(chunk, counts)
        lo_c = np.array([max(bounds[k][cid[k]] + lo_off, 0) for k in range(3)])
        hi_c = np.array([min(bounds[k][cid[k] + 1] - 1 + hi_off, n[k]) for k in range(3)])
        values = interpolate(read_region(data, _box(lo_c, hi_c)), cidx[sel] - lo_c, order)
        if out is None:
            out = np.empty((len(cidx), channels), dtype=values.dtype)
        out[sel] = values
    return out
