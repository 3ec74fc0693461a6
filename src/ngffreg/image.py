"""Physically annotated images: an :class:`xarray.DataArray` with z, y, x voxel-centre coordinates.

The model (spatial-image conventions, NGFF axis order):

- dims are ``("z", "y", "x")``, optionally preceded by ``"c"`` and/or ``"t"``
  (NGFF order ``t, c, z, y, x``);
- the coordinate of each spatial dim holds the physical position of each voxel centre,
  ascending, with the unit in ``coords[dim].attrs["units"]`` (an OME-NGFF unit name);
- the direction lives on a 0-d coordinate ``space`` (it survives ``isel``, arithmetic and
  round trips, like rioxarray's ``spatial_ref``). A signed-permutation direction is
  normalised away when the image is made, by lazily transposing and flipping axes, so the
  coordinates alone place every voxel; the original is kept as ``source_direction``.
  An oblique direction ``D`` (z, y, x rows and columns) is kept as ``direction``: the
  coordinates are then positions in the image's own rotated frame and the physical point of
  a voxel is ``D @ (z, y, x)``.

A voxel centre is at ``origin + direction · (spacing ∘ index)`` (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError, OrientationError
from .units import normalize_unit, unit_factor

SPATIAL_DIMS: tuple[str, str, str] = ("z", "y", "x")
_LEADING_DIMS = ("t", "c")
_SPACE = "space"
_TOL = 1e-6


def _vec3(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise InputError(f"{what} needs 3 values in z, y, x order, got {list(arr)}.")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be finite numbers, got {list(arr)}.")
    return arr


def validate_spacing(value: Any) -> np.ndarray:
    """Return spacing as a float array (z, y, x); refuse zero, negative or non-finite values."""
    arr = _vec3(value, "Voxel size (spacing)")
    if np.any(arr <= 0):
        raise InputError(
            f"Voxel size must be positive in every axis, got {list(arr)} (z, y, x). "
            "Pass the true voxel size, e.g. --voxel-size 50 40 40."
        )
    return arr


def _dims_for(ndim: int, dims: Sequence[str] | None) -> tuple[str, ...]:
    if dims is not None:
        dims = tuple(dims)
        if len(dims) != ndim:
            raise InputError(f"dims {dims} do not match the data's {ndim} dimensions.")
        if dims[-3:] != SPATIAL_DIMS or any(d not in _LEADING_DIMS for d in dims[:-3]):
            raise InputError(
                f"dims must end with ('z', 'y', 'x') and may start with 't' and/or 'c'; got {dims}."
            )
        return dims
    if ndim < 3:
        raise InputError(
            f"A 3-D volume is needed, but the data has {ndim} dimension(s). "
            "ngffreg registers volumes with z, y and x axes; stack 2-D planes into a volume first."
        )
    if ndim > 5:
        raise InputError(f"At most 5 dimensions (t, c, z, y, x) are supported, got {ndim}.")
    return (*_LEADING_DIMS[len(_LEADING_DIMS) - (ndim - 3) :], *SPATIAL_DIMS)


def is_signed_permutation(matrix: np.ndarray, tol: float = _TOL) -> bool:
    """Whether ``matrix`` has exactly one ±1 per row and column, zeros elsewhere."""
    m = np.asarray(matrix, dtype=np.float64)
    rounded = np.round(m)
    if not np.allclose(m, rounded, atol=tol):
        return False
    a = np.abs(rounded)
    return bool(np.all(a.sum(0) == 1) and np.all(a.sum(1) == 1) and np.all((a == 0) | (a == 1)))


def _check_direction(direction: Any) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        raise OrientationError(f"A direction must be a finite 3×3 matrix, got {d.tolist()}.")
    if not np.allclose(d @ d.T, np.eye(3), atol=1e-4):
        raise OrientationError(
            f"Direction {d.tolist()} is not orthonormal (it holds a shear or scaling). "
            "Resample the volume onto an orthogonal grid first."
        )
    return d


def normalize_direction(
    data: Any,
    spacing: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """Lazily transpose and flip the last three axes so that a signed-permutation
    ``direction`` (z, y, x) becomes the identity.

    Returns ``(data, spacing, origin, direction)`` where direction is the identity; an
    oblique direction is returned unchanged.
    """
    d = _check_direction(direction)
    if not is_signed_permutation(d):
        return data, spacing, origin, d
    d = np.round(d)
    lead = data.ndim - 3
    shape = np.asarray(data.shape[lead:])
    # Array axis c points along physical axis perm[c] with sign sign[c].
    perm = np.argmax(np.abs(d), axis=0)
    sign = d[perm, np.arange(3)]
    order = np.argsort(perm)  # new axis r comes from old axis order[r]
    data = data.transpose(*range(lead), *(lead + order))
    new_spacing = spacing[order]
    new_shape = shape[order]
    new_origin = origin.copy()
    flips: list[slice] = []
    for r, c in enumerate(order):
        if sign[c] < 0:
            new_origin[r] = origin[r] - spacing[c] * (shape[c] - 1)
            flips.append(slice(None, None, -1))
        else:
            flips.append(slice(None))
    if any(f.step == -1 for f in flips):
        data = data[(Ellipsis, *flips)]
    assert tuple(data.shape[lead:]) == tuple(new_shape)
    return data, new_spacing, new_origin, np.eye(3)


def load(image: xr.DataArray) -> xr.DataArray:
    """``image`` with its data in memory (numpy), computed on this thread (safe inside dask
    tasks and worker processes)."""
    data = image.data
    if hasattr(data, "compute"):
        data = data.compute(scheduler="synchronous")
    return image.copy(data=np.asarray(data))


def make_image(
    data: Any,
    *,
    spacing: Any,
    origin: Any = None,
    direction: Any = None,
    unit: str = "micrometer",
    dims: Sequence[str] | None = None,
    name: str = "image",
    attrs: dict[str, Any] | None = None,
) -> xr.DataArray:
    """Make a physically annotated image from an array.

    Parameters
    ----------
    data : array-like
        numpy or dask array, last three axes z, y, x (optionally preceded by t and/or c).
        It is not copied or computed; numpy input is wrapped in a dask array.
    spacing : float or sequence of 3 floats
        Voxel size in z, y, x order, in ``unit``.
    origin : sequence of 3 floats, optional
        Physical position (z, y, x) of the centre of voxel (0, 0, 0). Default 0.
    direction : 3×3 array, optional
        Direction cosines in z, y, x order (column j: physical direction of array axis j).
        A signed permutation is normalised away lazily; an oblique one is kept.
    unit : str
        Length unit of ``spacing`` and ``origin`` (e.g. ``"micrometer"``, ``"um"``, ``"mm"``).
    dims, name, attrs
        Dimension names (default inferred), array name and free-form attributes.

    Returns
    -------
    xarray.DataArray

    Examples
    --------
    >>> import numpy as np
    >>> img = make_image(np.zeros((4, 5, 6), "uint16"), spacing=(2.0, 1.0, 1.0), unit="um")
    >>> spacing(img), units(img)
    ((2.0, 1.0, 1.0), 'micrometer')
    """
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    dims = _dims_for(data.ndim, dims)
    if any(n == 0 for n in data.shape):
        raise InputError(f"The volume is empty (shape {tuple(data.shape)}).")
    unit = normalize_unit(unit)
    sp = validate_spacing(spacing)
    org = np.zeros(3) if origin is None else _vec3(origin, "Origin")
    source_direction = np.eye(3) if direction is None else _check_direction(direction)
    if isinstance(data, np.ndarray):
        data = da.from_array(data, chunks="auto")
    data, sp, org, dirn = normalize_direction(data, sp, org, source_direction)
    frame_origin = dirn.T @ org  # coordinates live in the image's own frame
    shape = data.shape[-3:]
    coords: dict[str, Any] = {}
    for k, dim in enumerate(SPATIAL_DIMS):
        values = frame_origin[k] + sp[k] * np.arange(shape[k], dtype=np.float64)
        coords[dim] = xr.Variable(
            dim, values, attrs={"units": unit, "long_name": dim, "spacing": float(sp[k])}
        )
    for dim in dims[:-3]:
        coords[dim] = np.arange(data.shape[dims.index(dim)])
    space_attrs: dict[str, Any] = {"direction": dirn.tolist()}
    if not np.allclose(source_direction, np.eye(3)):
        space_attrs["source_direction"] = source_direction.tolist()
    coords[_SPACE] = xr.Variable((), 0, attrs=space_attrs)
    return xr.DataArray(data, dims=dims, coords=coords, name=name, attrs=dict(attrs or {}))


def _check_image(image: xr.DataArray) -> None:
    if not isinstance(image, xr.DataArray) or any(d not in image.dims for d in SPATIAL_DIMS):
        raise InputError(
            "Expected an xarray.DataArray with dims ending in ('z', 'y', 'x'); "
            "make one with ngffreg.make_image or ngffreg.open_image."
        )


def spacing(image: xr.DataArray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in the image's units: the step of each coordinate, or the
    ``spacing`` its attributes hold where that is the step up to rounding (the step of
    coordinates ``origin + i * spacing`` can be off in its last bit)."""
    _check_image(image)
    out = []
    for dim in SPATIAL_DIMS:
        c = image.coords[dim]
        if c.size >= 2:
            step = float(c.values[1] - c.values[0])
            said = c.attrs.get("spacing")
            exact = said is not None and abs(float(said) - step) <= 1e-9 * abs(step)
            out.append(float(said) if exact else step)
        elif "spacing" in c.attrs:
            out.append(float(c.attrs["spacing"]))
        else:
            raise InputError(f"Axis {dim!r} has one voxel and no 'spacing' attribute.")
    return tuple(out)  # type: ignore[return-value]


def direction(image: xr.DataArray) -> np.ndarray:
    """Direction cosines (3×3, z, y, x); the identity unless the image is oblique."""
    _check_image(image)
    if _SPACE in image.coords and "direction" in image.coords[_SPACE].attrs:
        return np.asarray(image.coords[_SPACE].attrs["direction"], dtype=np.float64)
    return np.eye(3)


def source_direction(image: xr.DataArray) -> np.ndarray:
    """Direction of the source before signed-permutation normalisation (z, y, x)."""
    if _SPACE in image.coords and "source_direction" in image.coords[_SPACE].attrs:
        return np.asarray(image.coords[_SPACE].attrs["source_direction"], dtype=np.float64)
    return direction(image)


def origin(image: xr.DataArray) -> tuple[float, float, float]:
    """Physical position (z, y, x) of the centre of voxel (0, 0, 0)."""
    _check_image(image)
    frame = np.array([float(image.coords[d].values[0]) for d in SPATIAL_DIMS])
    return tuple(float(v) for v in direction(image) @ frame)  # type: ignore[return-value]


def units(image: xr.DataArray) -> str:
    """The length unit of the spatial axes (they must agree)."""
    _check_image(image)
    found = {image.coords[d].attrs.get("units", "") for d in SPATIAL_DIMS}
    if len(found) != 1 or "" in found:
        raise InputError(
            f"The spatial axes carry units {sorted(found)}; they need one common length unit. "
            "Set it with ngffreg.to_units or pass --unit."
        )
    return found.pop()


def index_to_physical(image: xr.DataArray, index: Any) -> np.ndarray:
    """Physical positions (N, 3; z, y, x) of voxel indices (N, 3; z, y, x) of ``image``."""
    idx = np.atleast_2d(np.asarray(index, dtype=np.float64))
    frame = np.asarray([float(image.coords[d].values[0]) for d in SPATIAL_DIMS])
    frame = frame + idx * np.asarray(spacing(image))
    return frame @ direction(image).T


def physical_bbox(image: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper physical corners (z, y, x) of the voxel centres."""
    shape = np.asarray([image.sizes[d] for d in SPATIAL_DIMS])
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1).T
    pts = index_to_physical(image, corners)
    return pts.min(axis=0), pts.max(axis=0)


def select_box(image: xr.DataArray, lower: Any, upper: Any, *, margin: float = 0.0) -> xr.DataArray:
    """The lazy block of ``image`` whose voxel centres lie in the physical box
    ``[lower - margin, upper + margin]`` (z, y, x, in the image's units).

    For an oblique image the box is mapped into the image's frame and its bounding box
    taken, so the block covers at least the requested region.

    Raises :class:`~ngffreg.errors.InputError` when the box misses the image.
    """
    _check_image(image)
    lo = _vec3(lower, "Box lower corner") - margin
    hi = _vec3(upper, "Box upper corner") + margin
    if np.any(hi < lo):
        raise InputError(f"Box lower corner {lo.tolist()} exceeds upper corner {hi.tolist()}.")
    d = direction(image)
    if not np.allclose(d, np.eye(3)):
        corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
        frame = corners @ d
        lo, hi = frame.min(axis=0), frame.max(axis=0)
    eps = 1e-9 * np.maximum(1.0, np.abs(np.concatenate([lo, hi]))).max()
    block = image.sel({dim: slice(lo[k] - eps, hi[k] + eps) for k, dim in enumerate(SPATIAL_DIMS)})
    if any(block.sizes[dim] == 0 for dim in SPATIAL_DIMS):
        blo, bhi = physical_bbox(image)
        raise InputError(
            f"The box {lo.tolist()}–{hi.tolist()} ({units(image)}) holds no voxel of the image, "
            f"whose voxel centres span {blo.tolist()}–{bhi.tolist()}."
        )
    return block


def to_units(image: xr.DataArray, unit: str) -> xr.DataArray:
    """The same image with coordinates expressed in ``unit`` (data untouched)."""
    unit = normalize_unit(unit)
    factor = unit_factor(units(image), unit)
    new = {}
    for dim in SPATIAL_DIMS:
        c = image.coords[dim]
        attrs = dict(c.attrs, units=unit)
        if "spacing" in attrs:
            attrs["spacing"] = float(attrs["spacing"]) * factor
        new[dim] = xr.Variable(dim, c.values * factor, attrs=attrs)
    return image.assign_coords(new)


def describe(image: xr.DataArray) -> dict[str, Any]:
    """A JSON-ready summary: shape, dtype, spacing, origin, direction, units, chunks."""
    chunks = None
    if image.chunks is not None:
        chunks = [int(c[0]) for c in image.chunks]
    return {
        "dims": list(image.dims),
        "shape": [int(n) for n in image.shape],
        "dtype": str(image.dtype),
        "spacing": list(spacing(image)),
        "origin": list(origin(image)),
        "direction": direction(image).tolist(),
        "source_direction": source_direction(image).tolist(),
        "units": units(image),
        "chunks": chunks,
    }


def apply_linear(points: np.ndarray, matrix: np.ndarray, offset: Any = None) -> np.ndarray:
    """``points @ matrix.T (+ offset)`` for (N, 3) points and a 3×3 matrix, without BLAS.

    OpenBLAS parallelises even this thin product and its threads spin-wait against dask's
    (0.05 s becomes 0.5 s per 2 M points on a busy machine); three multiply-adds do not.
    """
    m = np.asarray(matrix, dtype=np.float64)
    out = points[:, :1] * m[:, 0]
    out += points[:, 1:2] * m[:, 1]
    out += points[:, 2:3] * m[:, 2]
    if offset is not None:
        out += offset
    return out


class Grid:
    """The physical sampling grid of an image: ``shape``, ``spacing``, the origin in the
    image's own frame (``frame_origin``), ``direction`` and ``unit`` (z, y, x).

    A grid point ``index`` is at ``direction @ (frame_origin + spacing * index)``.
    """

    __slots__ = ("direction", "frame_origin", "shape", "spacing", "unit")

    def __init__(self, shape: Any, spacing: Any, frame_origin: Any, direction: Any = None,
                 unit: str = "micrometer") -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = validate_spacing(spacing)
        self.frame_origin = _vec3(frame_origin, "Origin")
        self.direction = np.eye(3) if direction is None else _check_direction(direction)
        self.unit = normalize_unit(unit)

    @classmethod
    def of(cls, image: xr.DataArray) -> Grid:
        """The grid of an image (its last three dims z, y, x)."""
        _check_image(image)
        frame = [float(image.coords[d].values[0]) for d in SPATIAL_DIMS]
        return cls([image.sizes[d] for d in SPATIAL_DIMS], spacing(image), frame,
                   direction(image), units(image))

    @classmethod
    def from_origin(cls, shape: Any, spacing: Any, origin: Any = None, direction: Any = None,
                    unit: str = "micrometer") -> Grid:
        """A grid given its physical ``origin`` (the centre of voxel 0, 0, 0)."""
        d = np.eye(3) if direction is None else _check_direction(direction)
        org = np.zeros(3) if origin is None else _vec3(origin, "Origin")
        return cls(shape, spacing, d.T @ org, d, unit)

    @property
    def origin(self) -> np.ndarray:
        return self.direction @ self.frame_origin

    @property
    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(self.direction, np.eye(3)))

    def matches(self, other: Grid) -> bool:
        """Whether ``other`` is the same grid: shape and unit, spacing (relative 1e-6),
        origin (within 1e-6 of the largest spacing) and direction (1e-9)."""
        tol = 1e-6 * float(np.max(self.spacing))
        return (self.shape == other.shape and self.unit == other.unit
                and np.allclose(self.spacing, other.spacing, rtol=1e-6, atol=0)
                and np.allclose(self.frame_origin, other.frame_origin, rtol=0, atol=tol)
                and np.allclose(self.direction, other.direction, atol=1e-9))

    def points(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Physical positions (N, 3) of the grid points in ``region`` (C order)."""
        region = region or tuple(slice(0, n) for n in self.shape)
        axes = [self.frame_origin[k] + self.spacing[k]
                * np.arange(*region[k].indices(self.shape[k])) for k in range(3)]
        frame = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        return frame if self.is_axis_aligned else apply_linear(frame, self.direction)

    def continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous indices (N, 3; z, y, x) of physical points."""
        if self.is_axis_aligned:
            return (points - self.frame_origin) / self.spacing
        return (apply_linear(points, self.direction.T) - self.frame_origin) / self.spacing

    def inside(self, cidx: np.ndarray) -> np.ndarray:
        """Which continuous indices fall in the grid, by ITK's rule: ``[-0.5, n - 0.5)``."""
        return np.all((cidx >= -0.5) & (cidx < np.asarray(self.shape) - 0.5), axis=1)

    def image(self, data: Any, *, dims: Sequence[str] | None = None, name: str = "image",
              attrs: dict[str, Any] | None = None) -> xr.DataArray:
        """An image on this grid holding ``data`` (last three axes z, y, x)."""
        return make_image(data, spacing=self.spacing, origin=self.origin,
                          direction=self.direction, unit=self.unit, dims=dims, name=name,
                          attrs=attrs)
