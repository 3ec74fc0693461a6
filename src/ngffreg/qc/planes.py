"""The planes the QC figures show: the display space (:class:`Frame`), the report level
of the registered pyramid, the three orthogonal planes through its centre with the fixed
and moving inputs resampled onto them (:func:`report_planes`), and the Jacobian
determinant of a displacement field on the same planes (:func:`jacobian_planes`).

Only the three planes are computed (the cost does not grow with the volume). A grid whose
direction is a signed permutation is shown in physical axes (z up in the y and x planes;
in the z plane, y grows downwards); an oblique one in its own grid axes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import subgrid
from ..image import Grid, is_signed_permutation, to_units, units
from ..pyramid import image_levels
from .metrics import jacobian_determinant, ncc
from .store import _summary

#: The report level: the finest level of the registered pyramid with at most this many voxels.
MAX_VOXELS = 8_000_000
#: Names of the display axes (physical z, y, x).
AXES = ("z", "y", "x")
#: Per plane (its normal, a display axis): (vertical axis, horizontal axis, vertical axis
#: growing downwards).
LAYOUT = {0: (1, 2, True), 1: (0, 2, False), 2: (0, 1, False)}
_SHORT_UNITS = {"millimeter": "mm", "micrometer": "µm", "nanometer": "nm", "meter": "m",
                "centimeter": "cm", "angstrom": "Å"}


def short_unit(unit: str) -> str:
    """``millimeter`` → ``mm``, ``micrometer`` → ``µm`` (other names as they are)."""
    return _SHORT_UNITS.get(unit, unit)


# ---------------------------------------------------------------------------------------
# display space
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """How a grid's index axes lie in the display space: grid axis ``k`` runs along display
    axis ``perm[k]``, its index ``i`` at coordinate ``start[k] + sign[k] * step[k] * i``.
    Display axes are the physical z, y, x for a grid whose direction is a signed permutation
    (the identity included), else the grid's own frame (``oblique``)."""

    shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    sign: tuple[float, float, float]
    start: tuple[float, float, float]
    step: tuple[float, float, float]
    oblique: bool = False

    @classmethod
    def of(cls, grid: Grid) -> Frame:
        d = grid.direction
        fo, sp = grid.frame_origin, grid.spacing
        if is_signed_permutation(d):
            perm = tuple(int(np.argmax(np.abs(d[:, k]))) for k in range(3))
            sign = tuple(float(np.sign(d[perm[k], k])) for k in range(3))
            start = tuple(sign[k] * float(fo[k]) for k in range(3))
            return cls(grid.shape, perm, sign, start, tuple(map(float, sp)))  # type: ignore
        return cls(grid.shape, (0, 1, 2), (1.0, 1.0, 1.0), tuple(map(float, fo)),  # type: ignore
                   tuple(map(float, sp)), oblique=True)

    def axis(self, q: int) -> int:
        """The grid axis along display axis ``q``."""
        return self.perm.index(q)

    def coord(self, k: int, index: Any) -> Any:
        """Display coordinate (along ``perm[k]``) of index ``index`` of grid axis ``k``."""
        return self.start[k] + self.sign[k] * self.step[k] * np.asarray(index, dtype=float)

    def span(self, k: int, lo: float = -0.5, hi: float | None = None) -> tuple[float, float]:
        """The display interval of indices ``[lo, hi]`` of grid axis ``k`` (voxel edges by
        default: the whole axis)."""
        hi = self.shape[k] - 0.5 if hi is None else hi
        a, b = float(self.coord(k, lo)), float(self.coord(k, hi))
        return min(a, b), max(a, b)

    def bounds(self) -> np.ndarray:
        """(3, 2) display extent per display axis (voxel edges)."""
        out = np.empty((3, 2))
        for k in range(3):
            out[self.perm[k]] = self.span(k)
        return out

    def index_of(self, q: int, c: float) -> tuple[int, int]:
        """The grid axis along display axis ``q`` and the index (clipped) nearest ``c``."""
        k = self.axis(q)
        i = (c - self.start[k]) / (self.sign[k] * self.step[k])
        return k, int(np.clip(np.round(i), 0, self.shape[k] - 1))

    def orient(self, plane: np.ndarray, q: int) -> tuple[np.ndarray, tuple[float, ...]]:
        """A 2-D plane (normal to display axis ``q``, its axes the remaining grid axes in
        order) as shown: rows along the vertical display axis, columns along the horizontal
        one, both growing with the coordinate; and its extent ``(left, right, bottom,
        top)`` for ``imshow(origin="lower")``."""
        k = self.axis(q)
        ka, kb = (j for j in range(3) if j != k)
        horizontal = LAYOUT[q][1]
        a = np.asarray(plane)
        kv, kh = ka, kb
        if self.perm[ka] == horizontal:
            a, kv, kh = a.T, kb, ka
        if self.sign[kv] < 0:
            a = a[::-1]
        if self.sign[kh] < 0:
            a = a[:, ::-1]
        (h0, h1), (v0, v1) = self.span(kh), self.span(kv)
        return np.ascontiguousarray(a), (h0, h1, v0, v1)

    def axis_label(self, q: int, unit: str) -> str:
        name = AXES[q] + ("′ (grid axis)" if self.oblique else "")
        return f"{name} ({short_unit(unit)})"


# ---------------------------------------------------------------------------------------
# the inputs
# ---------------------------------------------------------------------------------------
def _levels(image: Any, record: dict[str, Any] | None, unit: str, role: str,
            notes: list[str]) -> list[xr.DataArray] | None:
    """The levels of the ``role`` input in ``unit``: ``image`` (a path, image, pyramid or
    levels) if given, else the path recorded in ``summary.json``; ``None`` (with a note)
    when there is neither."""
    record = record or {}
    if image is None:
        path = record.get("path")
        if not path:
            notes.append(f"The {role} image was in memory when registered and is not "
                         f"available now: pass {role}= (or --{role} PATH to `ngffreg qc`) "
                         f"to show it.")
            return None
        if not Path(path).exists():
            notes.append(f"The {role} image {path} recorded at registration no longer "
                         f"exists: pass {role}= (or --{role} PATH to `ngffreg qc`).")
            return None
        image = path
    if isinstance(image, (str, os.PathLike)):
        levels = image_levels(Path(image), voxel_size=record.get("voxel_size"),
                              unit=record.get("unit"), name=role)
    else:
        levels = image_levels(image, name=role)
    return [lv if units(lv) == unit else to_units(lv, unit) for lv in levels]


# ---------------------------------------------------------------------------------------
# the planes of the overlay
# ---------------------------------------------------------------------------------------
@dataclass
class ReportPlanes:
    """The three planes (keys: display axis 0, 1, 2 = the plane normal to z, y, x) through
    the centre of the report level, as the figures show them: ``fixed``, ``before`` (moving
    through the identity) and ``after`` (the registered image), each an oriented 2-D array
    (rows along the vertical axis) or ``None`` when unavailable; ``extent`` per plane
    (``imshow(origin="lower")``), ``position`` the plane's coordinate on its normal."""

    level: int
    grid: Grid
    frame: Frame
    centre: np.ndarray
    unit: str
    after: dict[int, np.ndarray]
    fixed: dict[int, np.ndarray] | None
    before: dict[int, np.ndarray] | None
    extent: dict[int, tuple[float, ...]]
    position: dict[int, float]
    notes: list[str] = field(default_factory=list)

    def ncc(self, which: str) -> dict[int, float]:
        """NCC of the fixed plane with the ``"before"`` or ``"after"`` plane, per plane."""
        other = getattr(self, which)
        if self.fixed is None or other is None:
            return {}
        return {q: ncc(self.fixed[q], other[q]) for q in range(3)}


def report_level(levels: list[xr.DataArray], max_voxels: int = MAX_VOXELS) -> int:
    """The finest level with at most ``max_voxels`` voxels (else the coarsest)."""
    from ..pyramid import finest_level

    return finest_level([int(np.prod(lv.shape)) for lv in levels], max_voxels)


def _plane_grid(grid: Grid, k: int, index: int) -> Grid:
    region = [slice(None)] * 3
    region[k] = slice(index, index + 1)
    return subgrid(grid, tuple(region))  # type: ignore[arg-type]


def _isel(image: xr.DataArray, k: int, index: int) -> np.ndarray:
    return np.asarray(image.isel({AXES[k]: index}).values, dtype=np.float32)


def _resampled_plane(levels: list[xr.DataArray], grid: Grid, k: int, index: int
                     ) -> np.ndarray:
    """A plane of ``grid`` sampled from the best level of ``levels`` through the identity
    (the level itself when its grid is ``grid``)."""
    from ..transforms import Identity
    from ..warp import choose_moving_level, warp

    for lv in levels:
        if Grid.of(lv).matches(grid):
            return _isel(lv, k, index)
    # the coarsest level no coarser than the grid (nothing under-sampled, little read)
    lv = levels[choose_moving_level(levels, grid.spacing, grid.unit)[0]]
    out = warp(lv, Identity(), like=_plane_grid(grid, k, index), interpolator="linear")
    return np.asarray(out.values, dtype=np.float32).reshape(
        [n for j, n in enumerate(grid.shape) if j != k])


def report_planes(output_store: Any, *, fixed: Any = None, moving: Any = None,
                  max_voxels: int = MAX_VOXELS) -> ReportPlanes:
    """The planes the overlay and checkerboard figures show (see :class:`ReportPlanes`):
    on the report level of the registered pyramid, through its centre; ``fixed`` and
    ``moving`` as in :func:`write_report`."""
    from ..io.read import open_levels

    store = Path(output_store).expanduser()
    registered = open_levels(store, name="registered")
    level = report_level(registered, max_voxels)
    image = registered[level]
    grid = Grid.of(image)
    frame = Frame.of(grid)
    centre = frame.bounds().mean(axis=1)
    inputs = _summary(store).get("inputs") or {}
    notes: list[str] = []
    fixed_levels = _levels(fixed, inputs.get("fixed"), grid.unit, "fixed", notes)
    moving_levels = _levels(moving, inputs.get("moving"), grid.unit, "moving", notes)
    after: dict[int, np.ndarray] = {}
    fixed_planes: dict[int, np.ndarray] | None = {} if fixed_levels else None
    before: dict[int, np.ndarray] | None = {} if moving_levels and fixed_levels else None
    extent: dict[int, tuple[float, ...]] = {}
    position: dict[int, float] = {}
    for q in range(3):
        k, index = frame.index_of(q, float(centre[q]))
        position[q] = float(frame.coord(k, index))
        after[q], extent[q] = frame.orient(_isel(image, k, index), q)
        if fixed_planes is not None:
            fixed_planes[q] = frame.orient(
                _resampled_plane(fixed_levels, grid, k, index), q)[0]
        if before is not None:
            before[q] = frame.orient(
                _resampled_plane(moving_levels, grid, k, index), q)[0]
    if moving_levels and not fixed_levels:
        notes.append("Without the fixed image there is nothing to overlay the moving image "
                     "on; the registered image is shown alone.")
    return ReportPlanes(level, grid, frame, centre, grid.unit, after, fixed_planes, before,
                        extent, position, notes)


# ---------------------------------------------------------------------------------------
# the Jacobian determinant
# ---------------------------------------------------------------------------------------
def first_field(transform: Any) -> Any:
    """The first displacement field of a (bijection of a) sequence, or ``None``."""
    from ..transforms import DisplacementField, Sequence

    t = getattr(transform, "forward", transform)
    if isinstance(t, DisplacementField):
        return t
    if isinstance(t, Sequence):
        for step in t.transforms:
            found = first_field(step)
            if found is not None:
                return found
    return None


@dataclass
class JacobianPlanes:
    """The Jacobian determinant of a field on three planes (as :class:`ReportPlanes`),
    reduced by ``factor`` (block mean; ``folds`` marks blocks holding a value ≤ 0)."""

    name: str
    frame: Frame
    unit: str
    values: dict[int, np.ndarray]
    folds: dict[int, np.ndarray]
    extent: dict[int, tuple[float, ...]]
    position: dict[int, float]
    factor: int = 1


def jacobian_planes(field: Any, centre: Any, *, max_pixels: int = 1024,
                    tile_voxels: int = 400_000) -> JacobianPlanes:
    """``det(I + ∂u/∂p)`` of ``field`` on the planes through ``centre`` (display
    coordinates) normal to each axis, from slabs three voxels thick read tile by tile (the
    field is never loaded whole); planes wider than ``max_pixels`` are reduced."""
    grid = field.grid
    frame = Frame.of(grid)
    data = field.field.data
    values, folds, extent, position = {}, {}, {}, {}
    factor = max(1, math.ceil(max(grid.shape) / max_pixels))
    for q in range(3):
        k, index = frame.index_of(q, float(centre[q]))
        position[q] = float(frame.coord(k, index))
        ka, kb = (j for j in range(3) if j != k)
        na, nb = grid.shape[ka], grid.shape[kb]
        lo, hi = max(0, index - 1), min(grid.shape[k], index + 2)
        rows = max(factor, (tile_voxels // max(nb, 1)) // factor * factor)
        det = np.empty((na, nb), dtype=np.float64)
        for r0 in range(0, na, rows):
            r1 = min(na, r0 + rows)
            a0, a1 = max(0, r0 - 1), min(na, r1 + 1)
            region: list[slice] = [slice(None)] * 3
            region[k], region[ka] = slice(lo, hi), slice(a0, a1)
            u = np.asarray(data[(slice(None), *region)], dtype=np.float64)
            d = jacobian_determinant(u, grid.spacing, grid.direction)
            pick: list[Any] = [slice(None)] * 3
            pick[k], pick[ka] = index - lo, slice(r0 - a0, r1 - a0)
            det[r0:r1] = d[tuple(pick)]
        fold = det <= 0
        if factor > 1:
            det, fold = _reduce(det, factor, np.nanmean), _reduce(fold, factor, np.any)
        values[q], extent[q] = frame.orient(det, q)
        folds[q] = frame.orient(fold, q)[0]
    return JacobianPlanes(field.name or "field", frame, grid.unit, values, folds, extent,
                          position, factor)


def _reduce(a: np.ndarray, f: int, how: Any) -> np.ndarray:
    na, nb = a.shape
    pa, pb = -na % f, -nb % f
    if a.dtype == bool:
        padded = np.pad(a, ((0, pa), (0, pb)))
    else:
        padded = np.pad(a, ((0, pa), (0, pb)), constant_values=np.nan)
    return how(padded.reshape((na + pa) // f, f, (nb + pb) // f, f), axis=(1, 3))
