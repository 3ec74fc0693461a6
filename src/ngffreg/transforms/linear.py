"""Linear transforms: :class:`Identity`, :class:`Translation`, :class:`Scale` and
:class:`Affine` (z, y, x), each with an exact inverse and a 4×4 homogeneous ``matrix``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import TransformError
from ..image import Grid, apply_linear
from .base import DEFAULT_BATCH, Transform, _frozen, _grid_axes, _numbers, _vector


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


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
class Identity(_Linear):
    """The identity map."""

    @property
    def matrix(self) -> np.ndarray:
        return np.eye(4)

    def _apply(self, points: np.ndarray) -> np.ndarray:
        return points.copy()

    def inverse(self) -> Identity:
        return Identity(**self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
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

    def _describe(self) -> list[str]:
        return [f"translation {_numbers(self.translation)}"]

    def inverse(self) -> Translation:
        return Translation(translation=-self.translation, **self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
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

    def _describe(self) -> list[str]:
        return [f"scale {_numbers(self.scale)}"]

    def inverse(self) -> Scale:
        if np.any(self.scale == 0):
            raise TransformError(f"The scale {self.scale.tolist()} has a zero; it has no inverse.")
        return Scale(scale=1.0 / self.scale, **self._swapped())


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
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

    def _describe(self) -> list[str]:
        return ["3-D", f"translation {_numbers(self.matrix[:3, 3])}",
                f"linear part {_linear_part(self.matrix[:3, :3])}"]

    def inverse(self) -> Affine:
        if abs(np.linalg.det(self.matrix[:3, :3])) < 1e-12 * max(
            1.0, float(np.abs(self.matrix[:3, :3]).max()) ** 3
        ):
            raise TransformError("The affine matrix is singular; it has no inverse.")
        return Affine(matrix=np.linalg.inv(self.matrix), **self._swapped())


def _linear_part(a: np.ndarray) -> str:
    """The 3×3 linear part of an affine in words (for its repr)."""
    if np.array_equal(a, np.eye(3)):
        return "identity"
    if np.array_equal(a, np.diag(np.diag(a))):
        return f"scale {_numbers(np.diag(a))}"
    stretch = np.linalg.svd(a, compute_uv=False)
    if np.allclose(stretch, 1.0, rtol=0, atol=1e-9):
        return "rotation" if np.linalg.det(a) > 0 else "rotation with reflection"
    return f"general, singular values {_numbers(stretch)}"
