"""What block tasks carry: references to stores, never volume data.

A block task is pickled and sent to a worker process (or a machine of a dask cluster).
Everything it needs must therefore be small to pickle: images backed by Zarr stores (the
task reads only its own region), transforms whose displacement fields live in Zarr stores,
and the block plan without its list of blocks. The functions here put in-memory data
into the run's work folder (``OUT.ome.zarr.partial``) once, before any task is sent, and
return the same objects backed lazily by those stores.
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..transforms import DisplacementField, Transform, map_fields

#: An argument of a block task larger than this (pickled) is written to the work folder.
TASK_ARGUMENT_BYTES = 256 * 2**10
#: Chunk edge (voxels) of staged arrays.
STAGE_CHUNK = 128


class _Counter:
    """A file that only counts what is written to it, and stops past ``limit``."""

    class Full(Exception):
        pass

    def __init__(self, limit: float) -> None:
        self.size = 0
        self.limit = limit

    def write(self, data: Any) -> None:
        self.size += memoryview(data).nbytes
        if self.size > self.limit:
            raise self.Full


def _count(pickler: Any, obj: Any, limit: float) -> int:
    counter = _Counter(limit)
    try:
        pickler(counter, protocol=5).dump(obj)
    except _Counter.Full:
        pass
    return counter.size


def pickled_size(obj: Any, limit: float = float("inf")) -> int:
    """Bytes of ``obj`` as a task argument (pickle protocol 5, as dask sends it), counted
    without building the pickle; the count stops just past ``limit``."""
    try:
        return _count(pickle.Pickler, obj, limit)
    except Exception:
        import cloudpickle

        return _count(cloudpickle.CloudPickler, obj, limit)


def too_big_for_a_task(obj: Any) -> bool:
    """Whether ``obj`` pickles to more than :data:`TASK_ARGUMENT_BYTES` (it holds data)."""
    return pickled_size(obj, limit=TASK_ARGUMENT_BYTES) > TASK_ARGUMENT_BYTES


def store_array(data: Any, path: Path, chunks: tuple[int, ...] | None = None,
                scheduler: Any = None) -> Any:
    """Write ``data`` (numpy or dask) to a Zarr v3 array at ``path`` (replaced when there)
    and return it as a lazy dask array reading that store. ``scheduler``: a dask client to
    compute it on (its workers must see ``path``); default threads in this process."""
    import dask.array as da
    import zarr

    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    if chunks is None:
        chunks = (tuple(c[0] for c in data.chunks) if hasattr(data, "chunks")
                  and isinstance(data.chunks, tuple) and data.chunks
                  and isinstance(data.chunks[0], tuple)
                  else tuple(min(s, STAGE_CHUNK) for s in data.shape))
    dtype = np.float32 if np.dtype(data.dtype).kind == "f" else data.dtype
    arr = zarr.create_array(store=str(path), shape=data.shape, dtype=dtype, chunks=chunks,
                            zarr_format=3)
    if isinstance(data, np.ndarray):
        arr[...] = data.astype(dtype, copy=False)
    else:
        # on a cluster, unoptimised: the tasks keep their names for its dashboard
        da.store(data.astype(dtype), arr, lock=False,
                 **({"scheduler": "threads"} if scheduler is None else
                    {"scheduler": scheduler, "optimize_graph": False}))
    return da.from_zarr(str(path))


def stage_image(image: xr.DataArray, folder: Path, name: str) -> xr.DataArray:
    """``image`` itself when it pickles small (backed by a store), else the same image
    written to ``folder/name`` and read back lazily."""
    if not too_big_for_a_task(image):
        return image
    data = store_array(image.data, Path(folder) / name)
    return image.copy(data=data)


def persist_transform(transform: Transform, folder: Path, prefix: str = "field") -> Transform:
    """``transform`` with every displacement field held in memory written to
    ``folder/<prefix><k>`` and read back lazily (linear steps and store-backed fields are
    kept as they are)."""
    folder = Path(folder)
    count = [0]

    def persist(t: DisplacementField) -> DisplacementField:
        if not too_big_for_a_task(t):
            return t
        path = folder / f"{prefix}{count[0]}"
        count[0] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        residual = t.residual
        if residual is not None:
            residual = residual.copy(data=store_array(residual.data,
                                                      path.with_name(path.name + "r")))
        return replace(t, field=t.field.copy(data=store_array(t.field.data, path)),
                       residual=residual)

    return map_fields(transform, persist)


__all__ = ["map_fields", "persist_transform", "pickled_size", "stage_image", "store_array",
           "too_big_for_a_task"]


#: A block that must decode more stored chunks than this of one image gets a warning.
MAX_CHUNKS_PER_BLOCK = 1000


def small_chunk_warning(image: xr.DataArray, region: Any, n_blocks: int,
                        what: str) -> str | None:
    """What to tell a user whose ``image`` is stored in chunks so small that a block's
    ``region`` (voxels per axis) decodes more than :data:`MAX_CHUNKS_PER_BLOCK` of them:
    the count and the cure; None when the chunks are fine or not known."""
    stored = image.attrs.get("stored_chunks")
    if not stored:
        return None
    per_block = int(np.prod([-(-int(r) // int(c)) + 1 for r, c in zip(region, stored,
                                                                     strict=True)]))
    if per_block <= MAX_CHUNKS_PER_BLOCK:
        return None
    source = image.attrs.get("source", "the image")
    return (f"The {what} image is stored in chunks of {' × '.join(map(str, stored))} voxels: "
            f"each block reads about {per_block:,} of them ({per_block * n_blocks:,} for "
            f"{n_blocks} blocks), and reading them will dominate the run. Rewrite it once "
            f"with larger chunks (`ngffreg convert {source} NEW.ome.zarr --chunks 128`) and "
            f"register that.")

