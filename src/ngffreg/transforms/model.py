"""Transforms in physical (z, y, x) space: one small, immutable object per type.

Every transform maps points given as an ``(N, 3)`` array of physical positions in
z, y, x order (the units of the images they relate) to points in the same order.
A registration result maps fixed-space points to moving-space points.

Types
-----
:class:`Identity`, :class:`Translation`, :class:`Scale`, :class:`Affine` (linear, exact
inverses), :class:`DisplacementField` (a lazy, chunked field on a physical grid,
``T(p) = p + d(p)``, linear interpolation), :class:`ThinPlateSpline` (landmark-driven),
:class:`Sequence` (applied first to last, as NGFF ``sequence``) and :class:`Bijection`
(a forward transform with its inverse).

Each transform may name the coordinate system it maps from (``input``) and to
(``output``); a :class:`Sequence` whose names do not chain is refused.

Points are processed in batches of ``batch_size``; a displacement field is read one
region (or one chunk) at a time, so memory stays bounded by the batch and the chunk,
never by the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import TransformError
from ..image import SPATIAL_DIMS, Grid, apply_linear, make_image
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

#: Points pushed through a transform per batch.
DEFAULT_BATCH = 1_000_000
#: What a displacement field does at points outside its grid.
OUTSIDE_POLICIES = ("zero", "nearest", "nan")


def as_points(points: Any, what: str = "points") -> np.ndarray:
    """``points`` as a float64 ``(N, 3)`` array (z, y, x); a single point may be 1-D."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"The {what} are not numeric: {exc}") from exc
    if pts.ndim == 1 and pts.shape[0] == 3:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise TransformError(
            f"The {what} must be an (N, 3) array of z, y, x positions; got shape {pts.shape}."
        )
    return pts


def _vector(value: Any, what: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.shape != (3,):
        raise TransformError(f"A {what} needs 3 values (z, y, x); got {v.shape[0]}.")
    if not np.all(np.isfinite(v)):
        raise TransformError(f"The {what} {v.tolist()} holds non-finite values.")
    v.setflags(write=False)
    return v


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float64)
    array.setflags(write=False)
    return array


def _grid_axes(grid: Grid, region: tuple[slice, ...] | None) -> list[np.ndarray]:
    """The frame coordinates along z, y, x of the grid points in ``region`` (as
    :meth:`Grid.points` computes them)."""
    region = region or tuple(slice(0, n) for n in grid.shape)
    return [grid.frame_origin[k] + grid.spacing[k]
            * np.arange(*region[k].indices(grid.shape[k])) for k in range(3)]


@dataclass(frozen=True, eq=False, kw_only=True)
class Transform:
    """Base class. ``input``/``output`` name the coordinate systems mapped from and to."""

    name: str | None = None
    input: str | None = None
    output: str | None = None

    is_linear: ClassVar[bool] = False

    # -- points -------------------------------------------------------------
    def apply(self, points: Any, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Map ``(N, 3)`` physical points (z, y, x); returns a new ``(N, 3)`` array."""
        pts = as_points(points)
        if len(pts) <= batch_size:
            return self._apply(pts)
        out = np.empty_like(pts)
        for start in range(0, len(pts), batch_size):
            stop = min(start + batch_size, len(pts))
            out[start:stop] = self._apply(pts[start:stop])
        return out

    __call__ = apply

    def apply_grid(self, grid: Grid, region: tuple[slice, ...] | None = None, *,
                   batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Map the points of ``grid`` in ``region`` (``(N, 3)``, C order): the same as
        ``apply(grid.points(region))``, but linear maps and displacement fields use the
        grid's structure (separable per axis) instead of building and gathering per point
        when the grid (and the field) is axis-aligned."""
        return self.apply(grid.points(region), batch_size=batch_size)

    def _apply(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_inverse(
        self, points: Any, *, batch_size: int = DEFAULT_BATCH, tolerance: float = 1e-6,
        max_iterations: int = 200, return_residual: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Map points through the inverse transform.

        Linear transforms and bijections use their exact inverse. Others (fields,
        splines) are inverted point by point: ``x`` solves ``T(x) = y`` by the fixed-point
        iteration ``x ← x − (T(x) − y)`` until ``|T(x) − y| < tolerance`` (physical units)
        or ``max_iterations`` pass; no inverse field is built. With ``return_residual``,
        also returns ``|T(x) − y|`` per point, so non-converged points can be reported.
        """
        pts = as_points(points)
        out = np.empty_like(pts)
        res = np.zeros(len(pts))
        for start in range(0, max(len(pts), 1), batch_size):
            stop = min(start + batch_size, len(pts))
            out[start:stop], res[start:stop] = self._apply_inverse(
                pts[start:stop], tolerance, max_iterations)
        return (out, res) if return_residual else out

    def _apply_inverse(self, y: np.ndarray, tolerance: float, max_iterations: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        if self.is_linear:
            return self.inverse()._apply(y), np.zeros(len(y))
        return _fixed_point_inverse(self._apply, y, tolerance, max_iterations)

    # -- algebra ------------------------------------------------------------
    def inverse(self) -> Transform:
        """The inverse transform (input and output swapped)."""
        raise NotImplementedError

    def then(self, *others: Transform) -> Sequence:
        """This transform followed by ``others`` (a :class:`Sequence`)."""
        return Sequence(transforms=(self, *others))

    @property
    def matrix(self) -> np.ndarray:
        """The 4×4 homogeneous matrix (z, y, x) of a linear transform."""
        raise TransformError(
            f"A {type(self).__name__} is not linear; it has no matrix. "
            "Sample it onto a grid with ngffreg.transforms.sample_field instead."
        )

    def to_affine(self) -> Affine:
        """This linear transform as one :class:`Affine` (keeping names)."""
        return Affine(matrix=self.matrix, name=self.name, input=self.input, output=self.output)

    def simplify(self) -> Transform:
        """An equivalent transform with nested sequences flattened and linear runs merged."""
        return self

    def renamed(self, **names: str | None) -> Transform:
        """A copy with ``name``, ``input`` or ``output`` replaced."""
        unknown = set(names) - {"name", "input", "output"}
        if unknown:
            raise TypeError(f"renamed() takes name, input and output; got {sorted(unknown)}")
        return dataclasses.replace(self, **names)

    def _swapped(self) -> dict[str, str | None]:
        return {"input": self.output, "output": self.input,
                "name": f"{self.name}_inverse" if self.name else None}


def _fixed_point_inverse(forward, y: np.ndarray, tolerance: float, max_iterations: int
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``forward(x) = y`` per point by ``x ← x − (forward(x) − y)``, from ``x = y``."""
    x = y.copy()
    res = np.zeros(len(y))
    active = np.arange(len(y))
    for _ in range(max_iterations):
        if not len(active):
            break
        err = forward(x[active]) - y[active]
        r = np.linalg.norm(err, axis=1)
        res[active] = r
        moving = ~(r < tolerance)  # NaN residuals stop too
        moving &= np.isfinite(r)
        x[active[moving]] -= err[moving]
        active = active[moving]
    if len(active):
        res[active] = np.linalg.norm(forward(x[active]) - y[active], axis=1)
    return x, res


# ---------------------------------------------------------------------------
# linear types
# ---------------------------------------------------------------------------
class _Linear(Transform):
    is_linear: ClassVar[bool] = True

    def _apply(self, points: np.ndarray) -> np.ndarray:
        m = self.matrix
        return apply_linear(points, m[:3, :3], m[:3, 3])

    def apply_grid(self, grid: Grid, region: tuple[slice, ...] | None = None, *,
                   batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        if not grid.is_axis_aligned:
            return super().apply_grid(grid, region, batch_size=batch_size)
        # A p + b with p = (az[i], ay[j], ax[k]): one (n, 3) term per axis, summed by
        # broadcasting in apply_linear's order (so the result is bitwise the same).
        m = self.matrix
        az, ay, ax = _grid_axes(grid, region)
        out = np.empty((len(az), len(ay), len(ax), 3))
        np.add((az[:, None, None, None] * m[:3, 0]) + (ay[None, :, None, None] * m[:3, 1]),
               ax[None, None, :, None] * m[:3, 2], out=out)
        out += m[:3, 3]
        return out.reshape(-1, 3)


@dataclass(frozen=True, eq=False, kw_only=True)
class Identity(_Linear):
    """The identity map."""

    @property
    def matrix(self) -> np.ndarray:
        return np.eye(4)

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points.copy()

    def inverse(self) -> Identity:
        return Identity(**self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True)
class Translation(_Linear):
    """``p + translation`` (z, y, x)."""

    translation: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "translation", _vector(self.translation, "translation"))

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, 3] = self.translation
        return m

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points + self.translation

    def inverse(self) -> Translation:
        return Translation(translation=-self.translation, **self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True)
class Scale(_Linear):
    """``scale ∘ p`` (z, y, x), about the physical origin."""

    scale: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _vector(self.scale, "scale"))

    @property
    def matrix(self) -> np.ndarray:
        return np.diag([*self.scale, 1.0])

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points * self.scale

    def inverse(self) -> Scale:
        if np.any(self.scale == 0):
            raise TransformError(f"The scale {self.scale.tolist()} has a zero; it has no inverse.")
        return Scale(scale=1.0 / self.scale, **self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True)
class Affine(_Linear):
    """``A p + b`` given as a 4×4 homogeneous matrix (or its upper 3×4 block), z, y, x."""

    matrix: Any = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        if m.shape != (4, 4):
            raise TransformError(
                f"A 3-D affine needs a 3×4 or 4×4 matrix (z, y, x); got shape {m.shape}."
            )
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise TransformError(
                f"The affine's last row must be [0, 0, 0, 1]; got {m[3].tolist()}.")
        if not np.all(np.isfinite(m)):
            raise TransformError("The affine matrix holds non-finite values.")
        object.__setattr__(self, "matrix", _frozen(m))

    @classmethod
    def from_matrix_offset(cls, linear: Any, offset: Any, **names: Any) -> Affine:
        """``linear @ p + offset``."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(linear, dtype=np.float64)
        m[:3, 3] = _vector(offset, "offset")
        return cls(matrix=m, **names)

    def inverse(self) -> Affine:
        if abs(np.linalg.det(self.matrix[:3, :3])) < 1e-12 * max(
            1.0, float(np.abs(self.matrix[:3, :3]).max()) ** 3
        ):
            raise TransformError("The affine matrix is singular; it has no inverse.")
        return Affine(matrix=np.linalg.inv(self.matrix), **self._swapped())


# ---------------------------------------------------------------------------
# displacement fields
# ---------------------------------------------------------------------------
def _sample_field(data: Any, cidx: np.ndarray, region_bytes: int = REGION_BYTES) -> np.ndarray:
    """Trilinear values (m, 3) of the (3, z, y, x) field ``data`` at continuous indices."""
    return sample(data, cidx, order=1, region_bytes=region_bytes)


@dataclass(frozen=True, eq=False, kw_only=True)
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


@dataclass(frozen=True, eq=False, kw_only=True)
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
# thin-plate splines (BigWarp landmarks)
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class ThinPlateSpline(Transform):
    """A 3-D thin-plate spline (kernel r² log r plus an affine part) that maps each
    ``source`` landmark exactly onto its ``target`` landmark (both (N, 3), z, y, x).

    Its :meth:`inverse` is the spline fitted the other way (target → source), which
    is exact at the landmarks and approximate between them.
    """

    source: Any = None
    target: Any = None

    def __post_init__(self) -> None:
        src = as_points(self.source, "source landmarks")
        dst = as_points(self.target, "target landmarks")
        if len(src) != len(dst):
            raise TransformError(
                f"{len(src)} source landmarks but {len(dst)} target landmarks; they must pair up.")
        if len(src) < 4:
            raise TransformError(
                f"A 3-D thin-plate spline needs at least 4 landmarks; got {len(src)}.")
        object.__setattr__(self, "source", _frozen(src))
        object.__setattr__(self, "target", _frozen(dst))

    @cached_property
    def _interpolator(self):
        from scipy.interpolate import RBFInterpolator

        try:
            return RBFInterpolator(self.source, self.target - self.source,
                                   kernel="thin_plate_spline", degree=1)
        except (np.linalg.LinAlgError, ValueError) as exc:
            raise TransformError(
                f"The landmarks do not define a thin-plate spline ({exc}); they need at "
                "least 4 points that are not all in one plane.") from exc

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points + self._interpolator(points)

    def inverse(self) -> ThinPlateSpline:
        return ThinPlateSpline(source=self.target, target=self.source, **self._swapped())


# ---------------------------------------------------------------------------
# composition
# ---------------------------------------------------------------------------
def _check_chain(transforms: tuple[Transform, ...]) -> None:
    for i, (a, b) in enumerate(itertools.pairwise(transforms)):
        if a.output is not None and b.input is not None and a.output != b.input:
            raise TransformError(
                f"The transforms do not chain: step {i} ({type(a).__name__}) maps to "
                f"{a.output!r} but step {i + 1} ({type(b).__name__}) maps from {b.input!r}. "
                "Reorder them, or give the coordinate systems matching names.")


@dataclass(frozen=True, eq=False, kw_only=True)
class Sequence(Transform):
    """The transforms applied first to last (NGFF ``sequence``)."""

    transforms: tuple[Transform, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ts = tuple(self.transforms)
        for t in ts:
            if not isinstance(t, Transform):
                raise TransformError(f"A sequence holds transforms; got {type(t).__name__}.")
        if not ts:
            raise TransformError("A sequence needs at least one transform.")
        _check_chain(ts)
        object.__setattr__(self, "transforms", ts)
        if self.input is not None and ts[0].input not in (None, self.input):
            raise TransformError(
                f"The sequence maps from {self.input!r} but its first step maps from "
                f"{ts[0].input!r}.")
        if self.output is not None and ts[-1].output not in (None, self.output):
            raise TransformError(
                f"The sequence maps to {self.output!r} but its last step maps to "
                f"{ts[-1].output!r}.")
        if self.input is None:
            object.__setattr__(self, "input", ts[0].input)
        if self.output is None:
            object.__setattr__(self, "output", ts[-1].output)

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return all(t.is_linear for t in self.transforms)

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        for t in self.transforms:
            m = t.matrix @ m
        return m

    def _apply(self, points: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            points = t._apply(points)
        return points

    def apply(self, points: Any, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Map points step by step over the whole array (each step batches on its own,
        so a field sorts all points by chunk once)."""
        pts = as_points(points)
        for t in self.transforms:
            pts = t.apply(pts, batch_size=batch_size)
        return pts

    def apply_grid(self, grid: Grid, region: tuple[slice, ...] | None = None, *,
                   batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        first, *rest = self.transforms
        pts = first.apply_grid(grid, region, batch_size=batch_size)
        for t in rest:
            pts = t.apply(pts, batch_size=batch_size)
        return pts

    def _apply_inverse(self, y: np.ndarray, tolerance: float, max_iterations: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        res = np.zeros(len(y))
        for t in reversed(self.transforms):
            y, r = t._apply_inverse(y, tolerance, max_iterations)
            res = np.maximum(res, r)
        return y, res

    def inverse(self) -> Sequence:
        return Sequence(transforms=tuple(t.inverse() for t in reversed(self.transforms)),
                        **self._swapped())

    def flattened(self) -> tuple[Transform, ...]:
        out: list[Transform] = []
        for t in self.transforms:
            out.extend(t.flattened() if isinstance(t, Sequence) else [t])
        return tuple(out)

    def simplify(self) -> Transform:
        """Flatten, then merge each run of linear steps into one :class:`Affine`."""
        merged: list[Transform] = []
        run: list[Transform] = []

        def flush() -> None:
            if run:
                m = np.eye(4)
                for t in run:
                    m = t.matrix @ m
                merged.append(Affine(matrix=m, input=run[0].input, output=run[-1].output))
                run.clear()

        for t in self.flattened():
            if t.is_linear:
                run.append(t)
            else:
                flush()
                merged.append(t.simplify())
        flush()
        if len(merged) == 1:
            return merged[0].renamed(name=self.name, input=self.input, output=self.output)
        return Sequence(transforms=tuple(merged), name=self.name, input=self.input,
                        output=self.output)


@dataclass(frozen=True, eq=False, kw_only=True)
class Bijection(Transform):
    """A forward transform kept with its inverse (NGFF ``bijection``)."""

    forward: Transform = None  # type: ignore[assignment]
    inverse_transform: Transform = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        f, i = self.forward, self.inverse_transform
        if not isinstance(f, Transform) or not isinstance(i, Transform):
            raise TransformError("A bijection needs a forward and an inverse transform.")
        for mine, theirs, what in ((f.input, i.output, "input"), (f.output, i.input, "output")):
            if mine is not None and theirs is not None and mine != theirs:
                raise TransformError(
                    f"The bijection's inverse does not undo its forward transform: the forward "
                    f"{what} is {mine!r} but the inverse goes the other way with {theirs!r}.")
        if self.input is None:
            object.__setattr__(self, "input", f.input or i.output)
        if self.output is None:
            object.__setattr__(self, "output", f.output or i.input)

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        return self.forward.is_linear

    @property
    def matrix(self) -> np.ndarray:
        return self.forward.matrix

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return self.forward._apply(points)

    def apply(self, points: Any, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        return self.forward.apply(points, batch_size=batch_size)

    def apply_grid(self, grid: Grid, region: tuple[slice, ...] | None = None, *,
                   batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        return self.forward.apply_grid(grid, region, batch_size=batch_size)

    def _apply_inverse(self, y: np.ndarray, tolerance: float, max_iterations: int
                       ) -> tuple[np.ndarray, np.ndarray]:
        return self.inverse_transform._apply(y), np.zeros(len(y))

    def inverse(self) -> Bijection:
        return Bijection(forward=self.inverse_transform, inverse_transform=self.forward,
                         **self._swapped())

    def simplify(self) -> Bijection:
        return dataclasses.replace(self, forward=self.forward.simplify(),
                                   inverse_transform=self.inverse_transform.simplify())


def compose(*transforms: Transform, **names: Any) -> Transform:
    """The transforms applied first to last; a single transform is returned as is."""
    ts: list[Transform] = []
    for t in transforms:
        ts.extend(t.transforms if isinstance(t, Sequence) and t.name is None else [t])
    if len(ts) == 1 and not names:
        return ts[0]
    return Sequence(transforms=tuple(ts), **names)


def bijection(forward: Transform, inverse: Transform | None = None, **names: Any) -> Bijection:
    """``forward`` with its inverse (computed when not given)."""
    return Bijection(forward=forward, inverse_transform=inverse or forward.inverse(), **names)


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
