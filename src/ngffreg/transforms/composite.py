"""Composite transforms: :class:`Sequence` (steps applied first to last, NGFF ``sequence``)
and :class:`Bijection` (a forward transform kept with its inverse, NGFF ``bijection``).

Walking a transform's steps is done here, once, for the whole package and its users:
:func:`steps_of` (the top-level steps), :func:`iter_steps` (every step, nested sequences
flattened, bijections through their forward transform) and :func:`map_fields` (the same
transform with each displacement field replaced).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TransformError
from ..image import Grid
from .base import DEFAULT_BATCH, Transform, as_points
from .field import DisplacementField
from .linear import Affine


def _check_chain(transforms: tuple[Transform, ...]) -> None:
    for i, (a, b) in enumerate(itertools.pairwise(transforms)):
        if a.output is not None and b.input is not None and a.output != b.input:
            raise TransformError(
                f"The transforms do not chain: step {i} ({type(a).__name__}) maps to "
                f"{a.output!r} but step {i + 1} ({type(b).__name__}) maps from {b.input!r}. "
                "Reorder them, or give the coordinate systems matching names.")


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
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

    def _describe(self) -> list[str]:
        return [f"steps=[{', '.join(map(repr, self.transforms))}]"]

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


@dataclass(frozen=True, eq=False, kw_only=True, repr=False)
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

    def _describe(self) -> list[str]:
        return [f"forward={self.forward!r}", f"inverse={self.inverse_transform!r}"]

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
# walking the steps
# ---------------------------------------------------------------------------
def steps_of(transform: Transform) -> tuple[Transform, ...]:
    """The top-level steps of a :class:`Sequence` (first applied first), or the transform
    alone."""
    return transform.transforms if isinstance(transform, Sequence) else (transform,)


def iter_steps(transform: Transform, *, exact: bool = False) -> Iterator[Transform]:
    """The steps ``transform`` applies, first applied first: nested sequences flattened, a
    bijection walked through its forward transform, any other transform yielded as is.

    With ``exact``, only a :class:`Sequence` or :class:`Bijection` itself is walked into; an
    instance of a subclass (which may change what its steps do) is yielded as one step.
    """
    def walks(kind: type) -> bool:
        return type(transform) is kind if exact else isinstance(transform, kind)

    if walks(Sequence):
        for t in transform.transforms:
            yield from iter_steps(t, exact=exact)
    elif walks(Bijection):
        yield from iter_steps(transform.forward, exact=exact)
    else:
        yield transform


def map_fields(transform: Any, fn: Callable[[DisplacementField], Transform]) -> Any:
    """``transform`` with ``fn`` applied to each of its displacement fields, through
    sequences and bijections (``None`` stays ``None``)."""
    if isinstance(transform, Sequence):
        return dataclasses.replace(transform, transforms=tuple(
            map_fields(t, fn) for t in transform.transforms))
    if isinstance(transform, Bijection):
        return dataclasses.replace(transform, forward=map_fields(transform.forward, fn),
                                   inverse_transform=map_fields(transform.inverse_transform, fn))
    if isinstance(transform, DisplacementField):
        return fn(transform)
    return transform
