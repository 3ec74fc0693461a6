"""The base of every transform: points in physical (z, y, x) space, and :class:`Transform`.

Every transform maps points given as an ``(N, 3)`` array of physical positions in
z, y, x order (the units of the images they relate) to points in the same order.
A registration result maps fixed-space points to moving-space points.

Types (each one small, immutable object)
----------------------------------------
:class:`~ngffreg.transforms.linear.Identity`, ``Translation``, ``Scale``, ``Affine``
(:mod:`ngffreg.transforms.linear`: exact inverses),
:class:`~ngffreg.transforms.field.DisplacementField` (:mod:`ngffreg.transforms.field`: a lazy,
chunked field on a physical grid, ``T(p) = p + d(p)``, linear interpolation),
:class:`~ngffreg.transforms.spline.ThinPlateSpline` (landmark-driven),
:class:`~ngffreg.transforms.composite.Sequence` (applied first to last, as NGFF ``sequence``)
and :class:`~ngffreg.transforms.composite.Bijection` (a forward transform with its inverse).

Each transform may name the coordinate system it maps from (``input``) and to
(``output``); a :class:`Sequence` whose names do not chain is refused.

Points are processed in batches of ``batch_size``; a displacement field is read one
region (or one chunk) at a time, so memory stays bounded by the batch and the chunk,
never by the field.

A transform's ``repr`` says what it is in physical terms (shapes, spacings, origins,
translations), never its arrays, and computes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import TransformError
from ..image import Grid

if TYPE_CHECKING:
    from .composite import Sequence
    from .linear import Affine

#: Points pushed through a transform per batch.
DEFAULT_BATCH = 1_000_000

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


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Transform:
    """Base class. ``input``/``output`` name the coordinate systems mapped from and to."""

    name: str | None = None
    input: str | None = None
    output: str | None = None

    is_linear: ClassVar[bool] = False

    # -- description --------------------------------------------------------
    def __repr__(self) -> str:
        parts = [f"name={self.name!r}", *self._describe(),
                 f"input={self.input!r}", f"output={self.output!r}"]
        return f"{type(self).__name__}({', '.join(parts)})"

    def _describe(self) -> list[str]:
        """What the repr shows between the name and the coordinate systems: physical
        sizes and shapes, never arrays; it must compute nothing."""
        return []

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
        from .composite import Sequence

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
        from .linear import Affine

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
# numbers for reprs
# ---------------------------------------------------------------------------
def _num(value: Any) -> str:
    """A number as a repr shows it: ``10``, ``-0.5``, ``1.2346e+06``."""
    return f"{float(value):.6g}"


def _numbers(values: Iterable[Any]) -> str:
    """``(10, -20, 5)``."""
    return "(" + ", ".join(_num(v) for v in values) + ")"


def _by(values: Iterable[Any]) -> str:
    """``48×96×96``, ``2×1×1``."""
    return "×".join(_num(v) for v in values)
