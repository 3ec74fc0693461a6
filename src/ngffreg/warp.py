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
from .sampling import sample
from .transforms.model import Transform, _as_grid

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
        fixed_points = grid.points(region)
        cidx = mgrid.continuous_index(transform.apply(fixed_points))
        inside = mgrid.inside(cidx)
        out = np.full(len(cidx), fill, dtype=dtype)
        if inside.any():
            values = sample(source, cidx[inside], order=order)[:, 0]
            if order and np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                values = np.clip(np.rint(values), info.min, info.max)
            out[inside] = values.astype(dtype, copy=False)
        return out.reshape(out_shape)

    data = da.map_blocks(block, chunks=_output_chunks(like, grid, chunks), dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype=dtype))
    attrs = {"warped_from": moving.attrs.get("source", moving.name),
             "interpolator": interpolator}
    return grid.image(data, name=moving.name or "image", attrs=attrs)
