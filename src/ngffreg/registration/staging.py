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

from ..transforms.model import Bijection, DisplacementField, Sequence, Transform

#: An argument of a block task larger than this (pickled) is written to the work folder.
TASK_ARGUMENT_BYTES = 256 * 2**10
#: Chunk edge (voxels) of staged arrays.
STAGE_CHUNK = 128


def pickled_size(obj: Any) -> int:
    """Bytes of ``obj`` as a task argument (pickle protocol 5, as dask sends it)."""
    try:
        return len(pickle.dumps(obj, protocol=5))
    except Exception:
        import cloudpickle

        return len(cloudpickle.dumps(obj, protocol=5))


def store_array(data: Any, path: Path, chunks: tuple[int, ...] | None = None) -> Any:
    """Write ``data`` (numpy or dask) to a Zarr v3 array at ``path`` (replaced when there)
    and return it as a lazy dask array reading that store."""
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
        da.store(data.astype(dtype), arr, lock=False, scheduler="threads")
    return da.from_zarr(str(path))


def stage_image(image: xr.DataArray, folder: Path, name: str) -> xr.DataArray:
    """``image`` itself when it pickles small (backed by a store), else the same image
    written to ``folder/name`` and read back lazily."""
    if pickled_size(image) <= TASK_ARGUMENT_BYTES:
        return image
    data = store_array(image.data, Path(folder) / name)
    return image.copy(data=data)


def _in_memory(field: DisplacementField) -> bool:
    return pickled_size(field) > TASK_ARGUMENT_BYTES


def persist_transform(transform: Transform, folder: Path, prefix: str = "field") -> Transform:
    """``transform`` with every displacement field held in memory written to
    ``folder/<prefix><k>`` and read back lazily (linear steps and store-backed fields are
    kept as they are)."""
    folder = Path(folder)
    count = [0]

    def walk(t: Transform) -> Transform:
        if isinstance(t, Sequence):
            return replace(t, transforms=tuple(walk(s) for s in t.transforms))
        if isinstance(t, Bijection):
            return replace(t, forward=walk(t.forward),
                           inverse_transform=walk(t.inverse_transform))
        if isinstance(t, DisplacementField) and _in_memory(t):
            path = folder / f"{prefix}{count[0]}"
            count[0] += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            residual = t.residual
            if residual is not None:
                residual = residual.copy(data=store_array(residual.data,
                                                          path.with_name(path.name + "r")))
            return replace(t, field=t.field.copy(data=store_array(t.field.data, path)),
                           residual=residual)
        return t

    return walk(transform)


__all__ = ["persist_transform", "pickled_size", "stage_image", "store_array"]
