"""Multiscale pyramids: :class:`xarray.DataTree` in the multiscale-spatial-image layout.

``/scale0/<name>`` is the full-resolution image, ``/scale1/<name>`` the next level, …
Levels are built lazily, one from the previous, with an anti-aliasing filter. Factors are
per axis: an axis much finer than the coarsest one is halved alone until the others catch
up, so an anisotropic volume becomes more isotropic with each level instead of staying as
anisotropic as it started. :func:`image_levels` gives the levels of whatever an image comes
as (a path, an image, a pyramid, a list of levels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from .errors import InputError
from .image import SPATIAL_DIMS, spacing
from .units import parse_bytes

Method = Literal["mean", "gaussian", "nearest"]
DEFAULT_CHUNKS = 128
_ANISOTROPY = math.sqrt(2.0)


def level_factors(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    *,
    n_levels: int | None = None,
    min_size: int = 32,
) -> list[tuple[int, int, int]]:
    """Incremental downsampling factors (z, y, x) from each level to the next.

    Each level halves the axes whose spacing is at most ``max_spacing / sqrt(2)``; when no
    axis is that much finer, it halves them all. An axis is never halved below
    ``min_size`` voxels. Without ``n_levels``, levels are added until no axis can be halved.
    """
    shape = np.asarray(shape, dtype=np.int64)
    sp = np.asarray(voxel_size, dtype=np.float64)
    out: list[tuple[int, int, int]] = []
    while n_levels is None or len(out) < n_levels - 1:
        can = shape >= 2 * min_size
        if not can.any():
            break
        fine = can & (sp * _ANISOTROPY <= sp[can].max())
        halve = fine if fine.any() else can
        f = np.where(halve, 2, 1)
        out.append(tuple(int(v) for v in f))  # type: ignore[arg-type]
        shape, sp = shape // f, sp * f
    return out


def _aligned(arr: da.Array, axes: Sequence[int], factors: Sequence[int]) -> da.Array:
    """Trim to whole blocks and rechunk so every chunk holds whole ``factors`` blocks."""
    trim = [slice(None)] * arr.ndim
    chunks: dict[int, int] = {}
    for ax, f in zip(axes, factors, strict=True):
        n = arr.shape[ax] // f * f
        trim[ax] = slice(0, n)
        c = max(f, arr.chunksize[ax] // f * f)
        chunks[ax] = min(c, n)
    return arr[tuple(trim)].rechunk(chunks)


def _downsample_array(
    arr: da.Array, axes: Sequence[int], factors: Sequence[int], method: Method
) -> da.Array:
    dtype = arr.dtype
    if method == "gaussian":
        sigma = [0.0] * arr.ndim
        for ax, f in zip(axes, factors, strict=True):
            sigma[ax] = 0.5 * math.sqrt(f * f - 1) if f > 1 else 0.0
        depth = {ax: math.ceil(4 * s) for ax, s in enumerate(sigma)}
        arr = arr.astype(np.float32).map_overlap(
            ndimage.gaussian_filter,
            depth=depth,
            boundary="none",
            sigma=sigma,
            mode="nearest",
            dtype=np.float32,
        )
    arr = _aligned(arr, axes, factors)
    out = da.coarsen(np.mean, arr, dict(zip(axes, factors, strict=True)), dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = da.clip(da.rint(out), info.min, info.max)
    return out.astype(dtype)


def downsample(
    image: xr.DataArray, factors: Sequence[int], *, method: Method = "mean"
) -> xr.DataArray:
    """Downsample the spatial axes of ``image`` by integer ``factors`` (z, y, x), lazily.

    ``mean`` averages each block (a box anti-aliasing filter); ``gaussian`` smooths with
    σ = ½·√(f²−1) voxels first; ``nearest`` picks the block's centre voxel (labels).
    Voxel-centre coordinates are those of the averaged (or picked) voxels, so physical
    positions stay exact.
    """
    if method not in ("mean", "gaussian", "nearest"):
        raise InputError(f"Unknown downsampling method {method!r}: use mean, gaussian or nearest.")
    factors = [int(f) for f in factors]
    if method == "nearest":
        sel = {
            d: slice(f // 2, image.sizes[d] // f * f, f)
            for d, f in zip(SPATIAL_DIMS, factors, strict=True)
        }
        return image.isel(sel)
    axes = [image.dims.index(d) for d in SPATIAL_DIMS]
    data = image.data if isinstance(image.data, da.Array) else da.from_array(image.data)
    out = _downsample_array(data, axes, factors, method)
    coords: dict[str, Any] = {}
    for d, f in zip(SPATIAL_DIMS, factors, strict=True):
        c = image.coords[d]
        n = image.sizes[d] // f
        values = c.values[: n * f].reshape(n, f).mean(axis=1)
        attrs = dict(c.attrs)
        if "spacing" in attrs:
            attrs["spacing"] = float(attrs["spacing"]) * f
        coords[d] = xr.Variable(d, values, attrs=attrs)
    for name, c in image.coords.items():
        if name not in SPATIAL_DIMS and all(dim not in SPATIAL_DIMS for dim in c.dims):
            coords[name] = c
    return xr.DataArray(out, dims=image.dims, coords=coords, name=image.name, attrs=image.attrs)


def _rechunk(image: xr.DataArray, chunks: int | Sequence[int]) -> xr.DataArray:
    sizes = [chunks] * 3 if isinstance(chunks, int) else list(chunks)
    spec = {d: min(int(c), image.sizes[d]) for d, c in zip(SPATIAL_DIMS, sizes, strict=True)}
    spec.update({d: 1 for d in image.dims if d not in SPATIAL_DIMS})
    return image.chunk(spec)


def to_pyramid(
    image: xr.DataArray,
    *,
    n_levels: int | None = None,
    min_size: int | None = None,
    method: Method = "mean",
    chunks: int | Sequence[int] = DEFAULT_CHUNKS,
) -> xr.DataTree:
    """Build a lazy multiscale pyramid of ``image``.

    Parameters
    ----------
    image : xarray.DataArray
        A physically annotated image (see :func:`ngffreg.make_image`).
    n_levels : int, optional
        Number of levels including the full-resolution one; default, until no axis can be
        halved without dropping below ``min_size`` voxels.
    min_size : int, optional
        Smallest axis length a downsampling step may produce: default 32 when ``n_levels``
        is not given, else 1 (the levels asked for are made unless an axis would vanish).
    method : {"mean", "gaussian", "nearest"}
        Anti-aliasing: block mean, Gaussian then block mean, or centre pick (for labels).
    chunks : int or (z, y, x)
        Dask chunk shape of every level (clipped to the level's shape).

    Returns
    -------
    xarray.DataTree
        ``/scale0``, ``/scale1``, … each a Dataset holding the level under the image's name.
        Nothing is computed.
    """
    name = image.name or "image"
    if min_size is None:
        min_size = 32 if n_levels is None else 1
    factors = level_factors(
        [image.sizes[d] for d in SPATIAL_DIMS], spacing(image), n_levels=n_levels, min_size=min_size
    )
    current = _rechunk(image, chunks)
    absolute = np.ones(3, dtype=np.int64)
    tree: dict[str, xr.Dataset] = {}
    for k in range(len(factors) + 1):
        if k:
            f = factors[k - 1]
            absolute = absolute * np.asarray(f)
            current = _rechunk(downsample(current, f, method=method), chunks)
        ds = current.rename(name).to_dataset(promote_attrs=False)
        ds.attrs = {
            "factors": list(factors[k - 1]) if k else [1, 1, 1],
            "absolute_factors": [int(v) for v in absolute],
        }
        tree[f"scale{k}"] = ds
    root = xr.Dataset(attrs={"multiscaleSpatialImageVersion": 1, "method": method, "name": name})
    return xr.DataTree.from_dict({"/": root, **tree})


def levels(pyramid: xr.DataTree) -> list[xr.DataArray]:
    """The levels of a pyramid as DataArrays, finest first."""
    name = pyramid.attrs.get("name", "image")
    keys = sorted((k for k in pyramid.children if k.startswith("scale")), key=lambda k: int(k[5:]))
    if not keys:
        raise InputError("Not a pyramid: no /scale0 group. Build one with ngffreg.to_pyramid.")
    return [
        pyramid[k].ds[name] if name in pyramid[k].ds else _only_var(pyramid[k].ds) for k in keys
    ]


def _only_var(ds: xr.Dataset) -> xr.DataArray:
    return ds[next(iter(ds.data_vars))]


def select_level(
    pyramid: xr.DataTree,
    *,
    target_spacing: float | Sequence[float] | None = None,
    max_voxels: int | None = None,
    memory_budget: int | str | None = None,
    bytes_per_voxel: float | None = None,
) -> int:
    """Index of the pyramid level that fits a criterion (exactly one must be given).

    - ``target_spacing`` (image units, scalar or z, y, x): the coarsest level whose spacing
      does not exceed the target on any axis (level 0 when even it is coarser).
    - ``max_voxels``: the finest level with at most that many voxels.
    - ``memory_budget`` (bytes or a string such as ``"2 GiB"``): the finest level whose
      voxel count × ``bytes_per_voxel`` (default: the dtype's size) fits in the budget.

    When no level meets a voxel or memory limit, the coarsest level is returned.
    """
    given = [v is not None for v in (target_spacing, max_voxels, memory_budget)]
    if sum(given) != 1:
        raise InputError("Give exactly one of target_spacing, max_voxels, memory_budget.")
    lv = levels(pyramid)
    if target_spacing is not None:
        return coarsest_level([spacing(level) for level in lv], target_spacing)
    if memory_budget is not None:
        per = bytes_per_voxel if bytes_per_voxel is not None else lv[0].dtype.itemsize
        max_voxels = int(parse_bytes(memory_budget) / per)
    return finest_level([level.size for level in lv], max_voxels)


def coarsest_level(spacings: Sequence[Any], target: Any, *, slack: float = 1e-9) -> int:
    """The one level picker by spacing: the index of the coarsest level (``spacings`` finest
    first, z, y, x) no coarser than ``target`` on any axis, within the relative ``slack``;
    0 when even level 0 is coarser."""
    goal = np.broadcast_to(np.asarray(target, dtype=np.float64), (3,)) * (1 + slack)
    return max((i for i, sp in enumerate(spacings) if np.all(np.asarray(sp) <= goal)),
               default=0)


def finest_level(sizes: Sequence[int], max_voxels: float) -> int:
    """The one level picker by size: the index of the finest level (``sizes`` in voxels,
    finest first) with at most ``max_voxels`` voxels; the coarsest when none has."""
    return next((i for i, n in enumerate(sizes) if n <= max_voxels), len(sizes) - 1)


def level(pyramid: xr.DataTree, index: int) -> xr.DataArray:
    """Level ``index`` of a pyramid (negative indices count from the coarsest)."""
    lv = levels(pyramid)
    if not -len(lv) <= index < len(lv):
        raise InputError(f"The pyramid has levels 0–{len(lv) - 1}; level {index} does not exist.")
    return lv[index]


def image_levels(image: Any, *, voxel_size: Any = None, unit: str | None = None,
                 name: str = "image") -> list[xr.DataArray]:
    """The resolution levels (finest first) of a path, an image, a pyramid or a list of
    levels; a single image gets a lazy pyramid (down to 32 voxels per axis)."""
    from .io.read import open_levels

    if isinstance(image, (list, tuple)):
        lv = list(image)
    elif isinstance(image, xr.DataTree):
        lv = levels(image)
    elif isinstance(image, xr.DataArray):
        lv = [image]
    else:
        lv = open_levels(image, voxel_size=voxel_size, unit=unit, name=name)
    for level in lv:
        if tuple(level.dims) != ("z", "y", "x"):
            raise InputError(
                f"Registration takes 3-D images with dims (z, y, x); got dims {level.dims} "
                f"for {name}. Select one channel and time point first (e.g. image.isel(c=0)).")
    if len(lv) == 1:
        lv = levels(to_pyramid(lv[0]))
    return lv
