"""A reader that knows only the OME-NGFF 0.6 (RFC-5) specification: a test oracle.

It maps points through the coordinate transformations of an OME-Zarr 0.6 image store
using nothing but ``json``, ``pathlib``, ``numpy``, ``zarr`` (v3) and
``scipy.ndimage.map_coordinates``. It deliberately does **not** import ngffreg: tests
compare its result with ngffreg's own reader and CLI, so a writer that stores something
the specification does not say would show up as a disagreement.

Entry point: :func:`map_points` (``store, points -> points``), pytest-free so that
pipeline tests can call it on registration output stores.

What the specification says, and how it is read here (ome/ngff-spec ``index.md``,
0.6.dev3, the text after RFC-5 response 2):

- **Where the transform is.** ``attributes.ome.multiscales[0]`` holds
  ``coordinateSystems``, ``datasets`` and ``coordinateTransformations``. Each dataset's
  single transformation maps its array to the *intrinsic* coordinate system (its
  ``output``; the same for all datasets). "Inside ``multiscales > coordinateTransformations``
  ... the input to every one of these transformations MUST be the intrinsic coordinate
  system. The output can be another coordinate system defined under
  ``multiscales > coordinateSystems``." So the fixed system is the intrinsic one and the
  registration is the transformation whose ``input`` is it and whose ``output`` is another
  declared system; nothing here relies on the names ``fixed``/``moving``.
- **input / output** are objects ``{"name": ..., "path": ...}`` (a bare string, as in
  earlier drafts, is accepted too). Wrapped transformations (inside ``sequence``,
  ``bijection``) may omit them.
- **Points** are ordered as the axes of their coordinate system; parameter arrays are
  indexed the same way. Points are not converted between units: they are taken in the
  units of the input system and come back in those of the output system.
- ``identity``; ``translation`` (``translation`` or ``path``); ``scale`` (``scale`` or
  ``path``); ``affine``: the upper ``M x (N+1)`` block of the homogeneous matrix, rows in
  the output system's axis order, inline (``affine``, an array of rows) or a 2-D zarr array
  at ``path``; a full ``(N+1) x (N+1)`` homogeneous matrix (last row ``0 … 0 1``) is
  accepted too. When both inline values and ``path`` are given, ``path`` wins (the 0.5-era
  text: "If both are present, the binary values at path should be used").
  ``rotation``: an ``N x N`` matrix, likewise.
- ``sequence``: "apply the first transformation in the array ... Next, apply the second
  ... The output of the last transformation is the result of the sequence."
- ``bijection``: ``forward`` and ``inverse``; mapping input to output uses ``forward``.
- ``displacements``: ``path`` locates the field in "this (or another) container"; here it
  is resolved relative to the Zarr group whose ``zarr.json`` holds the transformation (the
  store root), as in the specification's own example
  (``"path": "coordinateTransformations/displacementField"`` next to a multiscales whose
  field group is a multiscales image). The field is either such a multiscales group (its
  first, highest-resolution dataset is used) or a bare array whose attributes carry
  ``coordinateSystems`` and ``coordinateTransformations``. Its coordinate system "MUST
  contain an axis identical to every axis of its input coordinate system in the same
  order" and "exactly one axis with type displacement" whose length equals the output
  dimension; "the i-th value of the array along the displacement axis refers to the
  displacement of the i-th output axis". The output is ``p + d(p)``, where ``d`` is found
  by mapping ``p`` through the inverse of the field's own array-to-field transformation
  (a ``scale``, ``identity`` or ``sequence[scale, translation]``) and interpolating.
  ``interpolation`` is ``linear`` by default; ``nearest`` is also read; others raise.
- **Outside the field** (the specification says nothing): a point is inside when, along
  every spatial axis, its continuous index ``i`` lies in ``[-0.5, n - 0.5)`` (the union of
  the field's voxels, by the specification's "coordinate convention": a voxel is the
  half-open box ``[-0.5, 0.5)`` around its centre); inside, values beyond the outermost
  voxel centres repeat the edge value. A point outside gets **zero displacement**. This
  is ITK's and ANTs' rule.

Anything else (``coordinates``, ``mapAxis``, ``byDimension``, ``inverseOf``, other
interpolations, an array-coordinate-system ``input``) raises :class:`SpecReaderError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy.ndimage import map_coordinates

__all__ = ["SUPPORTED_TYPES", "SpecReaderError", "apply_transformation", "find_registration",
           "map_points", "read_root"]

SUPPORTED_TYPES = ("identity", "translation", "scale", "affine", "rotation", "sequence",
                   "bijection", "displacements")
_INTERPOLATION_ORDER = {"linear": 1, "nearest": 0}


class SpecReaderError(ValueError):
    """The store is not something this spec-only reader can map points through."""


# ---------------------------------------------------------------------------
# metadata
# ---------------------------------------------------------------------------
def _read_node(path: Path) -> dict[str, Any]:
    meta = path / "zarr.json"
    if not meta.is_file():
        raise SpecReaderError(f"{path} is not a Zarr v3 node (no zarr.json).")
    return json.loads(meta.read_text())


def read_root(store_path: str | Path) -> dict[str, Any]:
    """``attributes.ome.multiscales[0]`` of an OME-Zarr 0.6 image store."""
    doc = _read_node(Path(store_path))
    ome = doc.get("attributes", {}).get("ome")
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        raise SpecReaderError(f"{store_path} holds no attributes.ome.multiscales.")
    version = str(ome.get("version", ""))
    if not version.startswith("0.6"):
        raise SpecReaderError(
            f"{store_path} is OME-Zarr {version or '(no version)'}; this reader reads 0.6.")
    ms = ome["multiscales"][0]
    if not ms.get("coordinateSystems"):
        raise SpecReaderError(f"{store_path}: multiscales[0] has no coordinateSystems.")
    return ms


def read_scene(store_path: str | Path) -> dict[str, Any] | None:
    """``attributes.ome.scene`` of an OME-Zarr 0.6 scene group, or None when the group is
    not a scene."""
    doc = _read_node(Path(store_path))
    ome = doc.get("attributes", {}).get("ome")
    if not isinstance(ome, dict) or not isinstance(ome.get("scene"), dict):
        return None
    if not str(ome.get("version", "")).startswith("0.6"):
        raise SpecReaderError(f"{store_path} is not an OME-Zarr 0.6 scene.")
    scene = ome["scene"]
    if not scene.get("coordinateTransformations"):
        raise SpecReaderError(f"{store_path}: the scene has no coordinateTransformations.")
    return scene


def find_scene_registration(scene: dict[str, Any], *, name: str | None = None,
                            where: str = "store") -> dict[str, Any]:
    """The scene transformation between two of the scene's own coordinate systems.

    "Inside scene > coordinateTransformations ... path ... MAY be omitted or null when
    referencing a coordinate system defined in the scene's own coordinateSystems." The
    scene's first system is its reference ("it is RECOMMENDED that this coordinate system
    be stored as the first coordinateSystems entry"): the transformation sought maps from
    it to another scene system. ``name`` picks one when there are several.
    """
    systems = _systems(scene)
    if not systems:
        raise SpecReaderError(f"{where}: the scene declares no coordinateSystems of its own.")
    reference = scene["coordinateSystems"][0]["name"]

    def own(ref: Any) -> bool:
        return not (isinstance(ref, dict) and ref.get("path")) and _cs_name(ref) in systems

    candidates = [t for t in scene["coordinateTransformations"]
                  if own(t.get("input")) and own(t.get("output"))
                  and _cs_name(t.get("input")) == reference
                  and _cs_name(t.get("output")) != reference]
    return _the_one(candidates, name, where, f"scene transformation from the reference "
                    f"system {reference!r} to another scene system")


def _the_one(candidates: list[dict[str, Any]], name: str | None, where: str,
             what: str) -> dict[str, Any]:
    """The one candidate (``name`` picks among several), or an error saying what was found."""
    if name is not None:
        candidates = [t for t in candidates if t.get("name") == name]
    if len(candidates) != 1:
        raise SpecReaderError(
            f"{where}: expected one {what}{f' named {name!r}' if name else ''}; found "
            f"{[(t.get('name'), _cs_name(t.get('output'))) for t in candidates]}.")
    return candidates[0]


def _cs_name(ref: Any) -> str | None:
    """The coordinate-system name of an ``input``/``output`` (object or bare string)."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict):
        return ref.get("name")
    return None


def _systems(ms: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {cs["name"]: list(cs["axes"]) for cs in ms.get("coordinateSystems", [])}


def _intrinsic(ms: dict[str, Any], where: str) -> str:
    """The coordinate system every dataset's transformation outputs."""
    names = set()
    for ds in ms.get("datasets", []):
        cts = ds.get("coordinateTransformations") or []
        if len(cts) != 1:
            raise SpecReaderError(
                f"{where}: dataset {ds.get('path')!r} must have exactly one "
                f"coordinateTransformation; it has {len(cts)}.")
        names.add(_cs_name(cts[0].get("output")))
    if len(names) != 1 or None in names:
        raise SpecReaderError(
            f"{where}: the datasets must all map to one named coordinate system; "
            f"they map to {sorted(map(str, names))}.")
    name = names.pop()
    if name not in _systems(ms):
        raise SpecReaderError(f"{where}: the datasets map to {name!r}, which is not declared.")
    return name


def find_registration(ms: dict[str, Any], *, name: str | None = None,
                      where: str = "store") -> dict[str, Any]:
    """The multiscales transformation from the intrinsic system to another declared one.

    With several candidates, ``name`` picks one by its ``name``; otherwise it is an error.
    """
    systems = _systems(ms)
    intrinsic = _intrinsic(ms, where)
    candidates = [
        t for t in ms.get("coordinateTransformations") or []
        if _cs_name(t.get("input")) == intrinsic
        and _cs_name(t.get("output")) in systems
        and _cs_name(t.get("output")) != intrinsic
    ]
    return _the_one(candidates, name, where, f"transformation from the intrinsic system "
                    f"{intrinsic!r} to another declared system")


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def _parameters(entry: dict[str, Any], key: str, group: Path, where: str) -> np.ndarray:
    """Inline ``key`` values, or the zarr array at ``path`` (which wins when both exist)."""
    if isinstance(entry.get("path"), str):
        return np.asarray(zarr.open_array(str(group / entry["path"]), mode="r")[...],
                          dtype=np.float64)
    if key in entry:
        return np.asarray(entry[key], dtype=np.float64)
    raise SpecReaderError(f"{where}: a {entry['type']!r} needs {key!r} or 'path'.")


def _affine(entry: dict[str, Any], pts: np.ndarray, group: Path, where: str) -> np.ndarray:
    m = _parameters(entry, "affine", group, where)
    n = pts.shape[1]
    if m.ndim != 2 or m.shape[1] != n + 1:
        raise SpecReaderError(f"{where}: an affine on {n}-D points needs {n + 1} columns; "
                              f"got shape {m.shape}.")
    if m.shape[0] == n + 1:  # full homogeneous matrix: its last row must be 0 ... 0 1
        last = np.zeros(n + 1)
        last[-1] = 1.0
        if not np.array_equal(m[-1], last):
            raise SpecReaderError(f"{where}: a square affine's last row must be {last}.")
        m = m[:-1]
    return pts @ m[:, :n].T + m[:, n]


def _field_node(group: Path, rel: str, where: str):
    """(array, field coordinate system axes, array->field scale, translation) of the
    displacement field at ``rel``: a multiscales group or a bare annotated array."""
    if not isinstance(rel, str) or not rel:
        raise SpecReaderError(f"{where}: a displacements transformation needs a 'path'.")
    root = group / rel.lstrip("/")
    doc = _read_node(root)
    attrs = doc.get("attributes", {})
    meta = attrs.get("ome", attrs)
    if doc.get("node_type") == "group":
        if not meta.get("multiscales"):
            raise SpecReaderError(f"{where}: the group at {rel!r} is not a multiscales image.")
        ms = meta["multiscales"][0]
        dataset = ms["datasets"][0]  # the highest resolution
        array = zarr.open_array(str(root / dataset["path"]), mode="r")
        cts = dataset["coordinateTransformations"]
        systems = _systems(ms)
    else:
        array = zarr.open_array(str(root), mode="r")
        cts = meta.get("coordinateTransformations") or []
        systems = _systems(meta)
    if len(cts) != 1:
        raise SpecReaderError(
            f"{where}: the field at {rel!r} needs one array-to-field transformation.")
    ct = cts[0]
    system = _cs_name(ct.get("output"))
    if system not in systems:
        raise SpecReaderError(
            f"{where}: the field at {rel!r} maps to an undeclared system {system!r}.")
    ndim = array.ndim
    scale, translation = np.ones(ndim), np.zeros(ndim)
    steps = ct.get("transformations", []) if ct.get("type") == "sequence" else [ct]
    for step in steps:
        kind = step.get("type")
        if kind == "scale":
            scale = _parameters(step, "scale", root, where)
        elif kind == "translation":
            translation = _parameters(step, "translation", root, where)
        elif kind != "identity":
            raise SpecReaderError(
                f"{where}: the field's array-to-field transformation may be a scale, identity "
                f"or sequence of scale and translation; got {kind!r}.")
    if scale.shape != (ndim,) or translation.shape != (ndim,):
        raise SpecReaderError(f"{where}: the field's scale/translation need {ndim} values.")
    return array, systems[system], scale, translation


def _axis_key(axis: dict[str, Any]) -> tuple:
    return axis.get("name"), axis.get("type"), axis.get("unit")


def _displacements(entry: dict[str, Any], pts: np.ndarray, group: Path,
                   in_axes: list[dict[str, Any]] | None, out_dim: int | None,
                   where: str) -> np.ndarray:
    interpolation = entry.get("interpolation", "linear")
    if interpolation not in _INTERPOLATION_ORDER:
        raise SpecReaderError(f"{where}: interpolation {interpolation!r} is not supported "
                              f"(only {sorted(_INTERPOLATION_ORDER)}).")
    array, axes, scale, translation = _field_node(group, entry.get("path"), where)
    n = pts.shape[1]
    kinds = [a.get("type") for a in axes]
    if kinds.count("displacement") != 1:
        raise SpecReaderError(f"{where}: the field's coordinate system must have exactly one "
                              f"axis of type 'displacement'; its types are {kinds}.")
    comp = kinds.index("displacement")
    spatial = [k for k in range(len(axes)) if k != comp]
    if len(axes) != array.ndim or array.ndim != n + 1:
        raise SpecReaderError(f"{where}: a field for {n}-D points has {n + 1} dimensions and "
                              f"as many axes; got {array.ndim} and {len(axes)}.")
    if in_axes is not None and [_axis_key(axes[k]) for k in spatial] != [
            _axis_key(a) for a in in_axes]:
        raise SpecReaderError(
            f"{where}: the field's axes {[_axis_key(axes[k]) for k in spatial]} are not "
            f"identical to its input system's {[_axis_key(a) for a in in_axes]}.")
    m = array.shape[comp]
    if m != (out_dim if out_dim is not None else n):
        raise SpecReaderError(
            f"{where}: the displacement axis has length {m}; the output has "
            f"{out_dim if out_dim is not None else n} dimensions.")
    if m != n:
        raise SpecReaderError(f"{where}: displacements need input and output of equal "
                              f"dimension; got {n} and {m}.")

    shape = np.array([array.shape[k] for k in spatial])
    idx = (pts - translation[spatial]) / scale[spatial]  # continuous array indices
    inside = np.all((idx >= -0.5) & (idx < shape - 0.5), axis=1)
    out = np.zeros_like(pts)
    if inside.any():
        ii = idx[inside]
        lo = np.clip(np.floor(ii.min(axis=0)), 0, shape - 1).astype(int)
        hi = np.clip(np.floor(ii.max(axis=0)) + 2, 1, shape).astype(int)
        box: list[slice] = [slice(None)] * array.ndim
        for j, k in enumerate(spatial):
            box[k] = slice(int(lo[j]), int(hi[j]))
        region = np.moveaxis(np.asarray(array[tuple(box)], dtype=np.float64), comp, 0)
        coords = (ii - lo).T
        order = _INTERPOLATION_ORDER[interpolation]
        out[inside] = np.stack([map_coordinates(region[c], coords, order=order,
                                                mode="nearest") for c in range(m)], axis=1)
    return pts + out


def apply_transformation(entry: dict[str, Any], pts: np.ndarray, group: str | Path, *,
                         systems: dict[str, list[dict[str, Any]]] | None = None,
                         input_system: str | None = None, where: str = "transformation",
                         ) -> np.ndarray:
    """Map (N, D) points through one RFC-5 transformation object.

    ``group`` is the Zarr group whose metadata holds the transformation (``path``s are
    relative to it); ``systems`` are the declared coordinate systems, and
    ``input_system`` the system the points are in when the transformation omits
    ``input`` (wrapped transformations), used to check field axes.
    """
    group = Path(group)
    systems = systems or {}
    pts = np.asarray(pts, dtype=np.float64)
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise SpecReaderError(f"{where}: a transformation is an object with a 'type'.")
    kind = entry["type"]
    where = f"{where} ({kind})"
    src = _cs_name(entry.get("input")) or input_system
    dst = _cs_name(entry.get("output"))
    if kind == "identity":
        return pts.copy()
    if kind == "translation":
        t = _parameters(entry, "translation", group, where)
        if t.shape != (pts.shape[1],):
            raise SpecReaderError(f"{where}: needs {pts.shape[1]} values; got {t.shape}.")
        return pts + t
    if kind == "scale":
        s = _parameters(entry, "scale", group, where)
        if s.shape != (pts.shape[1],):
            raise SpecReaderError(f"{where}: needs {pts.shape[1]} values; got {s.shape}.")
        return pts * s
    if kind == "affine":
        return _affine(entry, pts, group, where)
    if kind == "rotation":
        r = _parameters(entry, "rotation", group, where)
        if r.shape != (pts.shape[1], pts.shape[1]):
            raise SpecReaderError(f"{where}: needs a {pts.shape[1]}x{pts.shape[1]} matrix.")
        return pts @ r.T
    if kind == "sequence":
        steps = entry.get("transformations")
        if not isinstance(steps, list) or not steps:
            raise SpecReaderError(f"{where}: needs a non-empty 'transformations' array.")
        here = src
        for i, step in enumerate(steps):
            pts = apply_transformation(step, pts, group, systems=systems, input_system=here,
                                       where=f"{where}[{i}]")
            here = _cs_name(step.get("output")) if isinstance(step, dict) else None
        return pts
    if kind == "bijection":
        if "forward" not in entry or "inverse" not in entry:
            raise SpecReaderError(f"{where}: needs 'forward' and 'inverse'.")
        return apply_transformation(entry["forward"], pts, group, systems=systems,
                                    input_system=src, where=f"{where}.forward")
    if kind == "displacements":
        out_dim = len(systems[dst]) if dst in systems else None
        return _displacements(entry, pts, group, systems.get(src) if src else None,
                              out_dim, where)
    raise SpecReaderError(
        f"{where}: this spec-only reader does not know the transformation type {kind!r}; "
        f"it reads {', '.join(SUPPORTED_TYPES)}.")


def map_points(store_path: str | Path, points_zyx: Any, *, name: str | None = None
               ) -> np.ndarray:
    """Map (N, 3) z, y, x points of the store's intrinsic (fixed) coordinate system to
    the system its registration transformation outputs (moving), by the spec alone.

    In a scene (the layout of the spec's registration example) the transformation is the
    scene's own from its reference system (:func:`find_scene_registration`).

    The transformation is the one in ``multiscales[0].coordinateTransformations`` whose
    ``input`` is the intrinsic system and whose ``output`` is another declared system
    (``name`` picks one when there are several). Points are reordered to the input
    system's axis order when its axes are named z, y, x in another order, and the result
    is returned in z, y, x order.
    """
    store = Path(store_path)
    scene = read_scene(store)
    if scene is not None:
        ms = scene
        entry = find_scene_registration(scene, name=name, where=str(store))
    else:
        ms = read_root(store)
        entry = find_registration(ms, name=name, where=str(store))
    systems = _systems(ms)
    src, dst = _cs_name(entry["input"]), _cs_name(entry["output"])
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise SpecReaderError(f"points must be (N, 3) z, y, x; got shape {pts.shape}.")
    zyx = ["z", "y", "x"]
    in_names = [a.get("name") for a in systems[src]]
    out_names = [a.get("name") for a in systems[dst]]
    if len(in_names) != 3 or len(out_names) != 3:
        raise SpecReaderError(f"{store}: {src!r} → {dst!r} is not a 3-D → 3-D transformation.")
    if sorted(in_names) == sorted(zyx):
        pts = pts[:, [zyx.index(a) for a in in_names]]
    out = apply_transformation(entry, pts, store, systems=systems, input_system=src,
                               where=f"{store.name}: {entry.get('name') or 'transformation'}")
    if sorted(out_names) == sorted(zyx):
        out = out[:, [out_names.index(a) for a in zyx]]
    return out
