"""Interpolating a (possibly lazy, larger than memory) array at continuous indices.

One routine serves both displacement fields (three components) and images (one): the
array is ``(C, z, y, x)``; the values at ``m`` continuous indices come back as ``(m, C)``.
Only the region the points need is read: their bounding box grown by the interpolator's
footprint, in one piece when it is small enough, else chunk by chunk (each chunk plus the
footprint halo). Reads of dask arrays run on the calling thread (synchronous scheduler),
so the routine is safe inside dask tasks and on distributed workers.

Edge rule (ITK's): neighbours past the array's edge repeat the edge. Whether a point is
inside at all is the caller's business (see :meth:`ngffreg.image.Grid.inside`).

Reads may go through a per-process cache of decoded source chunks (``cache=`` a token):
a dask array is then read whole chunk by whole chunk, each chunk decoded once and kept
(least recently used first out, :data:`CHUNK_CACHE_BYTES` in all), so neighbouring output
chunks of a warp, whose moving regions overlap, do not decode the same source chunks
again. The token scopes the entries (one per warp call), so a store rewritten under the
same name between two calls is never served stale.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import dask
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


#: Bytes of decoded source chunks a process keeps for reuse (see :class:`ChunkCache`);
#: ``NGFFREG_CHUNK_CACHE_MB`` in the environment, read when the cache is first used (not at
#: import), overrides it (0 turns the cache off).
CHUNK_CACHE_BYTES = 256 * 2**20


def configured_cache_bytes() -> int:
    """The chunk cache's size: ``NGFFREG_CHUNK_CACHE_MB`` (MiB) if set, else
    :data:`CHUNK_CACHE_BYTES`."""
    value = os.environ.get("NGFFREG_CHUNK_CACHE_MB")
    return CHUNK_CACHE_BYTES if value is None else int(float(value) * 2**20)


class ChunkCache:
    """A thread-safe, least-recently-used store of decoded chunks, bounded in bytes.

    A chunk one thread is decoding is not decoded again by another that needs it at the
    same time: :meth:`claim` tells the second to wait for the first (neighbouring output
    chunks run side by side and share source chunks). No lock is held while decoding."""

    def __init__(self, limit: int | None = None) -> None:
        self._limit = None if limit is None else int(limit)
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._pending: dict[Any, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def claim(self, key: Any) -> tuple[np.ndarray | None, threading.Event | None]:
        """``(value, None)`` when the chunk is here; ``(None, event)`` when another thread
        is decoding it (wait for the event, then :meth:`get`); ``(None, None)`` when it is
        the caller's to decode: then :meth:`put` it, or :meth:`release` it on failure."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self.hits += 1
                self._items.move_to_end(key)
                return value, None
            event = self._pending.get(key)
            if event is not None:
                self.hits += 1
                return None, event
            self.misses += 1
            self._pending[key] = threading.Event()
            return None, None

    def put(self, key: Any, value: np.ndarray) -> None:
        value.setflags(write=False)
        with self._lock:
            if value.nbytes <= self.limit and key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.limit:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def release(self, key: Any) -> None:
        """Give up a claim (the decode failed): whoever waits decodes it themselves."""
        with self._lock:
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    @property
    def limit(self) -> int:
        """Bytes the cache holds at most (given, or :func:`configured_cache_bytes` when
        first asked)."""
        if self._limit is None:
            self._limit = configured_cache_bytes()
        return self._limit

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @contextlib.contextmanager
    def limited(self, limit: int) -> Iterator[None]:
        """Hold at most ``limit`` bytes inside the block (what is beyond it now is dropped,
        oldest first); the previous limit afterwards."""
        before = self._limit
        with self._lock:
            self._limit = int(limit)
            while self._bytes > self._limit and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        try:
            yield
        finally:
            self._limit = before


#: The process's chunk cache (used by :func:`read_region` when given a token); its size is
#: read from the environment when it is first used.
CHUNK_CACHE = ChunkCache()


def _cacheable(data: Any) -> bool:
    """A dask array whose chunks are small enough to keep: at most 1/16 of the cache."""
    if not isinstance(data, da.Array) or any(np.isnan(c).any() for c in data.chunks):
        return False
    largest = np.prod([max(c) if c else 0 for c in data.chunks]) * data.dtype.itemsize
    return 0 < largest <= CHUNK_CACHE.limit // 16


def _zarr_source(data: da.Array) -> Any:
    """The Zarr array a plain ``da.from_zarr`` array reads, or None: its chunks are then
    read from Zarr directly, without building and running a dask graph for each (the
    same values: dask's getter is ``np.asarray(array[slices])``)."""
    try:
        layers = data.__dask_graph__().layers
        key = f"original-{data.name}"
        if not data.name.startswith("from-zarr-") or set(layers) != {key, data.name}:
            return None
        array = layers[key][key]
    except Exception:  # any other graph: read through dask
        return None
    import zarr

    if isinstance(array, zarr.Array) and tuple(array.shape) == tuple(data.shape):
        return array
    return None


def _read_cached(data: da.Array, region: tuple[slice, ...], token: Any) -> np.ndarray:
    """``data[region]`` assembled from whole chunks, each taken from the cache, waited for
    (another thread is decoding it) or decoded and then kept."""
    region = tuple(region) + (slice(None),) * (data.ndim - len(region))
    span = [sl.indices(n)[:2] for sl, n in zip(region, data.shape, strict=True)]
    out = np.empty(tuple(max(b - a, 0) for a, b in span), dtype=data.dtype)
    if out.size == 0:
        return out
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in data.chunks]
    ranges = [range(int(np.searchsorted(b, a, side="right")) - 1,
                    int(np.searchsorted(b, e - 1, side="right")))
              for b, (a, e) in zip(bounds, span, strict=True)]
    blocks: dict[tuple[int, ...], np.ndarray] = {}
    mine: list[tuple[int, ...]] = []
    theirs: list[tuple[tuple[int, ...], threading.Event]] = []
    for cid in itertools.product(*ranges):
        block, event = CHUNK_CACHE.claim((token, data.name, cid))
        if block is not None:
            blocks[cid] = block
        elif event is None:
            mine.append(cid)
        else:
            theirs.append((cid, event))

    def decode(cids: list[tuple[int, ...]]) -> list[np.ndarray]:
        boxes = [tuple(slice(int(b[c]), int(b[c + 1])) for b, c in zip(bounds, cid, strict=True))
                 for cid in cids]
        direct = _zarr_source(data)
        if direct is not None:
            return [np.asarray(direct[box]) for box in boxes]
        return [np.asarray(block) for block in
                dask.compute(*[data[box] for box in boxes], scheduler="synchronous")]

    if mine:  # decode ours first (never wait while holding claims: no deadlock)
        try:
            for cid, block in zip(mine, decode(mine), strict=True):
                CHUNK_CACHE.put((token, data.name, cid), block)
                blocks[cid] = block
        finally:
            for cid in mine:
                if cid not in blocks:
                    CHUNK_CACHE.release((token, data.name, cid))
    for cid, event in theirs:
        event.wait()
        block = CHUNK_CACHE.get((token, data.name, cid))
        blocks[cid] = block if block is not None else decode([cid])[0]
    for cid, block in blocks.items():
        src, dst = [], []
        for b, c, (a, e) in zip(bounds, cid, span, strict=True):
            lo, hi = max(int(b[c]), a), min(int(b[c + 1]), e)
            src.append(slice(lo - int(b[c]), hi - int(b[c])))
            dst.append(slice(lo - a, hi - a))
        out[tuple(dst)] = block[tuple(src)]
    return out


def read_region(data: Any, region: tuple[slice, ...], *, cache: Any = None) -> np.ndarray:
    """``data[region]`` as numpy, in its own dtype; dask arrays are read on this thread.

    With ``cache`` (a hashable token), a dask array with small enough chunks is read
    through :data:`CHUNK_CACHE` (whole chunks, decoded once per token)."""
    if cache is not None and _cacheable(data) and all(
            isinstance(sl, slice) and sl.step in (None, 1) for sl in region):
        return _read_cached(data, region, cache)
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
           region_bytes: int = REGION_BYTES, cache: Any = None) -> np.ndarray:
    """Interpolate the ``(C, z, y, x)`` array ``data`` at continuous indices ``(m, 3)``
    (``cache``: a token to read through the chunk cache, see :func:`read_region`)."""
    lo_off, hi_off = footprint(order)
    n = np.asarray(data.shape[1:])
    channels = data.shape[0]
    if len(cidx) == 0:
        return np.zeros((0, channels), dtype=data.dtype if order == 0 else np.float64)
    lo, hi = region_bounds(cidx, n, order)
    if 8 * channels * int(np.prod(hi - lo)) <= region_bytes:
        return interpolate(read_region(data, _box(lo, hi), cache=cache), cidx - lo, order)
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
        values = interpolate(read_region(data, _box(lo_c, hi_c), cache=cache),
                             cidx[sel] - lo_c, order)
        if out is None:
            out = np.empty((len(cidx), channels), dtype=values.dtype)
        out[sel] = values
    return out
