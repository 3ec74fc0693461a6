"""Warp: lazy, output-chunk-driven resampling of a moving image onto a fixed grid.

Each output chunk computes its own fixed-space points, pushes them through the transform
(fixed → moving; a displacement field reads only the region those points need), takes
the bounding box of the mapped points plus the interpolator's footprint, reads only that
region of the moving image, and interpolates. No task holds a whole volume and the task
graph carries no arrays: a task is a function of its chunk's location.

Rules (ITK's, so results match ``ants.apply_transforms``): a mapped point is inside the
moving image while its continuous index lies in ``[-0.5, n - 0.5)``; neighbours past the
edge repeat the edge; points outside get ``fill_value``.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError
from .image import SPATIAL_DIMS, Grid, to_units, units
from .image import spacing as image_spacing
from .sampling import sample
from .transforms.model import Transform, _as_grid
from .units import unit_factor

#: The seed's interpolator names, and the spline order each stands for.
INTERPOLATORS = {"nearestNeighbor": 0, "linear": 1, "bSpline": 3}
#: Output chunk edge when the fixed image gives none.
DEFAULT_CHUNK = 128


def interpolation_order(interpolator: str) -> int:
    """The spline order of an interpolator name (``linear``, ``nearestNeighbor``,
    ``bSpline``; ``nearest`` and ``bspline`` are accepted too)."""
    aliases = {"nearest": "nearestNeighbor", "bspline": "bSpline", "cubic": "bSpline"}
    name = aliases.get(interpolator, interpolator)
    if name not in INTERPOLATORS:
        raise InputError(
            f"Unknown interpolator {interpolator!r}; choose one of {sorted(INTERPOLATORS)} "
            "(nearestNeighbor for label images).")
    return INTERPOLATORS[name]


def _output_chunks(like: Any, grid: Grid, chunks: Any) -> tuple[tuple[int, ...], ...]:
    if chunks is None and isinstance(like, xr.DataArray) and isinstance(like.data, da.Array):
        spatial = like.data.chunks[-3:]
        if max(max(c) for c in spatial) <= 4 * DEFAULT_CHUNK:
            return spatial
    return da.core.normalize_chunks(chunks or DEFAULT_CHUNK, grid.shape)


def warp(
    moving: xr.DataArray,
    transform: Transform,
    *,
    like: xr.DataArray | Grid | None = None,
    shape: Any = None,
    spacing: Any = None,
    origin: Any = None,
    direction: Any = None,
    unit: str | None = None,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: Any = None,
    dtype: Any = None,
) -> xr.DataArray:
    """Resample ``moving`` through ``transform`` (fixed → moving points) onto a grid.

    Parameters
    ----------
    moving : xarray.DataArray
        The moving image (dims z, y, x), lazy or not; only the regions the output needs
        are read.
    transform : Transform
        Maps fixed-space points to moving-space points (a registration result), in the
        units of the output grid.
    like : image or Grid, optional
        The fixed image whose grid (shape, spacing, origin, direction, unit) the output
        takes; or give ``shape``, ``spacing``, ``origin``, ``direction``, ``unit``.
    interpolator : ``"linear"``, ``"nearestNeighbor"`` or ``"bSpline"``
        Nearest neighbour keeps the moving dtype (integer labels stay exact); the others
        give float32 (float64 for float64 input).
    fill_value : float
        The value of output voxels whose mapped point is outside the moving image.
    chunks : int or tuple, optional
        Output chunks (z, y, x); default the fixed image's dask chunks, else 128³.
    dtype : optional
        Output dtype (default as above).

    Returns
    -------
    xarray.DataArray
        A lazy image on the output grid.
    """
    if not isinstance(moving, xr.DataArray) or tuple(moving.dims) != SPATIAL_DIMS:
        raise InputError(
            f"warp takes a 3-D moving image with dims (z, y, x); got dims "
            f"{getattr(moving, 'dims', type(moving).__name__)}. Warp each channel or time "
            "point separately (e.g. image.isel(c=0)).")
    if not isinstance(transform, Transform):
        raise InputError(f"warp needs an ngffreg Transform; got {type(transform).__name__}.")
    order = interpolation_order(interpolator)
    grid = _as_grid(like, shape, spacing, origin, direction, unit)
    if units(moving) != grid.unit:
        moving = to_units(moving, grid.unit)
    mgrid = Grid.of(moving)
    source = moving.data if isinstance(moving.data, da.Array) else np.asarray(moving.data)
    source = source[None]  # (1, z, y, x): the sampler's channel axis
    if dtype is None:
        dtype = moving.dtype if order == 0 else (
            np.float64 if moving.dtype == np.float64 else np.float32)
    dtype = np.dtype(dtype)
    fill = np.asarray(fill_value).astype(dtype)

    def block(block_info=None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        region = tuple(slice(a, b) for a, b in loc)
        out_shape = tuple(b - a for a, b in loc)
        cidx = mgrid.continuous_index(transform.apply_grid(grid, region))
        inside = mgrid.inside(cidx)
        everywhere = bool(inside.all())
        out = np.full(len(cidx), fill, dtype=dtype)
        if everywhere or inside.any():
            values = sample(source, cidx if everywhere else cidx[inside], order=order)[:, 0]
            if order and np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                values = np.clip(np.rint(values), info.min, info.max)
            if everywhere:
                out[:] = values
            else:
                out[inside] = values
        return out.reshape(out_shape)

    data = da.map_blocks(block, chunks=_output_chunks(like, grid, chunks), dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype=dtype))
    attrs = {"warped_from": moving.attrs.get("source", moving.name),
             "interpolator": interpolator}
    return grid.image(data, name=moving.name or "image", attrs=attrs)


# ---------------------------------------------------------------------------
# pyramids and output stores
# ---------------------------------------------------------------------------
PYRAMID_MODES = ("downsample", "per-level")


def _moving_levels(moving: Any) -> list[xr.DataArray]:
    if isinstance(moving, xr.DataTree):
        from .pyramid import levels

        return levels(moving)
    if isinstance(moving, xr.DataArray):
        return [moving]
    return list(moving)


def choose_moving_level(moving_levels: list[xr.DataArray], output_spacing: Any,
                        unit: str | None = None) -> tuple[int, str]:
    """The coarsest moving level whose voxels are no larger than ``output_spacing`` (in
    ``unit``, default the moving image's) on any axis, so the output is not under-sampled,
    and why."""
    if len(moving_levels) == 1:
        return 0, "the moving image has one level"
    target = np.asarray(output_spacing, dtype=np.float64)
    unit = unit or units(moving_levels[0])
    spacings = [np.asarray(image_spacing(lv)) * unit_factor(units(lv), unit)
                for lv in moving_levels]
    best = max((j for j, sp in enumerate(spacings) if np.all(sp <= target * (1 + 1e-6))),
               default=0)
    return best, (f"moving level {best} (spacing {np.round(spacings[best], 6).tolist()}) is "
                  f"the coarsest no coarser than the output's {np.round(target, 6).tolist()}")


def warp_pyramid(
    moving: Any,
    transform: Transform,
    *,
    like: xr.DataArray,
    n_levels: int | None = None,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: Any = DEFAULT_CHUNK,
) -> tuple[xr.DataTree, list[dict[str, Any]]]:
    """Warp every level of an output pyramid from the moving level whose spacing fits.

    The output levels are the fixed grid's own pyramid (:func:`ngffreg.to_pyramid`); each
    is warped directly from the coarsest moving level whose voxels are no larger than the
    output level's (``moving`` may be one image, a list of levels or a pyramid). Returns the
    lazy pyramid and, per level, which moving level it came from and why.
    """
    from .pyramid import levels, to_pyramid

    moving_levels = _moving_levels(moving)
    method = "nearest" if interpolation_order(interpolator) == 0 else "mean"
    grid0 = Grid.of(like)
    template = grid0.image(da.zeros(grid0.shape, dtype=np.uint8, chunks=chunks),
                           name=moving_levels[0].name or "image")
    pyramid = to_pyramid(template, n_levels=n_levels, method=method, chunks=chunks)
    report = []
    for k, level_grid in enumerate(levels(pyramid)):
        j, why = choose_moving_level(moving_levels, image_spacing(level_grid), grid0.unit)
        out = warp(moving_levels[j], transform, like=level_grid, interpolator=interpolator,
                   fill_value=fill_value, chunks=chunks)
        node = pyramid[f"scale{k}"]
        pyramid[f"scale{k}"] = xr.Dataset({template.name: out}, attrs=dict(node.attrs))
        report.append({"level": k, "moving_level": j, "reason": why})
    pyramid.attrs["method"] = f"warped per level ({interpolator})"
    return pyramid, report


def write_warped(
    moving: Any,
    transform: Transform,
    path: Any,
    *,
    like: xr.DataArray,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: int = DEFAULT_CHUNK,
    n_levels: int | None = None,
    pyramid: str = "downsample",
    inverse: Transform | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> tuple[Any, list[dict[str, Any]]]:
    """Warp ``moving`` onto ``like``'s grid and write the registered pyramid as OME-Zarr 0.6,
    with ``transform`` stored beside it as the ``registration`` (fixed → moving; a bijection
    when ``inverse`` is given or ``transform`` is one).

    ``pyramid="downsample"`` (default) warps level 0 once and derives each coarser level by
    downsampling what was written (block mean; centre pick for nearest-neighbour labels), so
    every voxel is interpolated once and the levels agree with each other.
    ``pyramid="per-level"`` warps each output level from the coarsest moving level whose
    spacing fits (see :func:`warp_pyramid`): less reading for a moving pyramid whose coarse
    levels exist, at the price of interpolating every level. The transform is written into
    the store before it is renamed into place, so a failure leaves nothing behind.

    Returns the store path and, per output level, its source and the reason.
    """
    from .io.write import to_ome_zarr
    from .transforms.ngff import write_registration

    if pyramid not in PYRAMID_MODES:
        raise InputError(f"pyramid must be one of {PYRAMID_MODES}; got {pyramid!r}.")
    moving_levels = _moving_levels(moving)
    method = "nearest" if interpolation_order(interpolator) == 0 else "mean"
    if pyramid == "per-level" and len(moving_levels) > 1:
        data, report = warp_pyramid(moving_levels, transform, like=like, n_levels=n_levels,
                                    interpolator=interpolator, fill_value=fill_value,
                                    chunks=chunks)
    else:
        data = warp(moving_levels[0], transform, like=like, interpolator=interpolator,
                    fill_value=fill_value, chunks=chunks)
        why = ("level 0 warped, then downsampled" if pyramid == "downsample" else
               "level 0 warped, then downsampled: the moving image has one level")
        report = [{"level": 0, "moving_level": 0, "reason": why}]

    def store_transform(tmp: Any) -> None:
        write_registration(tmp, transform, inverse=inverse)

    out = to_ome_zarr(
        data, path, version="0.6", chunks=chunks, n_levels=n_levels, method=method,
        overwrite=overwrite, progress=progress, coordinate_system="fixed",
        attributes={"warp": {"interpolator": interpolator, "fill_value": fill_value,
                             "pyramid": pyramid, "levels": report}},
        before_publish=store_transform)
    return out, report
