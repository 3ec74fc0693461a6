"""Open any supported volume as a lazy, physically annotated :class:`xarray.DataArray`.

Formats: TIFF (multi-page file, folder of planes), NIfTI / NRRD / MHA / MHD (through
itk, direction included), N5, Zarr v2 and v3 arrays, OME-Zarr 0.4 / 0.5 / 0.6 (any level).
An OME-Zarr 0.6 *scene* (the group above its images, as ngffreg's registered stores are)
opens as the image it holds (:func:`scene_image`).
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
from .chunks import stored_chunks, task_chunks

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


def _inside_store(ref: str) -> bool:
    return bool(ref) and not ref.startswith("/") and ".." not in ref.split("/")


def scene_paths(scene: dict[str, Any]) -> list[str]:
    """The groups a scene's transformations name by ``path`` (``input``/``output``), in
    order, each once; paths that leave the store are left out."""
    found: list[str] = []
    for ct in scene.get("coordinateTransformations") or []:
        for end in (ct.get("input"), ct.get("output")) if isinstance(ct, dict) else ():
            ref = end.get("path") if isinstance(end, dict) else None
            if isinstance(ref, str) and _inside_store(ref) and ref.strip("/") not in found:
                found.append(ref.strip("/"))
    return found


def scene_image(path: Path) -> Path:
    """The image group an OME-Zarr store opens as: the store itself when it is an image;
    for an OME-Zarr 0.6 scene, the image it names in its ``ngffreg`` attributes, else the
    only image its transformations reference."""
    meta_path = path / "zarr.json"
    if not meta_path.is_file():
        return path
    attrs = _read_json(meta_path).get("attributes", {})
    ome = attrs.get("ome")
    if not isinstance(ome, dict) or "multiscales" in ome or not isinstance(
            ome.get("scene"), dict):
        return path
    named = (attrs.get("ngffreg") or {}).get("image")
    found = list(dict.fromkeys(([named] if isinstance(named, str) else [])
                               + scene_paths(ome["scene"])))
    images = [p for p in found if _inside_store(p) and ome_version(path / p)]
    if len(images) == 1 or (images and images[0] == named):
        return path / images[0]
    raise InputError(
        f"{path} is an OME-Zarr scene holding {len(images) or 'no'} images "
        f"({', '.join(images) or 'none referenced'}); open one of them: {path}/<image>.")


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
    origin = [img.translation.get(d, 0.0) for d in spatial]
    axes_units = dict(img.axes_units or {})
    direction = None
    placed = _placement(path, ms)
    if placed is not None:  # an oblique image (OME-Zarr 0.6): grid → physical affine
        transform, system = placed
        found, origin, direction = _place(path, transform, dims, found, origin)
        axes_units = {a.name: a.unit for a in system.axes if a.unit} or axes_units
    units_found = {axes_units.get(d) for d in spatial} - {None}
    if len(units_found) > 1:
        raise UnitError(f"{path} mixes units {sorted(units_found)} across z, y, x.")
    spacing, chosen_unit = _resolve_spacing(
        found, units_found.pop() if units_found else None, voxel_size, unit, str(path)
    )
    # Read through zarr itself (not ngff-zarr's zarrista arrays): a dask array over a
    # zarr.Array pickles by its path, so tasks can ship to other processes and machines.
    data, stored = _zarr_dask(path / ms.metadata.datasets[level].path, img.data)
    order = [dims.index(d) for d in ("t", "c", "z", "y", "x") if d in dims]
    data = data.transpose(order)
    out_dims = tuple(dims[i] for i in order)
    return make_image(
        data, spacing=spacing, origin=origin, direction=direction, unit=chosen_unit,
        dims=out_dims, name=name,
        attrs={
            "source": str(path),
            "format": f"ome-zarr-{ome_version(path)}",
            "level": level,
            "array_path": ms.metadata.datasets[level].path,
            **stored,
        },
    )


def _system_name(ref: Any) -> str | None:
    """The name of the coordinate system of this multiscales that an ngff-zarr ``input`` or
    ``output`` names (None for an array path, or a system of another group)."""
    if ref is None or getattr(ref, "path", None):
        return None
    return getattr(ref, "name", None)


def _written_axis_aligned(ms) -> bool:
    """Whether ngffreg wrote the store from an image whose direction was a signed
    permutation (its ``ngffreg`` attributes say so): its datasets alone then place it, and a
    transform on its multiscales relates it to another space (a registration)."""
    from ..image import is_signed_permutation

    attrs = (ms.root_attributes or {}).get("ngffreg")
    found = attrs.get("source_direction_zyx") if isinstance(attrs, dict) else None
    try:
        return found is not None and is_signed_permutation(np.asarray(found, dtype=np.float64))
    except (TypeError, ValueError):
        return False


def _placement(path: Path, ms) -> tuple[Any, Any] | None:
    """The transform on the multiscales that places the image in its own physical
    coordinate system, and that system; None when the datasets alone place it.

    The image's own system is, as neuroglancer reads it, the last one listed; here, the
    last one listed that the intrinsic system (the one the datasets map to) reaches by one
    transform of the multiscales. ngffreg writes an oblique image so (``grid`` → physical).
    """
    md = ms.metadata
    systems = list(getattr(md, "coordinateSystems", None) or [])
    transforms = list(getattr(md, "coordinateTransformations", None) or [])
    if not systems or not transforms or _written_axis_aligned(ms):
        return None
    inner = md.intrinsic_coordinate_system.name
    reached: dict[str, list[Any]] = {}
    for t in transforms:
        if _system_name(t.input) == inner and _system_name(t.output) not in (None, inner):
            reached.setdefault(_system_name(t.output), []).append(t)
    for cs in reversed(systems):
        if cs.name in reached:
            if len(reached[cs.name]) > 1:
                raise InputError(
                    f"{path} holds {len(reached[cs.name])} transforms from {inner!r} to "
                    f"{cs.name!r}; ngffreg cannot tell which one places the image."
                )
            return reached[cs.name][0], cs
    return None


def _homogeneous(t: Any, n: int, path: Path) -> np.ndarray:
    """The (n+1)×(n+1) homogeneous matrix of an ngff-zarr 0.6 linear transform over ``n``
    axes: identity, scale, translation, rotation, affine, or a sequence of them."""
    kind = getattr(t, "type", None)
    m = np.eye(n + 1)
    try:
        if kind == "scale":
            m[:n, :n] = np.diag(np.asarray(t.scale, dtype=np.float64).reshape(n))
        elif kind == "translation":
            m[:n, n] = np.asarray(t.translation, dtype=np.float64).reshape(n)
        elif kind == "rotation":
            m[:n, :n] = np.asarray(t.rotation, dtype=np.float64).reshape(n, n)
        elif kind == "affine":
            m[:n] = np.asarray(t.affine, dtype=np.float64).reshape(n, n + 1)
        elif kind == "sequence":
            for step in t.transformations:
                m = _homogeneous(step, n, path) @ m
        elif kind != "identity":
            raise InputError(
                f"{path} places its image with a {kind!r} transform, which ngffreg cannot "
                "represent as an image geometry (origin, spacing, direction). Resample it "
                "onto its grid first."
            )
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{path}: the {kind!r} transform that places the image is malformed for "
            f"{n} axes: {exc}"
        ) from exc
    if not np.all(np.isfinite(m)):
        raise InputError(f"{path}: the transform that places the image is not finite.")
    return m


def _place(path: Path, transform: Any, dims: tuple[str, ...], scale: list, translation: list):
    """Spacing, origin and direction (z, y, x) of a level whose grid (``scale`` and
    ``translation``) ``transform`` maps to physical space. The transform must leave axes
    other than z, y, x alone and be a rotation with a positive scale per axis (no shear)."""
    n = len(dims)
    m = _homogeneous(transform, n, path)
    where = [dims.index(d) for d in ("z", "y", "x")]
    rest = [i for i in range(n) if i not in where]
    if rest and not (np.allclose(m[rest], np.eye(n + 1)[rest])
                     and np.allclose(m[np.ix_(where, rest)], 0.0)):
        raise InputError(
            f"{path} places its image with a transform that mixes "
            f"{[dims[i] for i in rest]} with z, y, x; ngffreg cannot represent that."
        )
    linear, offset = m[np.ix_(where, where)], m[where, n]
    stretch = np.linalg.norm(linear, axis=0)
    if np.any(stretch == 0) or not np.allclose(
            (linear / stretch).T @ (linear / stretch), np.eye(3), atol=1e-6):
        raise InputError(
            f"{path} places its image with the affine {np.round(linear, 6).tolist()} "
            "(z, y, x), which is not a rotation with a scale per axis (it shears): ngffreg "
            "images carry an orthonormal direction. Resample the image onto an orthogonal "
            "grid first."
        )
    spacing = [None if s is None else float(s) * k for s, k in zip(scale, stretch, strict=True)]
    origin = offset + linear @ np.asarray(translation, dtype=np.float64)
    return spacing, origin, linear / stretch


def _zarr_dask(array_path: Path, fallback: Any) -> tuple[Any, dict[str, Any]]:
    """The array at ``array_path`` read through zarr in tasks of whole stored chunks, with
    its :func:`~ngffreg.io.chunks.stored_chunks` attribute; ``fallback`` and no attribute
    where zarr cannot open it as that array."""
    import zarr

    try:
        arr = zarr.open_array(str(array_path), mode="r")
    except Exception:  # a layout zarr cannot open directly: keep ngff-zarr's reader
        return fallback, {}
    if tuple(arr.shape) != tuple(fallback.shape):
        return fallback, {}
    return (da.from_zarr(arr, chunks=task_chunks(arr.shards or arr.chunks, arr.shape)),
            stored_chunks(arr.chunks))


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
    data = da.from_zarr(node, chunks=task_chunks(node.shards or node.chunks, node.shape))
    spacing, chosen_unit = _resolve_spacing(None, None, voxel_size, unit, str(path))
    return make_image(
        data, spacing=spacing, unit=chosen_unit, name=name,
        attrs={"source": str(path), "format": f"zarr-v{node.metadata.zarr_format}",
               **stored_chunks(node.chunks)},
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
        return _open_ome_zarr(scene_image(path), level, voxel_size, unit, name)
    if fmt == "zarr":
        return _open_zarr_array(path, voxel_size, unit, name)
    extra: dict[str, Any] = {}
    if fmt == "n5":
        data, found, found_unit, stored = n5.open_n5(path, level=level)
        dims: tuple[str, ...] = ("z", "y", "x")
        extra = stored_chunks(stored)
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
        attrs={"source": str(path), "format": fmt, **extra},
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
    path = scene_image(path)
    ms = _read_multiscales(path)
    return [
        _ome_level(path, ms, k, voxel_size, unit, name) for k in range(len(ms.images))
    ]
