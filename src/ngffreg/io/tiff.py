"""TIFF readers: one multi-page file, or a folder of one file per plane (in name order).

Both are lazy: a dask chunk reads only its own planes. The voxel size comes from OME-TIFF
or ImageJ metadata when present, else from the caller.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from ..errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
_PLANES_TARGET_BYTES = 32 * 2**20


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def tiff_files(folder: Path) -> list[Path]:
    """TIFF files of a folder in natural name order (``image_2`` before ``image_10``)."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()),
        key=_natural_key,
    )


@dataclass(frozen=True)
class TiffVoxelSize:
    """Voxel size found in TIFF metadata (z, y, x); entries are None where absent."""

    spacing: tuple[float | None, float | None, float | None]
    unit: str | None
    source: str


def _ome_voxel_size(tf: tifffile.TiffFile) -> TiffVoxelSize | None:
    if not tf.is_ome or not tf.ome_metadata:
        return None
    root = ET.fromstring(tf.ome_metadata)
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    units = set()
    for ax in ("Z", "Y", "X"):
        v = pixels.get(f"PhysicalSize{ax}")
        sizes.append(float(v) if v is not None else None)
        if v is not None:
            units.add(pixels.get(f"PhysicalSize{ax}Unit", "µm"))
    if all(s is None for s in sizes):
        return None
    if len(units) > 1:
        raise InputError(f"OME-TIFF voxel sizes use mixed units {sorted(units)}.")
    return TiffVoxelSize(tuple(sizes), units.pop() if units else None, "OME-TIFF")  # type: ignore[arg-type]


def _imagej_voxel_size(tf: tifffile.TiffFile) -> TiffVoxelSize | None:
    ij = tf.imagej_metadata
    if not ij:
        return None
    page = tf.pages[0]
    yx: list[float | None] = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        if t is None:
            yx.append(None)
            continue
        num, den = t.value
        yx.append(den / num if num else None)
    z = ij.get("spacing")
    unit = ij.get("unit")
    if unit in (None, "pixel", ""):  # ImageJ's "pixel" (or no unit): uncalibrated
        return None
    return TiffVoxelSize((float(z) if z else None, *yx), unit or None, "ImageJ")  # type: ignore[arg-type]


def tiff_voxel_size(path: Path) -> TiffVoxelSize | None:
    """Voxel size from OME or ImageJ metadata of a TIFF file, or None."""
    with tifffile.TiffFile(path) as tf:
        return _ome_voxel_size(tf) or _imagej_voxel_size(tf)


class _PlaneStack:
    """Array-like over TIFF planes; ``__getitem__`` reads only the planes asked for."""

    def __init__(self, files: list[Path] | None, path: Path | None, shape, dtype):
        self.files, self.path = files, path
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def _plane(self, i: int, tf: tifffile.TiffFile | None) -> np.ndarray:
        if self.files is not None:
            plane = tifffile.imread(self.files[i])
        else:
            plane = tf.pages[i].asarray()  # type: ignore[union-attr]
        if plane.shape != self.shape[1:]:
            name = self.files[i] if self.files is not None else f"{self.path} page {i}"
            raise InputError(
                f"TIFF plane {name} has shape {plane.shape}, the others {self.shape[1:]}; "
                "every plane of a stack must have the same shape."
            )
        return plane

    def __getitem__(self, key: Any) -> np.ndarray:
        # dask fuses later indexing into this call: keys may be ints or index arrays too
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        zs = np.arange(self.shape[0])[key[0]]
        out = np.empty((np.size(zs), *self.shape[1:]), self.dtype)
        tf = tifffile.TiffFile(self.path) if self.files is None else None
        try:
            for k, i in enumerate(np.atleast_1d(zs)):
                out[k] = self._plane(int(i), tf)
        finally:
            if tf is not None:
                tf.close()
        if np.ndim(zs) == 0:
            out = out[0]
        return _index_orthogonal(out, key[1:], first_axis=np.ndim(zs))


def _index_orthogonal(arr: np.ndarray, key: tuple[Any, ...], first_axis: int) -> np.ndarray:
    """Apply ``key`` (one entry per axis from ``first_axis`` on) axis by axis, last axis
    first, so index arrays select orthogonally as dask expects."""
    for ax in reversed(range(len(key))):
        k = key[ax]
        if not (isinstance(k, slice) and k == slice(None)):
            arr = arr[(slice(None),) * (first_axis + ax) + (k,)]
    return arr


def _planes_per_chunk(plane_shape: tuple[int, ...], dtype: np.dtype) -> int:
    plane_bytes = int(np.prod(plane_shape)) * dtype.itemsize
    return max(1, _PLANES_TARGET_BYTES // max(plane_bytes, 1))


def read_tiff_folder(folder: Path) -> tuple[da.Array, tuple[str, ...], TiffVoxelSize | None]:
    """A folder of 2-D TIFF planes as a lazy (z, y, x) dask array."""
    files = tiff_files(folder)
    if not files:
        raise InputError(
            f"The folder {folder} holds no TIFF files (*.tif, *.tiff). Point at a folder of "
            "one TIFF file per plane, or at a single multi-page TIFF."
        )
    with tifffile.TiffFile(files[0]) as tf:
        page = tf.pages[0]
        shape, dtype = page.shape, page.dtype
        n_pages = len(tf.pages)
    if len(shape) != 2 or n_pages != 1:
        raise InputError(
            f"{files[0]} holds {n_pages} page(s) of shape {shape}; a TIFF folder must hold one "
            "2-D plane per file. Open a multi-page file directly instead."
        )
    stack = _PlaneStack(files, None, (len(files), *shape), dtype)
    arr = da.from_array(
        stack, chunks=(_planes_per_chunk(shape, dtype), *shape), asarray=False,
        name=f"tiff-folder-{tifffile.__version__}-{folder.resolve()}-{len(files)}",
    )
    return arr, ("z", "y", "x"), tiff_voxel_size(files[0])


def read_tiff_file(path: Path) -> tuple[da.Array, tuple[str, ...], TiffVoxelSize | None]:
    """A multi-page (or 3-D series) TIFF file as a lazy dask array."""
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        shape, dtype, axes = series.shape, series.dtype, series.axes
        n_pages = len(tf.pages)
        page_shape = tf.pages[0].shape
    if len(shape) < 3:
        raise InputError(
            f"{path} holds one 2-D image of shape {shape}; a 3-D volume is needed. "
            "Give a multi-page TIFF or a folder of planes."
        )
    if n_pages == int(np.prod(shape[:-2])) and tuple(page_shape) == tuple(shape[-2:]):
        # one page per plane: read planes lazily, any leading axes flattened into z
        stack = _PlaneStack(None, path, (n_pages, *page_shape), dtype)
        arr = da.from_array(
            stack, chunks=(_planes_per_chunk(page_shape, dtype), *page_shape), asarray=False,
            name=f"tiff-file-{path.resolve()}-{path.stat().st_mtime_ns}",
        )
        dims: tuple[str, ...] = ("z", "y", "x")
        if len(shape) > 3:
            arr, dims = _to_ngff_axis_order(arr.reshape(shape), axes)
        return arr, dims, tiff_voxel_size(path)
    # pages hold volumes or tiles: fall back to the series as one chunk
    data = da.from_delayed(_read_series(path), shape=shape, dtype=dtype)
    if len(shape) > 3:
        return (*_to_ngff_axis_order(data, axes), tiff_voxel_size(path))
    return data, ("z", "y", "x"), tiff_voxel_size(path)


def _to_ngff_axis_order(arr: da.Array, axes: str) -> tuple[da.Array, tuple[str, ...]]:
    """Reorder tifffile axes (e.g. ImageJ ``TZCYX``) into NGFF order ``t, c, z, y, x``."""
    axes = axes.upper().replace("I", "Z").replace("Q", "Z")
    if sorted(axes) != sorted(set(axes)) or not set(axes) <= set("TCZYX") or axes[-2:] != "YX":
        raise InputError(f"TIFF axes {axes!r} cannot be mapped to (t, c, z, y, x).")
    order = [axes.index(a) for a in "TCZYX" if a in axes]
    return arr.transpose(order), tuple(a.lower() for a in "TCZYX" if a in axes)


def _read_series(path: Path):
    import dask

    return dask.delayed(tifffile.imread)(path)
