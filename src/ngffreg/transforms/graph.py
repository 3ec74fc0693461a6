"""Map points between any two named coordinate systems of an OME-Zarr 0.6 store.

The store's coordinate systems and transformations form a graph (ome/ngff-spec, "graph
connectedness"): systems are nodes, transformations edges. :func:`map_points` finds the
shortest path from the source system to the target one, walking an edge backwards where
the transformation can be inverted, and applies it to the points.

Where the graph comes from:

- the root group's ``scene`` (its own ``coordinateSystems`` and ``coordinateTransformations``)
  or its image ``multiscales`` (systems and named transformations; stores written before
  ngffreg's scene layout);
- each image group a scene transformation names by ``path``: its systems, keyed
  ``"path:name"``, and its multiscales transformations.

Systems are asked for by name: ``"fixed"``; a name that only an image group declares may be
given alone when no other group declares it, else as ``"path:name"``.

Transformations, in any number of dimensions: ``identity``, ``translation``, ``scale``,
``affine``, ``rotation``, ``mapAxis``, ``byDimension``, ``sequence`` and ``bijection``;
``displacements`` in 3-D (z, y, x fields, read by :mod:`ngffreg.transforms.ngff`). Inverses:
exact for the linear types, ``inverse`` for a bijection, and, for a displacement field,
the fixed point ``x = y - d(x)`` solved per point (it must converge). ``coordinates`` and
the other types are refused as unsupported (:class:`UnsupportedTransform`).

The command ``ngffreg map-points STORE SOURCE TARGET COORDS_JSON`` is this function in the
calling convention of the NGFF transformation conformance suite
(``ome-zarr-transformations-conformance``, its ``oztc`` runner).
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransformError
from .ngff.decode import read_field, read_parameters
from .ngff.store import (
    declared_systems,
    existing_store,
    read_json,
    referenced_images,
    referenced_systems,
    system_name,
    transform_holder,
)

#: Fixed-point iterations allowed to invert a displacement field at a point.
INVERSE_ITERATIONS = 200
#: ... and the tolerance, relative to the field's voxel size.
INVERSE_TOLERANCE = 1e-6


class UnsupportedTransform(TransformError):
    """A transformation type the mapper does not apply (or cannot invert)."""


@dataclasses.dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    entry: dict[str, Any]
    inverted: bool


def _graph(store: Path) -> tuple[dict[str, list[dict]], list[_Edge]]:
    root = transform_holder(read_json(store / "zarr.json"), store)
    images = referenced_images(store, root)
    systems = {**declared_systems(root), **referenced_systems(store, root, images)}
    entries = list(root.get("coordinateTransformations") or [])
    for key, image in images.items():
        for entry in image.get("coordinateTransformations") or []:
            entry = dict(entry)
            for side in ("input", "output"):
                name = system_name(entry.get(side))
                if name is not None and ":" not in name:
                    entry[side] = {"path": key, "name": name}
            entries.append(entry)
    edges = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        a, b = system_name(entry.get("input")), system_name(entry.get("output"))
        if a is None or b is None:
            continue
        edges += [_Edge(a, b, entry, False), _Edge(b, a, entry, True)]
    return systems, edges


def _resolve(name: str, systems: dict[str, list[dict]], what: str, store: Path) -> str:
    if name in systems:
        return name
    matches = [k for k in systems if k.split(":", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    raise TransformError(
        f"The {what} coordinate system {name!r} is not declared in {store}"
        f"{' unambiguously: say ' + ' or '.join(map(repr, matches)) if matches else ''} "
        f"(declared: {sorted(systems)}).")


def _path(source: str, target: str, edges: list[_Edge]) -> list[_Edge]:
    """The fewest edges from ``source`` to ``target``, forward edges preferred."""
    previous: dict[str, _Edge | None] = {source: None}
    queue = collections.deque([source])
    ordered = sorted(edges, key=lambda e: e.inverted)
    while queue:
        here = queue.popleft()
        if here == target:
            break
        for edge in ordered:
            if edge.source == here and edge.target not in previous:
                previous[edge.target] = edge
                queue.append(edge.target)
    if target not in previous:
        raise TransformError(f"No chain of transformations leads from {source!r} to {target!r}.")
    out = []
    while (edge := previous[target]) is not None:
        out.append(edge)
        target = edge.source
    return out[::-1]


def _linear(entry: dict[str, Any], n: int, store: Path, where: str) -> np.ndarray:
    """The ``(n+1, n+1)`` homogeneous matrix of a linear transformation."""
    kind = entry["type"]
    m = np.eye(n + 1)
    if kind == "translation":
        m[:n, n] = read_parameters(entry, "translation", store, where).reshape(n)
    elif kind == "scale":
        m[:n, :n] = np.diag(read_parameters(entry, "scale", store, where).reshape(n))
    elif kind == "rotation":
        m[:n, :n] = read_parameters(entry, "rotation", store, where).reshape(n, n)
    elif kind == "affine":
        a = read_parameters(entry, "affine", store, where)
        if a.shape not in ((n, n + 1), (n + 1, n + 1)):
            raise TransformError(f"{where}: a {n}-D affine is {n}×{n + 1}; got {a.shape}.")
        m[:n] = a[:n]
    elif kind == "mapAxis":
        order = [int(v) for v in entry.get("mapAxis") or []]
        if sorted(order) != list(range(n)):
            raise TransformError(f"{where}: mapAxis {order} is not a permutation of {n} axes.")
        m[:n, :n] = np.eye(n)[order]
    elif kind != "identity":
        raise UnsupportedTransform(f"{where}: {kind!r} is not linear.")
    return m


def _invert_field(field: Any, pts: np.ndarray, where: str) -> np.ndarray:
    """Points ``x`` with ``x + d(x) = y`` (the model's fixed-point inverse), or an error
    where it does not converge."""
    tol = INVERSE_TOLERANCE * float(np.min(field.grid.spacing))
    x, residual = field.apply_inverse(pts, tolerance=tol, max_iterations=INVERSE_ITERATIONS,
                                      return_residual=True)
    if residual.max(initial=0.0) > tol:
        raise TransformError(
            f"{where}: the displacement field could not be inverted at "
            f"{int((residual > tol).sum())} of {len(pts)} points (the fixed-point iteration "
            "did not converge: a fold, or points outside the field).")
    return x


def apply_entry(entry: dict[str, Any], pts: np.ndarray, store: Path, *, inverse: bool = False,
                where: str = "transformation") -> np.ndarray:
    """``pts`` (N, n) through one stored transformation (or its inverse)."""
    kind = entry.get("type")
    n = pts.shape[1]
    if kind in ("identity", "translation", "scale", "rotation", "affine", "mapAxis"):
        m = _linear(entry, n, store, where)
        if inverse:
            if abs(np.linalg.det(m)) < 1e-12:
                raise TransformError(f"{where}: the {kind} is singular; it has no inverse.")
            m = np.linalg.inv(m)
        return pts @ m[:n, :n].T + m[:n, n]
    if kind == "sequence":
        steps = entry.get("transformations") or []
        for i, step in (reversed(list(enumerate(steps))) if inverse else enumerate(steps)):
            pts = apply_entry(step, pts, store, inverse=inverse, where=f"{where}[{i}]")
        return pts
    if kind == "bijection":
        side = "inverse" if inverse else "forward"
        return apply_entry(entry[side], pts, store, where=f"{where}.{side}")
    if kind == "byDimension":
        out = np.full_like(pts, np.nan)
        for i, part in enumerate(entry.get("transformations") or []):
            src, dst = part.get("input_axes"), part.get("output_axes")
            if inverse:
                src, dst = dst, src
            out[:, dst] = apply_entry(part, pts[:, src], store, inverse=inverse,
                                      where=f"{where}[{i}]")
        if np.isnan(out).any():
            raise TransformError(f"{where}: byDimension leaves output axes undefined.")
        return out
    if kind == "displacements":
        if n != 3:
            raise UnsupportedTransform(f"{where}: ngffreg applies displacement fields in 3-D.")
        field = read_field(store, entry, {"name": entry.get("name")}, {}, where)
        return _invert_field(field, pts, where) if inverse else field.apply(pts)
    raise UnsupportedTransform(f"{where}: ngffreg does not apply {kind!r} transformations.")


def map_points(store: str | Path, source: str, target: str, points: Any) -> np.ndarray:
    """Map ``points`` (N, n; in the source system's axis order and unit) from the
    coordinate system ``source`` to ``target`` of an OME-Zarr 0.6 store.

    Raises
    ------
    TransformError
        An undeclared system, no chain of transformations between them, points of the
        wrong dimension, or a field that cannot be inverted.
    UnsupportedTransform
        A transformation type on the way that ngffreg does not apply.
    """
    path = existing_store(store)
    systems, edges = _graph(path)
    source = _resolve(source, systems, "source", path)
    target = _resolve(target, systems, "target", path)
    pts = np.asarray(points, dtype=np.float64)
    n = len(systems[source])
    if pts.ndim != 2 or pts.shape[1] != n:
        raise TransformError(f"{source!r} has {n} axes; the points must be (N, {n}), "
                             f"got shape {pts.shape}.")
    for edge in _path(source, target, edges):
        where = f"{edge.entry.get('name') or edge.entry.get('type')} ({edge.source} → " \
                f"{edge.target})"
        pts = apply_entry(edge.entry, pts, path, inverse=edge.inverted, where=where)
    return pts


__all__ = ["UnsupportedTransform", "apply_entry", "map_points"]
