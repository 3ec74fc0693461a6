"""Open any supported volume as a lazy, physically annotated :class:`xarray.DataArray`.

Formats: TIFF (multi-page file, folder of planes), NIfTI / NRRD / MHA / MHD (through
itk, direction included), N5, Zarr v2 and v3 arrays, OME-Zarr 0.4 / 0.5 / 0.6 (any level).
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import InputError, InputNotFoundError, MissingSpacingError, UnitError
from ..image import make_image
from ..itk_bridge import geometry_from_itk
from ..units import normalize_unit
from . import n5, tiff

ITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img", ".vtk")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def detect_format(path: Path) -> str:
    """One of ``tiff``, ``tiff-folder``, ``itk``, ``n5``, ``ome-zarr``, ``zarr``."""
    if not path.exists():
        raise InputNotFoundError(f"No such file or folder: {path}. Check the path.")
    if path.is_dir():
        if (path / "zarr.json").is_file() or (path / ".zarray").is_file() or (
            path / ".zgroup"
        ).is_file():
            return "ome-zarr" if ome_version(path) else "zarr"
        if n5.is_n5(path):
            return "n5"
        if tiff.tiff_files(path):
            return "tiff-folder"
        if not any(path.iterdir()):
            raise InputError(f"The folder {path} is empty; it holds no image data.")
        raise InputError(
            f"{path} is a folder ngffreg does not recognise: not Zarr, N5, nor a folder of TIFF "
            "planes. Point at a Zarr/N5 store or at a folder of *.tif files."
        )
    suffix = _suffix(path)
    if suffix in tiff.TIFF_SUFFIXES:
        return "tiff"
    if suffix in ITK_SUFFIXES:
        return "itk"
    raise InputError(
        f"Unknown file type {suffix!r} for {path}. Supported: TIFF, NIfTI, NRRD, MHA/MHD, "
        "N5, Zarr and OME-Zarr."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"Corrupted Zarr metadata in {path}: {exc}. Restore the file, or rewrite the store "
            "with `ngffreg convert`."
        ) from exc


def ome_version(path: Path) -> str | None:
    """The OME-Zarr version of a store, or None for plain Zarr."""
    if (path / "zarr.json").is_file():
        meta = _read_json(path / "zarr.json")
        ome = meta.get("attributes", {}).get("ome")
        if isinstance(ome, dict) and ("multiscales" in ome or "version" in ome):
            return str(ome.get("version", "0.5"))
        return None
    if (path / ".zattrs").is_file():
        attrs = _read_json(path / ".zattrs")
        ms = attrs.get("multiscales")
        if ms:
            return str(ms[0].get("version", "0.4"))
    return None


def _resolve_spacing(
    found: Any, found_unit: str | None, voxel_size: Any, unit: str | None, where: str
) -> tuple[Any, str]:
    """Pick the voxel size and unit: the user's over the file's; refuse when neither exists."""
    if voxel_size is not None:
        spacing = voxel_size
        chosen_unit = unit or found_unit
        if chosen_unit is None:
            warnings.warn(
                f"{where}: no unit given for --voxel-size; assuming micrometer. "
                "Pass --unit to be explicit.",
                stacklevel=3,
            )
            chosen_unit = "micrometer"
        return spacing, normalize_unit(chosen_unit)
    if found is None or any(v is None for v in np.atleast_1d(np.asarray(found, dtype=object))):
        raise MissingSpacingError(
            f"{where} carries no voxel size. Pass it in z, y, x order, e.g. "
            "`--voxel-size 50 40 40 --unit micrometer` "
            "(Python: voxel_size=(50, 40, 40), unit='um')."
        )
    chosen = unit or found_unit
    if chosen is None:
        raise UnitError(f"{where} has a voxel size but no unit. Pass --unit (e.g. micrometer).")
    return found, normalize_unit(chosen)


def _open_itk(path: Path, voxel_size, unit, name) -> xr.DataArray:

    from ..itk_bridge import read_image_io

    io = read_image_io(path)
    nd = io.GetNumberOfDimensions()
    if nd < 3:
        raise InputError(
            f"{path} is a {nd}-D image; a 3-D volume is needed. Stack slices into a volume first."
        )
    shape_xyz = [io.GetDimensions(i) for i in range(nd)]
    if nd == 4 and shape_xyz[3] == 1:
        nd = 3
    if nd > 4:
        raise InputError(f"{path} has {nd} dimensions; at most x, y, z and t are supported.")
    # ITK's direction matrix: column j is the physical direction of index axis j (x, y, z)
    d_xyz = np.array([io.GetDirection(j)[:3] for j in range(3)], dtype=np.float64).T
    spacing, origin, direction = geometry_from_itk(
        [io.GetSpacing(i) for i in range(3)], [io.GetOrigin(i) for i in range(3)], d_xyz)
    components = io.GetNumberOfComponents()
    dtype = _itk_dtype(io)
    shape = tuple(reversed(shape_xyz[:nd]))
    dims: tuple[str, ...] = ("t", "z", "y", "x") if nd == 4 else ("z", "y", "x")
    if components > 1:
        shape = (*shape, components)

    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, dtype.str, components == 1, shape)
    data = da.from_delayed(dask.delayed(_load_itk_pixels)(*key), shape=shape, dtype=dtype)
    if components > 1:
        data = da.moveaxis(data, -1, -4)
        dims = (*dims[:-3], "c", *dims[-3:]) if nd == 3 else ("t", "c", "z", "y", "x")
    spacing, chosen_unit = _resolve_spacing(spacing, "millimeter", voxel_size, unit, str(path))
    return make_image(
        data, spacing=spacing, origin=origin, direction=direction, unit=chosen_unit, dims=dims,
        name=name, attrs={"source": str(path), "format": "itk"},
    )


@functools.lru_cache(maxsize=4)
def _cached_itk_pixels(path: str, mtime_ns: int, size: int, dtype: str, scalar: bool,
                       shape: tuple[int, ...]) -> np.ndarray:
    import itk

    dt = np.dtype(dtype)
    # ITK's Python wrapping lacks int8 and int64 images: read those through a wider type
    wider = {"i1": itk.SS, "i8": itk.D}.get(dt.str[1:]) if scalar else None
    image = itk.imread(path, wider) if wider is not None else itk.imread(path)
    # reshape: a 4-D file with one time point is declared 3-D
    pixels = np.asarray(itk.array_from_image(image)).astype(dt, copy=False).reshape(shape)
    pixels.setflags(write=False)
    return pixels


def _load_itk_pixels(path: str, mtime_ns: int, size: int, dtype: str, scalar: bool,
                     shape: tuple[int, ...]) -> np.ndarray:
    """The pixels of an ITK file (NIfTI, NRRD, MHA), read whole: ITK cannot read part of a
    compressed file. Files up to 1 GiB are kept (read-only, the last four, keyed by path,
    modification time and size), so the many tasks that each need a region of one file
    read it once per process rather than once per task."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= _ITK_CACHE_BYTES:
        return _cached_itk_pixels(path, mtime_ns, size, dtype, scalar, shape)
    return _cached_itk_pixels.__wrapped__(path, mtime_ns, size, dtype, scalar, shape)


_ITK_CACHE_BYTES = 2**30


def _itk_dtype(io) -> np.dtype:
    names = {
        "unsigned_char": "u1", "char": "i1", "unsigned_short": "u2", "short": "i2",
        "unsigned_int": "u4", "int": "i4", "unsigned_long": "u8", "long": "i8",
        "unsigned_long_long": "u8", "long_long": "i8", "float": "f4", "double": "f8",
    }
    return np.dtype(names[io.GetComponentTypeAsString(io.GetComponentType())])


def _read_multiscales(path: Path):
    import ngff_zarr

    try:
        return ngff_zarr.from_ngff_zarr(str(path))
    except Exception as exc:  # ngff-zarr and zarrista raise many types for broken metadata
        raise InputError(
            f"Cannot read the OME-Zarr metadata of {path}: {exc}. The store may be corrupted; "
            "rewrite it with `ngffreg convert`."
        ) from exc


def _ome_level(path: Path, ms, level: int, voxel_size, unit, name) -> xr.DataArray:
    """Level ``level`` of parsed OME-Zarr multiscales ``ms`` as a physical image."""
    img = ms.images[level]
    dims = tuple(img.dims)
    if not set(("z", "y", "x")) <= set(dims):
        raise InputError(
            f"{path} has axes {dims}; a 3-D volume with z, y and x axes is needed."
        )
    spatial = ("z", "y", "x")
    found = [img.scale.get(d) for d in spatial]
    units_found = {(img.axes_units or {}).get(d) for d in spatial} - {None}
    if len(units_found) > 1:
        raise UnitError(f"{path} mixes units {sorted(units_found)} across z, y, x.")
    spacing, chosen_unit = _resolve_spacing(
        found, units_found.pop() if units_found else None, voxel_size, unit, str(path)
    )
    origin = [img.translation.get(d, 0.0) for d in spatial]
    # Read through zarr itself (not ngff-zarr's zarrista arrays): a dask array over a
    # zarr.Array pickles by its path, so tasks can ship to other processes and machines.
    data = _zarr_dask(path / ms.metadata.datasets[level].path, img.data)
    order = [dims.index(d) for d in ("t", "c", "z", "y", "x") if d in dims]
    data = data.transpose(order)
    out_dims = tuple(dims[i] for i in order)
    return make_image(
        data, spacing=spacing, origin=origin, unit=chosen_unit, dims=out_dims, name=name,
        attrs={
            "source": str(path),
            "format": f"ome-zarr-{ome_version(path)}",
            "level": level,
            "array_path": ms.metadata.datasets[level].path,
        },
    )


def _zarr_dask(array_path: Path, fallback: Any) -> Any:
    import zarr

    try:
        arr = zarr.open_array(str(array_path), mode="r")
    except Exception:  # a layout zarr cannot open directly: keep ngff-zarr's reader
        return fallback
    if tuple(arr.shape) != tuple(fallback.shape):
        return fallback
    return da.from_zarr(arr, chunks=arr.chunks)


def _open_ome_zarr(path: Path, level: int, voxel_size, unit, name) -> xr.DataArray:
    ms = _read_multiscales(path)
    if not 0 <= level < len(ms.images):
        raise InputError(f"{path} has levels 0–{len(ms.images) - 1}; level {level} does not exist.")
    return _ome_level(path, ms, level, voxel_size, unit, name)


def _open_zarr_array(path: Path, voxel_size, unit, name) -> xr.DataArray:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for broken metadata
        raise InputError(
            f"Cannot open the Zarr store {path}: {exc}. The metadata may be corrupted."
        ) from exc
    if isinstance(node, zarr.Group):
        arrays = sorted(k for k, _ in node.arrays())
        example = path / (arrays[0] if arrays else "ARRAY")
        raise InputError(
            f"{path} is a Zarr group without OME-NGFF metadata; open one of its arrays "
            f"({', '.join(arrays) or 'none'}) by path, e.g. {example}."
        )
    data = da.from_zarr(node)
    spacing, chosen_unit = _resolve_spacing(None, None, voxel_size, unit, str(path))
    return make_image(
        data, spacing=spacing, unit=chosen_unit, name=name,
        attrs={"source": str(path), "format": f"zarr-v{node.metadata.zarr_format}"},
    )


def open_image(
    path: str | Path,
    *,
    voxel_size: Any = None,
    unit: str | None = None,
    level: int = 0,
    name: str = "image",
) -> xr.DataArray:
    """Open a volume lazily as a physically annotated image (dims ``z, y, x``).

    Parameters
    ----------
    path : str or Path
        A TIFF file or a folder of TIFF planes, a NIfTI / NRRD / MHA / MHD file, an N5
        dataset or group, a Zarr array, or an OME-Zarr store (0.4, 0.5, 0.6).
    voxel_size : float or sequence of 3 floats, optional
        Voxel size in z, y, x order. Required where the file has none (plain TIFF, Zarr);
        where it has one, the value given here wins.
    unit : str, optional
        Length unit of ``voxel_size`` (default: the file's, else micrometer with a warning).
    level : int
        Pyramid level to open for OME-Zarr and N5 multiscale groups.
    name : str
        Name of the returned DataArray.

    Returns
    -------
    xarray.DataArray
        Lazy (dask) data; nothing is read until it is computed.

    Raises
    ------
    InputNotFoundError, InputError, MissingSpacingError, UnitError
        With a message that says what to do.
    """
    path = Path(path).expanduser()
    fmt = detect_format(path)
    if level and fmt in ("itk", "zarr", "tiff", "tiff-folder"):
        raise InputError(
            f"{path} ({fmt}) holds a single resolution level; level {level} does not exist. "
            "Use level=0, or convert it to a pyramid with `ngffreg convert` first."
        )
    if fmt == "itk":
        return _open_itk(path, voxel_size, unit, name)
    if fmt == "ome-zarr":
        return _open_ome_zarr(path, level, voxel_size, unit, name)
    if fmt == "zarr":
        return _open_zarr_array(path, voxel_size, unit, name)
    if fmt == "n5":
        data, found, found_unit = n5.open_n5(path, level=level)
        dims: tuple[str, ...] = ("z", "y", "x")
    elif fmt == "tiff-folder":
        data, dims, vs = tiff.read_tiff_folder(path)
        found, found_unit = (vs.spacing, vs.unit) if vs else (None, None)
    else:
        data, dims, vs = tiff.read_tiff_file(path)
        found, found_unit = (vs.spacing, vs.unit) if vs else (None, None)
    if data.ndim < 3:
        raise InputError(f"{path} holds {data.ndim}-D data; a 3-D volume is needed.")
    spacing, chosen_unit = _resolve_spacing(found, found_unit, voxel_size, unit, str(path))
    return make_image(
        data, spacing=spacing, unit=chosen_unit, dims=dims, name=name,
        attrs={"source": str(path), "format": fmt},
    )


def open_levels(
    path: str | Path,
    *,
    voxel_size: Any = None,
    unit: str | None = None,
    name: str = "image",
) -> list[xr.DataArray]:
    """Every resolution level of a volume, finest first, lazily (see :func:`open_image`).

    An OME-Zarr store is parsed once for all its levels; any other format has one level.
    """
    path = Path(path).expanduser()
    if detect_format(path) != "ome-zarr":
        return [open_image(path, voxel_size=voxel_size, unit=unit, name=name)]
    ms = _read_multiscales(path)
    return [
        _ome_level(path, ms, k, voxel_size, unit, name) for k in range(len(ms.images))
    ]
