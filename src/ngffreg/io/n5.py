"""N5 datasets, read lazily block by block (zarr 3 no longer reads N5).

N5 stores dimensions in x, y, z order (column-major) and each block as
``<root>/<dataset>/<i>/<j>/<k>`` with a big-endian header. Voxel size comes from
``pixelResolution`` (``{"dimensions": [x, y, z], "unit": "um"}``) or ``resolution``,
multiplied by ``downsamplingFactors`` where present (BigDataViewer / n5-viewer layout).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InputError
from .chunks import task_chunks

_DTYPES = {
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "float32": "f4", "float64": "f8",
}


def is_n5(path: Path) -> bool:
    """Whether ``path`` is an N5 container, group or dataset."""
    return (path / "attributes.json").is_file()


def read_attributes(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "attributes.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"Corrupted N5 metadata in {path / 'attributes.json'}: {exc}. "
            "Restore the file or rewrite the dataset."
        ) from exc


def _decompress(raw: bytes, compression: dict[str, Any]) -> bytes:
    kind = compression.get("type", "raw")
    if kind == "raw":
        return raw
    if kind == "gzip":
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else zlib.decompress(raw)
    if kind == "bzip2":
        return bz2.decompress(raw)
    if kind == "xz":
        return lzma.decompress(raw)
    if kind in ("blosc", "zstd"):
        import numcodecs

        codec = numcodecs.Blosc() if kind == "blosc" else numcodecs.Zstd()
        return bytes(codec.decode(raw))
    raise InputError(
        f"N5 compression {kind!r} is not supported (raw, gzip, bzip2, xz, blosc, zstd)."
    )


class N5Array:
    """Array-like over one N5 dataset, in numpy (z, y, x) order."""

    def __init__(self, path: Path, attrs: dict[str, Any]):
        try:
            self.dims_xyz = [int(v) for v in attrs["dimensions"]]
            self.block_xyz = [int(v) for v in attrs["blockSize"]]
            self._stored = np.dtype(">" + _DTYPES[attrs["dataType"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"N5 dataset {path} has incomplete metadata "
                f"(dimensions, blockSize, dataType): {exc}."
            ) from exc
        self.dtype = self._stored.newbyteorder("=")
        self.path, self.compression = path, attrs.get("compression", {"type": "raw"})
        self.shape = tuple(reversed(self.dims_xyz))
        self.ndim = len(self.shape)
        self.chunks = tuple(reversed(self.block_xyz))

    def read_block(self, grid_xyz: tuple[int, ...]) -> np.ndarray:
        """One block in (z, y, x) order, zero-filled where the block file is absent."""
        expected = [
            min(b, d - g * b)
            for g, b, d in zip(grid_xyz, self.block_xyz, self.dims_xyz, strict=True)
        ]
        f = self.path.joinpath(*map(str, grid_xyz))
        if not f.is_file():
            return np.zeros(tuple(reversed(expected)), self.dtype)
        raw = f.read_bytes()
        mode, nd = struct.unpack(">HH", raw[:4])
        size = struct.unpack(f">{nd}I", raw[4 : 4 + 4 * nd])
        offset = 4 + 4 * nd + (4 if mode == 1 else 0)
        data = _decompress(raw[offset:], self.compression)
        n = int(np.prod(size))
        block = np.frombuffer(data, self._stored, count=n).reshape(tuple(reversed(size)))
        return block.astype(self.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        # dask fuses later indexing into this call: keys may be ints or index arrays too;
        # read the bounding box of each axis' selection, then index it axis by axis
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        start, stop, rest = [], [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice) and k.step in (None, 1):
                a, b, _ = k.indices(n)
                start.append(a)
                stop.append(max(a, b))
                rest.append(slice(None))
            else:
                idx = np.arange(n)[k]
                a = int(idx.min()) if idx.size else 0
                start.append(a)
                stop.append(int(idx.max()) + 1 if idx.size else 0)
                rest.append(idx - a)
        out = self._read_box(start, stop)
        for ax in reversed(range(self.ndim)):
            if not isinstance(rest[ax], slice):
                out = out[(slice(None),) * ax + (rest[ax],)]
        return out

    def _read_box(self, start: list[int], stop: list[int]) -> np.ndarray:
        out = np.zeros([b - a for a, b in zip(start, stop, strict=True)], self.dtype)
        if out.size == 0:
            return out
        first = [a // c for a, c in zip(start, self.chunks, strict=True)]
        last = [(b - 1) // c for b, c in zip(stop, self.chunks, strict=True)]
        for idx in np.ndindex(*[l_ - f + 1 for f, l_ in zip(first, last, strict=True)]):
            g = [f + i for f, i in zip(first, idx, strict=True)]
            block = self.read_block(tuple(reversed(g)))
            lo = [gi * c for gi, c in zip(g, self.chunks, strict=True)]
            src, dst = [], []
            for a, b, l0, n in zip(start, stop, lo, block.shape, strict=True):
                s0, s1 = max(a, l0), min(b, l0 + n)
                src.append(slice(s0 - l0, s1 - l0))
                dst.append(slice(s0 - a, s1 - a))
            out[tuple(dst)] = block[tuple(src)]
        return out


def n5_voxel_size(attrs: dict[str, Any]) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size (z, y, x) and unit from N5 attributes, or (None, None)."""
    res = attrs.get("pixelResolution")
    unit = None
    if isinstance(res, dict):
        values, unit = res.get("dimensions"), res.get("unit")
    elif isinstance(res, list):
        values = res
    else:
        values = attrs.get("resolution")
    unit = unit or attrs.get("unit") or attrs.get("units")
    if isinstance(unit, list):
        unit = unit[0] if len(set(unit)) == 1 else None
    if values is None:
        return None, unit
    values = [float(v) for v in values]
    factors = attrs.get("downsamplingFactors") or [1] * len(values)
    values = [v * float(f) for v, f in zip(values, factors, strict=False)]
    return tuple(reversed(values)), unit


def open_n5(path: Path, *, level: int = 0
            ) -> tuple[da.Array, tuple[float, ...] | None, str | None, tuple[int, ...]]:
    """Open an N5 dataset (or level ``s<level>`` of an N5 multiscale group) lazily.

    Returns the (z, y, x) dask array (tasks of whole stored blocks, at least
    :data:`~ngffreg.io.chunks.MIN_TASK_EDGE` voxels per axis), voxel size (z, y, x) or None,
    the unit or None, and the stored block shape (z, y, x).
    """
    attrs = read_attributes(path)
    if "dimensions" in attrs and level:
        raise InputError(
            f"{path} is a single N5 dataset; level {level} does not exist. Open its multiscale "
            "group (the folder holding s0, s1, …) to choose a level."
        )
    if "dimensions" not in attrs:
        sub = path / f"s{level}"
        if not is_n5(sub):
            children = sorted(p.name for p in path.iterdir() if is_n5(p))
            raise InputError(
                f"{path} is an N5 group without dataset s{level}; open one of its datasets "
                f"({', '.join(children) or 'none found'}) directly."
            )
        group_attrs = attrs
        path, attrs = sub, read_attributes(sub)
        if "pixelResolution" not in attrs and "resolution" not in attrs:
            inherited = {k: v for k, v in group_attrs.items() if k != "downsamplingFactors"}
            attrs = {**inherited, **attrs}
    arr = N5Array(path, attrs)
    data = da.from_array(arr, chunks=task_chunks(arr.chunks, arr.shape), asarray=False,
                         name=f"n5-{path.resolve()}")
    spacing, unit = n5_voxel_size(attrs)
    return data, spacing, unit, arr.chunks
