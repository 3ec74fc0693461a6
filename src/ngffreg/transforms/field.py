"""Displacement fields: :class:`DisplacementField`, ``T(p) = p + d(p)`` on a physical grid.

The field may be lazy and larger than memory: points are mapped batch by batch, through
the region of the field they need (read once when it is small), or sorted by the chunk
they fall in so that each chunk is read about once. Grids are mapped with separable
(per-axis) interpolation when both grids are axis-aligned.

Also here: any transform sampled as a lazy field (:func:`sample_field`), and the inverse of
a field computed chunk by chunk (:func:`invert_field`, :func:`inverse_report`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import TransformError
from ..image import SPATIAL_DIMS, Grid, make_image
from ..image import spacing as image_spacing
from ..image import units as image_units
from ..sampling import (
    REGION_BYTES,
    chunk_bounds,
    interpolate,
    read_region,
    region_bounds,
    sample,
)
from .base import (
    DEFAULT_BATCH,
    Transform,
    _by,
    _fixed_point_inverse,
    _grid_axes,
    _numbers,
    as_points,
)

#: What a displacement field does at points outside its grid.
OUTSIDE_POLICIES = ("zero", "nearest", "nan")


def _sample_field(data: Any, cidx: np.ndarray, region_bytes: int = REGION_BYTES) -> np.ndarray:
    """Trilinear values (m, 3) of the (3, z, y, x) field ``data`` at continuous indices."""
    return sample(data, cidx, order=1, region_bytes=region_bytes)


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class DisplacementField(Transform):
    """``T(p) = p + d(p)``: a displacement field on a physical grid.

    ``field`` is an image (see :func:`ngffreg.make_image`) with dims ``(c, z, y, x)``;
    ``c`` holds the three displacement components in z, y, x order, in the units of the
    grid. It may be lazy and larger than memory. ``d`` is interpolated linearly.

    ``outside`` says what happens at points off the grid: ``"zero"`` (no displacement,
    ITK's and ANTs' rule: a point is inside while its continuous index lies in
    ``[-0.5, n - 0.5)``, with edge values repeated in that half-voxel band),
    ``"nearest"`` (the edge displacement continues) or ``"nan"`` (the point maps to NaN).

    ``residual`` is set on fields computed by :func:`invert_field`: the magnitude, per
    grid point, of ``|F(T(y)) - y|`` in physical units.
    """

    field: xr.DataArray = None  # type: ignore[assignment]
    outside: str = "zero"
    residual: xr.DataArray | None = None

    def __post_init__(self) -> None:
        f = self.field
        if not isinstance(f, xr.DataArray):
            raise TransformError("A displacement field must be an xarray.DataArray "
                                 "(make one with DisplacementField.from_array).")
        if f.dims[-3:] != SPATIAL_DIMS or f.ndim != 4:
            raise TransformError(
                f"A displacement field needs dims (c, z, y, x); got {f.dims}.")
        if f.shape[0] != 3:
            raise TransformError(
                f"A 3-D displacement field needs 3 components (z, y, x) per voxel; "
                f"got {f.shape[0]}.")
        if self.outside not in OUTSIDE_POLICIES:
            raise TransformError(
                f"outside must be one of {OUTSIDE_POLICIES}; got {self.outside!r}.")

    @classmethod
    def from_array(
        cls, data: Any, *, spacing: Any, origin: Any = None, direction: Any = None,
        unit: str = "micrometer", outside: str = "zero", **names: Any,
    ) -> DisplacementField:
        """A field from a (3, z, y, x) numpy or dask array of z, y, x displacements."""
        data = data if hasattr(data, "ndim") else np.asarray(data)
        if data.ndim != 4:
            raise TransformError(
                f"A displacement field array must be (3, z, y, x); got {data.ndim} dimensions.")
        image = make_image(data, spacing=spacing, origin=origin, direction=direction, unit=unit,
                           dims=("c", *SPATIAL_DIMS), name="displacement")
        return cls(field=image, outside=outside, **names)

    def _describe(self) -> list[str]:
        """Grid size, spacing, unit and origin; whether it is lazy (no value is read)."""
        try:
            grid = self.grid
            parts = [f"grid {_by(grid.shape)} at {_by(grid.spacing)} {grid.unit}",
                     f"origin {_numbers(grid.origin)}"]
            if not grid.is_axis_aligned:
                parts.append("oblique")
        except Exception:  # a repr does not fail on a field it cannot place
            parts = [f"grid {_by(self.field.shape[1:])}"]
        parts.append("lazy" if isinstance(self.field.data, da.Array) else "in memory")
        if self.outside != "zero":
            parts.append(f"outside {self.outside!r}")
        if self.residual is not None:
            parts.append("with residual")
        return parts

    # grid -----------------------------------------------------------------
    @cached_property
    def grid(self) -> Grid:
        """The field's physical grid."""
        return Grid.of(self.field)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.field.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return image_spacing(self.field)

    @property
    def unit(self) -> str:
        return image_units(self.field)

    def continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous grid indices (z, y, x) of physical points."""
        return self.grid.continuous_index(points)

    def grid_points(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Physical positions (N, 3) of the grid points in ``region`` (C order)."""
        return self.grid.points(region)

    def displacement(self, points: Any) -> np.ndarray:
        """``d(p)`` at physical points (N, 3)."""
        pts = as_points(points)
        cidx = self.continuous_index(pts)
        out = np.zeros_like(pts)
        if self.outside == "nearest":
            inside = np.ones(len(pts), dtype=bool)
        else:
            inside = self.grid.inside(cidx)
            if self.outside == "nan":
                out[~inside] = np.nan
        if inside.any():
            out[inside] = self._sample(cidx[inside])
        return out

    def _sample(self, cidx: np.ndarray) -> np.ndarray:
        """Trilinear values (m, 3) at continuous indices of points inside the grid."""
        return _sample_field(self.field.data, cidx)

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points + self.displacement(points)

    def apply(self, points: Any, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Map points; when the field region they need is small it is read once and the
        points go through it batch by batch; otherwise they are sorted by the field chunk
        they fall in first, so each chunk is read about once however they are scattered."""
        pts = as_points(points)
        if len(pts) <= batch_size:
            return self._apply(pts)
        held = self._held_region(pts, batch_size)
        if held is not None:  # batch by batch through the held region
            return Transform.apply(held, pts, batch_size=batch_size)
        field = self._read_once()
        order = np.argsort(field._chunk_ids(pts, batch_size), kind="stable")
        out = np.empty_like(pts)
        for start in range(0, len(pts), batch_size):
            sel = order[start:start + batch_size]
            out[sel] = field._apply(pts[sel])
        return out

    def _held_region(self, points: np.ndarray, batch_size: int) -> DisplacementField | None:
        """This field with the region ``points`` need read into memory (a field whose data
        is that region, on the full grid: see :class:`_HeldField`), or None when that region
        exceeds :data:`~ngffreg.sampling.REGION_BYTES`."""
        n = np.asarray(self.grid.shape)
        lo, hi = n.copy(), np.zeros(3, dtype=np.int64)
        for start in range(0, len(points), batch_size):
            cidx = self.continuous_index(points[start:start + batch_size])
            if self.outside != "nearest":
                cidx = cidx[self.grid.inside(cidx)]
            if len(cidx):
                a, b = region_bounds(cidx, n, 1)
                lo, hi = np.minimum(lo, a), np.maximum(hi, b)
        if np.any(hi <= lo):
            return self  # no point is inside: nothing is read
        if 8 * 3 * int(np.prod(hi - lo)) > REGION_BYTES:
            return None
        box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
        region = read_region(self.field.data, box).astype(np.float64, copy=False)
        return _HeldField(field=self.field, outside=self.outside, region=region, lo=lo)

    def apply_grid(self, grid: Grid, region: tuple[slice, ...] | None = None, *,
                   batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """The points of ``grid`` in ``region`` mapped through the field. When both grids
        are axis-aligned, trilinear interpolation is separable: the field region is
        interpolated along z, then y, then x (an axis whose points fall on field nodes is a
        plain gather), with no per-point index arrays; otherwise, or when the field region
        is too large to hold, as :meth:`apply`."""
        fgrid = self.grid
        if not (grid.is_axis_aligned and fgrid.is_axis_aligned):
            return super().apply_grid(grid, region, batch_size=batch_size)
        axes = _grid_axes(grid, region)
        n = fgrid.shape
        fill = np.nan if self.outside == "nan" else 0.0
        plans = []
        for k in range(3):
            c = (axes[k] - fgrid.frame_origin[k]) / fgrid.spacing[k]
            inside = (np.ones(len(c), dtype=bool) if self.outside == "nearest"
                      else (c >= -0.5) & (c < n[k] - 0.5))
            floor = np.floor(c[inside]) if inside.any() else np.zeros(0)
            i0 = np.clip(floor, 0, n[k] - 1).astype(np.int64)
            i1 = np.clip(floor + 1, 0, n[k] - 1).astype(np.int64)
            plans.append((inside, i0, i1, c[inside] - floor))
        lo = [int(p[1].min()) if len(p[1]) else 0 for p in plans]
        hi = [int(p[2].max()) + 1 if len(p[2]) else 1 for p in plans]
        if 8 * 3 * math.prod(b - a for a, b in zip(lo, hi, strict=True)) > REGION_BYTES:
            return super().apply_grid(grid, region, batch_size=batch_size)
        values = read_region(self.field.data, (slice(None), *(
            slice(a, b) for a, b in zip(lo, hi, strict=True)))).astype(np.float64, copy=False)
        for k, (inside, i0, i1, frac) in enumerate(plans):
            values = _interpolate_axis(values, k + 1, inside, i0 - lo[k], i1 - lo[k], frac,
                                       fill)
        out = np.empty((*values.shape[1:], 3))
        shape = [1, 1, 1]
        for k in range(3):
            shape_k = list(shape)
            shape_k[k] = -1
            np.add(axes[k].reshape(shape_k), values[k], out=out[..., k])
        return out.reshape(-1, 3)

    def _read_once(self) -> DisplacementField:
        """Itself, or held in memory when it is one lazy chunk (a field read from an ITK
        file): such a field is read whole on every access, so read it once per call."""
        data = self.field.data
        if isinstance(data, da.Array) and max(data.numblocks) == 1:
            return self.compute()
        return self

    def _apply_inverse(self, y: np.ndarray, tolerance: float, max_iterations: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        return _fixed_point_inverse(self._read_once()._apply, y, tolerance, max_iterations)

    def _chunk_ids(self, points: np.ndarray, batch_size: int) -> np.ndarray:
        bounds = chunk_bounds(self.field.data)
        counts = [len(b) - 1 for b in bounds]
        n = np.asarray(self.grid.shape)
        ids = np.empty(len(points), dtype=np.int64)
        for start in range(0, len(points), batch_size):
            cidx = self.continuous_index(points[start:start + batch_size])
            base = np.clip(np.floor(np.nan_to_num(cidx)), 0, n - 1).astype(np.int64)
            per_axis = [np.searchsorted(b, base[:, k], side="right") - 1
                        for k, b in enumerate(bounds)]
            ids[start:start + batch_size] = np.ravel_multi_index(per_axis, counts)
        return ids

    def inverse(self, **kwargs: Any) -> DisplacementField:
        """The iterative inverse on the same grid; see :func:`invert_field`."""
        return invert_field(self, **kwargs)

    def compute(self) -> DisplacementField:
        """The same field (and residual, if any) held in memory, computed in one pass."""
        if self.residual is None:
            return dataclasses.replace(self, field=self.field.compute())
        field_, residual = dask.compute(self.field, self.residual)
        return dataclasses.replace(self, field=field_, residual=residual)


def _interpolate_axis(values: np.ndarray, axis: int, inside: np.ndarray, i0: np.ndarray,
                      i1: np.ndarray, frac: np.ndarray, fill: float) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at the points ``inside`` (between
    nodes ``i0`` and ``i1`` with weight ``frac`` on ``i1``); points not inside get ``fill``."""
    shape = [1] * values.ndim
    shape[axis] = -1
    part = np.take(values, i0, axis=axis)
    if np.any(frac):  # off the nodes (on them, the gather is the answer)
        part *= (1.0 - frac).reshape(shape)
        upper = np.take(values, i1, axis=axis)
        upper *= frac.reshape(shape)
        part += upper
    if inside.all():
        return part
    out_shape = list(values.shape)
    out_shape[axis] = len(inside)
    out = np.full(out_shape, fill)
    index: list[Any] = [slice(None)] * values.ndim
    index[axis] = inside
    out[tuple(index)] = part
    return out


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class _HeldField(DisplacementField):
    """A field whose data in ``[lo, lo + region.shape)`` is held in memory as ``region``:
    every point it is asked for lies there (see :meth:`DisplacementField._held_region`)."""

    region: np.ndarray = None  # type: ignore[assignment]
    lo: np.ndarray = None  # type: ignore[assignment]

    def _sample(self, cidx: np.ndarray) -> np.ndarray:
        # the region's own edges are the field's wherever the points reach them, so
        # repeating them (nearest) is the field's edge rule
        return interpolate(self.region, cidx - self.lo, 1)


# ---------------------------------------------------------------------------
# fields from transforms, and field inversion
# ---------------------------------------------------------------------------
def _chunking(shape: tuple[int, ...], chunks: Any) -> tuple[tuple[int, ...], ...]:
    return da.core.normalize_chunks(chunks, shape, dtype=np.float64)


def _block_region(block_info: dict) -> tuple[slice, ...]:
    loc = block_info[None]["array-location"][1:]
    return tuple(slice(a, b) for a, b in loc)


def sample_field(
    transform: Transform, *, like: xr.DataArray | DisplacementField | Grid | None = None,
    shape: Iterable[int] | None = None, spacing: Any = None, origin: Any = None,
    direction: Any = None, unit: str | None = None, chunks: Any = 64,
    dtype: Any = np.float32,
) -> DisplacementField:
    """``transform`` sampled as a lazy displacement field ``T(p) - p`` on a grid.

    The grid is ``like``'s (an image, a field or a :class:`~ngffreg.image.Grid`) or the one
    given by ``shape``, ``spacing``, ``origin``, ``direction``, ``unit``. Each chunk
    computes its own points, so nothing holds the whole grid.
    """
    grid = _as_grid(like, shape, spacing, origin, direction, unit)

    def block(block_info=None):
        region = _block_region(block_info)
        pts = grid.points(region)
        disp = transform.apply(pts) - pts
        out_shape = tuple(s.stop - s.start for s in region)
        return np.moveaxis(disp.reshape(*out_shape, 3), -1, 0).astype(dtype)

    data = da.map_blocks(block, chunks=((3,), *_chunking(grid.shape, chunks)), dtype=dtype,
                         meta=np.empty((0, 0, 0, 0), dtype=dtype))
    return DisplacementField(field=grid.image(data, dims=("c", *SPATIAL_DIMS),
                                              name="displacement"),
                             input=transform.input, output=transform.output)


def _as_grid(like: Any, shape: Any, spacing: Any, origin: Any, direction: Any,
             unit: str | None) -> Grid:
    """The grid of ``like`` (image, field or Grid), or one from its physical parameters."""
    if isinstance(like, Grid):
        return like
    if isinstance(like, DisplacementField):
        return like.grid
    if like is not None:
        return Grid.of(like)
    if shape is None or spacing is None:
        raise TransformError("Give like= (an image or grid), or shape= and spacing=.")
    return Grid.from_origin(shape, spacing, origin, direction, unit or "micrometer")


def invert_field(
    forward: DisplacementField, *, max_iterations: int = 100, tolerance: float = 1e-3,
    chunks: Any = None,
) -> DisplacementField:
    """The inverse of ``forward`` on its own grid, computed chunk by chunk (lazily).

    At each grid point ``y`` the inverse displacement ``u`` solves
    ``u = -d(y + u)`` by fixed-point iteration, starting from ``u = -d(y)``, until the
    residual ``|u + d(y + u)|`` falls below ``tolerance`` voxels or ``max_iterations``
    pass. Each chunk reads only the region of ``forward`` its points can reach (the
    chunk grown by the largest displacement). The result's ``residual`` holds, per grid
    point, ``|F(T⁻¹(y)) - y|`` in physical units: where it stays large the iteration
    did not converge (folds, or points mapped from outside the field).

    Points whose inverse lies outside ``forward``'s grid keep ``u = -d`` of the nearest
    reachable point; the residual marks them.
    """
    grid = forward.grid
    sp, n = grid.spacing, np.asarray(grid.shape)
    data = forward.field.data
    if chunks is None and isinstance(data, da.Array) and max(map(max, data.chunks[1:])) <= 128:
        spatial = data.chunks[1:]
    else:
        spatial = _chunking(tuple(n), chunks or 96)
    with dask.config.set(scheduler="threads"):
        reach = float(da.nanmax(da.sqrt((da.asarray(data).astype(np.float64) ** 2).sum(axis=0)))
                      .compute()) if data.size else 0.0
    if not math.isfinite(reach):
        raise TransformError(
            "The displacement field holds non-finite values; it cannot be inverted.")
    margin = np.ceil(reach / sp).astype(int) + 2
    tol = tolerance * float(sp.min())
    outside = forward.outside

    def block(block_info=None):
        region = _block_region(block_info)
        y = grid.points(region)
        lo = np.array([max(s.start - m, 0) for s, m in zip(region, margin, strict=True)])
        hi = np.array([min(s.stop + m, k) for s, m, k in zip(region, margin, n, strict=True)])
        fwd = read_region(data, (slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True))))
        fwd = fwd.astype(np.float64, copy=False)

        def disp(x: np.ndarray) -> np.ndarray:
            cidx = grid.continuous_index(x)
            out = interpolate(fwd, cidx - lo)
            if outside != "nearest":
                out[~grid.inside(cidx)] = 0.0
            return out

        u = -disp(y)
        res = np.full(len(y), np.inf)
        active = np.arange(len(y))
        for _ in range(max_iterations):
            dx = disp(y[active] + u[active])
            r = np.linalg.norm(u[active] + dx, axis=1)
            res[active] = r
            done = r < tol
            u[active[~done]] = -dx[~done]
            active = active[~done]
            if not len(active):
                break
        if len(active):
            res[active] = np.linalg.norm(u[active] + disp(y[active] + u[active]), axis=1)
        out_shape = tuple(s.stop - s.start for s in region)
        out = np.concatenate([u, res[:, None]], axis=1).reshape(*out_shape, 4)
        return np.moveaxis(out, -1, 0).astype(np.float32)

    both = da.map_blocks(block, chunks=((4,), *spatial), dtype=np.float32,
                         meta=np.empty((0, 0, 0, 0), dtype=np.float32))
    inverse = DisplacementField(
        field=grid.image(both[:3], dims=("c", *SPATIAL_DIMS), name="displacement"),
        outside=forward.outside, **forward._swapped())
    residual = grid.image(both[3], name="inverse_residual")
    return dataclasses.replace(inverse, residual=residual)


def inverse_report(inverse: DisplacementField, *, tolerance: float = 1e-3) -> dict[str, Any]:
    """Residual statistics of a field from :func:`invert_field`, in voxels (computes the
    residual; call ``inverse.compute()`` first to keep the inverse field as well)."""
    if inverse.residual is None:
        raise TransformError("This field was not computed by invert_field; it has no residual.")
    voxel = float(min(inverse.spacing))
    grid = np.asarray(inverse.residual.values) / voxel
    r = grid.reshape(-1)
    bad = r >= tolerance
    report: dict[str, Any] = {
        "median_voxels": float(np.median(r)), "p99_voxels": float(np.percentile(r, 99)),
        "max_voxels": float(r.max()), "not_converged_fraction": float(bad.mean()),
        "tolerance_voxels": tolerance,
    }
    if bad.any():
        idx = np.argwhere(grid >= tolerance)
        report["not_converged_index_box"] = [idx.min(axis=0).tolist(), idx.max(axis=0).tolist()]
    return report
