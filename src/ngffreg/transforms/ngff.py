"""Transforms as OME-NGFF 0.6 (RFC-5) coordinate-transformation metadata.

What is written (the output-store convention of DESIGN.md)
------------------------------------------------------------
An OME-Zarr 0.6 image store (Zarr v3) whose root multiscales

- declares the coordinate systems ``fixed`` and ``moving`` (axes ``z, y, x`` of type
  ``space`` with the unit), beside the one its datasets map to (``fixed`` for a
  registered image, written with ``to_ome_zarr(..., coordinate_system="fixed")``);
- lists, in its own ``coordinateTransformations``, named transforms between those
  systems; the registration is named ``registration``, ``input`` {name: fixed},
  ``output`` {name: moving}, stored as a ``bijection`` when its inverse is known.

Our types map onto RFC-5 types: :class:`~ngffreg.transforms.Identity` → ``identity``,
``Translation`` → ``translation``, ``Scale`` → ``scale``, ``Affine`` → ``affine``
(inline, the upper 3×4 block of the homogeneous matrix, row-major, last column the
translation), ``Sequence`` → ``sequence``, ``Bijection`` → ``bijection`` and
``DisplacementField`` → ``displacements`` with ``interpolation: "linear"``. A
thin-plate spline has no RFC-5 type: it is sampled onto a grid the caller gives
(:func:`~ngffreg.transforms.sample_field`) or refused.

Matrices are kept inline as JSON numbers. Python writes a float64 as the shortest
decimal that reads back as the same float64 (``repr``), so the round trip is exact.
ngff-zarr's own writer moves matrices into arrays instead; the reader here accepts both
forms (RFC-5 "affine": ``"affine"`` *or* ``"path"``).

A displacement field is a multiscale image under the store's ``coordinateTransformations``
group (RFC-5: "zarr arrays [holding transformation parameters] SHOULD be stored in a zarr
group coordinateTransformations"), at ``coordinateTransformations/<name>``: dims
``(c, z, y, x)``, the ``c`` axis of type ``displacement`` (``discrete: true``) holding the
z, y, x components in physical units, and its own 0.6 multiscales whose datasets map to
a coordinate system named like the transform's input system (RFC-5: "The field coordinate
system MUST contain an axis identical to every axis of its input coordinate system in the
same order", and "MUST have exactly one axis with type displacement"; the component axis
comes first as ngff-zarr's ``declare_field_transform`` and the 0.6 example
``displacement_field.json`` have it). It is written chunk by chunk through
:func:`ngffreg.io.write.to_ome_zarr`, atomically. ngffreg's "outside" policy, which RFC-5
does not describe, is kept in that group's ``ngffreg`` attributes (default ``"zero"``,
ITK's rule).

Semantics followed when reading (RFC-5, ome/ngff-spec ``specification.md``):

- a ``sequence`` applies its first transformation first; sequences may nest (the
  "top-levelness of sequence" rule was removed in RFC-5 response 2, 2025-11-18);
- an ``affine`` is the upper ``M×(N+1)`` block of the homogeneous matrix;
- ``displacements`` map ``p`` to ``p + d(p)``, ``d`` interpolated (linearly) in the field
  at ``p`` through the field's own scale/translation; the ``i``-th component refers to
  the ``i``-th axis of the output system;
- a ``bijection`` holds ``forward`` and ``inverse``; inner transforms may omit ``input``
  and ``output``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, InputNotFoundError, OutputError, TransformError
from ..image import SPATIAL_DIMS, make_image
from ..image import direction as image_direction
from ..image import to_units as image_to_units
from ..units import normalize_unit, unit_factor
from .model import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Transform,
    Translation,
    sample_field,
)

#: The group displacement fields (and any other transformation arrays) live in.
FIELD_GROUP = "coordinateTransformations"
#: Name of the fixed→moving registration transform.
REGISTRATION = "registration"
FIXED = "fixed"
MOVING = "moving"
#: The only interpolation ngffreg applies to a displacement field.
_INTERPOLATION = "linear"
#: Largest chunk side written for a field.
_MAX_CHUNK = 128
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SUPPORTED = ("identity", "translation", "scale", "affine", "rotation", "sequence",
              "bijection", "displacements")

__all__ = [
    "FIELD_GROUP",
    "REGISTRATION",
    "read_registration",
    "read_transforms",
    "write_registration",
    "write_transforms",
]


# ---------------------------------------------------------------------------
# the store's root document
# ---------------------------------------------------------------------------
def _store_path(store: str | os.PathLike) -> Path:
    path = Path(store).expanduser().absolute()
    if not path.exists():
        raise InputNotFoundError(f"No such OME-Zarr store: {path}. Check the path.")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(
            f"{path.parent} is not a Zarr v3 group (no zarr.json). Transforms are stored in "
            "an OME-Zarr 0.6 store: write the image with to_ome_zarr(..., version='0.6')."
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"Corrupted Zarr metadata in {path}: {exc}. Restore the file, or rewrite the store."
        ) from exc


def _multiscales(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    ome = doc.get("attributes", {}).get("ome")
    if not isinstance(ome, dict) or not ome.get("multiscales"):
        raise InputError(
            f"{where} holds no OME-Zarr multiscales image. Transforms are stored beside an "
            "image: write it with ngffreg.io.write.to_ome_zarr(..., version='0.6') first."
        )
    version = str(ome.get("version") or ome["multiscales"][0].get("version") or "")
    if not version.startswith("0.6"):
        raise InputError(
            f"{where} is OME-Zarr {version or '(no version)'}; coordinate transformations "
            "between named coordinate systems need OME-Zarr 0.6. Rewrite the image with "
            "to_ome_zarr(..., version='0.6')."
        )
    return ome["multiscales"][0]


def _holder(doc: dict[str, Any], where: Path) -> dict[str, Any]:
    """The object of a store's root document that holds its coordinate systems and named
    transforms: the ``scene`` of an OME-Zarr 0.6 scene (ngffreg's registered stores), else
    the image's first ``multiscales`` (stores written before the scene layout, and plain
    image stores)."""
    ome = doc.get("attributes", {}).get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("scene"), dict):
        version = str(ome.get("version") or "")
        if not version.startswith("0.6"):
            raise InputError(
                f"{where} is an OME-Zarr {version or '(no version)'} scene; ngffreg reads "
                "scenes of OME-Zarr 0.6.")
        return ome["scene"]
    return _multiscales(doc, where)


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _system_name(ref: Any) -> str | None:
    """The coordinate-system name of an RFC-5 ``input``/``output`` (an object with
    ``name``, or a bare string in earlier drafts); a system of another group (an object
    with ``path`` too, as scenes reference their images' systems) is ``"path:name"``."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict):
        name, where = ref.get("name"), ref.get("path")
        if not isinstance(name, str):
            return None
        return f"{where.strip('/')}:{name}" if isinstance(where, str) and where else name
    return None


def _systems(ms: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {cs["name"]: list(cs.get("axes", [])) for cs in ms.get("coordinateSystems") or []
            if isinstance(cs, dict) and "name" in cs}


def _referenced_systems(store: Path, holder: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The systems of the groups a scene's transforms reference by ``path``, keyed
    ``"path:name"``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ct in holder.get("coordinateTransformations") or []:
        for end in (ct.get("input"), ct.get("output")) if isinstance(ct, dict) else ():
            where = end.get("path") if isinstance(end, dict) else None
            if not isinstance(where, str) or not where or where.startswith("/") or (
                    ".." in where.split("/")):
                continue
            try:
                ms = _multiscales(_read_json(store / where / "zarr.json"), store / where)
            except InputError:
                continue
            out.update({f"{where.strip('/')}:{k}": v for k, v in _systems(ms).items()})
    return out


def _spatial_unit(axes: list[dict[str, Any]], what: str) -> str | None:
    """The unit of a z, y, x system, or None when the system is not one."""
    if [a.get("name") for a in axes] != list(SPATIAL_DIMS) or any(
        a.get("type", "space") != "space" for a in axes
    ):
        return None
    found = {a.get("unit") for a in axes} - {None}
    if len(found) > 1:
        raise TransformError(f"The coordinate system {what!r} mixes units {sorted(found)}.")
    return normalize_unit(found.pop()) if found else ""


def _image_system(ms: dict[str, Any]) -> str | None:
    """The coordinate system the image's datasets map to."""
    for ct in (ms.get("datasets") or [{}])[0].get("coordinateTransformations", []):
        name = _system_name(ct.get("output"))
        if name:
            return name
    return None


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _ref(name: str | None):
    from ngff_zarr.v06.zarr_metadata import CoordinateSystemIdentifier

    return None if name is None else CoordinateSystemIdentifier(name=name)


@dataclasses.dataclass
class _Encoder:
    """Turns our transforms into ngff-zarr 0.6 model objects, collecting the fields to
    write and the intermediate coordinate systems the transforms name."""

    claimed: set[str]
    grid: Any = None
    fields: dict[str, tuple[DisplacementField, str]] = dataclasses.field(default_factory=dict)
    systems: list[str] = dataclasses.field(default_factory=list)

    def _node(self, wanted: str | None, fallback: str) -> str:
        base = wanted if wanted and _NODE_NAME.fullmatch(wanted) and not wanted.startswith(
            "__") and wanted.strip(".") else fallback
        name, k = base, 0
        while f"{FIELD_GROUP}/{name}" in self.claimed:
            k += 1
            name = f"{base}_{k}"
        self.claimed.add(f"{FIELD_GROUP}/{name}")
        return name

    def encode(self, t: Transform, hint: str, space: str | None):
        """``t`` as an ngff-zarr 0.6 transform; ``hint`` names its field node when it has
        no name, ``space`` is the coordinate system it maps from (for field metadata)."""
        from ngff_zarr.v06 import zarr_metadata as m

        for name in (t.input, t.output):
            if name is not None and name not in self.systems:
                self.systems.append(name)
        names = {"name": t.name, "input": _ref(t.input), "output": _ref(t.output)}
        space = t.input or space
        if isinstance(t, ThinPlateSpline):
            if self.grid is None:
                raise TransformError(
                    "A thin-plate spline has no OME-NGFF transformation type. Sample it onto a "
                    "grid first (ngffreg.transforms.sample_field(tps, like=fixed_image)), or "
                    "pass grid= so it is sampled on write."
                )
            field = sample_field(t, like=self.grid).renamed(name=t.name)
            return self.encode(field, hint, space)
        if isinstance(t, Identity):
            return m.Identity(**names)
        if isinstance(t, Translation):
            return m.Translation(translation=[float(v) for v in t.translation], **names)
        if isinstance(t, Scale):
            return m.Scale(scale=[float(v) for v in t.scale], **names)
        if isinstance(t, Affine):
            return m.Affine(affine=np.asarray(t.matrix[:3], dtype=np.float64).tolist(), **names)
        if isinstance(t, Sequence):
            # every field of a sequence is named after the system the sequence maps from
            # (a registration's fields are all on grids of the fixed space)
            steps = [self.encode(step, f"{hint}_{i}", step.input or space)
                     for i, step in enumerate(t.transforms)]
            return m.TransformSequence(transformations=steps, **names)
        if isinstance(t, Bijection):
            return m.Bijection(
                forward=self.encode(t.forward, f"{hint}_forward", space),
                inverse=self.encode(t.inverse_transform, f"{hint}_inverse", t.output),
                **names)
        if isinstance(t, DisplacementField):
            node = self._node(t.name, hint)
            path = f"{FIELD_GROUP}/{node}"
            self.fields[path] = (t, space or "physical")
            return m.Displacements(path=path, interpolation=_INTERPOLATION, **names)
        raise TransformError(
            f"A {type(t).__name__} has no OME-NGFF 0.6 transformation type; ngffreg writes "
            "identity, translation, scale, affine, sequence, bijection and displacement fields."
        )


def _field_in_unit(field: DisplacementField, unit: str) -> DisplacementField:
    """``field`` with grid and displacements in ``unit`` (lazily; no-op when equal)."""
    if not unit or normalize_unit(field.unit) == unit:
        return field
    factor = unit_factor(field.unit, unit)
    image = image_to_units(field.field, unit)
    image = image.copy(data=image.data * factor)
    return dataclasses.replace(field, field=image)


def axis_aligned(field: DisplacementField) -> DisplacementField:
    """A field on an oblique grid resampled (lazily, linearly) onto the axis-aligned grid
    that covers it: an OME-NGFF field is placed by scale and translation alone, which every
    reader follows. Each world axis gets the spacing of the grid axis best aligned with it;
    the displacement is zero where the oblique grid does not reach (ngffreg's "outside"
    rule), so the map is the same there."""
    grid = field.grid
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in grid.shape], indexing="ij"))
    corners = grid.points(tuple(slice(0, n) for n in grid.shape)) if min(grid.shape) < 2 \
        else (grid.direction @ (grid.frame_origin[:, None] + grid.spacing[:, None]
                                * corners.reshape(3, -1))).T
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    spacing = grid.spacing[np.argmax(np.abs(grid.direction), axis=1)]
    shape = np.ceil((hi - lo) / spacing - 1e-9).astype(int) + 1  # covers every corner
    chunks = field.field.data.chunksize[1:] if field.field.chunks is not None else 64
    out = sample_field(field, shape=shape, spacing=spacing, origin=lo, unit=grid.unit,
                       chunks=chunks)
    return dataclasses.replace(out, name=field.name, input=field.input, output=field.output,
                               outside=field.outside)


def _write_field(store: Path, path: str, field: DisplacementField, system: str, unit: str,
                 overwrite: bool) -> None:
    from ..io.write import to_ome_zarr

    if not np.allclose(image_direction(field.field), np.eye(3), atol=1e-9):
        field = axis_aligned(field)
    field = _field_in_unit(field, unit)
    name = path.rsplit("/", 1)[-1]
    image = field.field.rename(name)
    sizes = image.data.chunksize if image.chunks is not None else image.shape
    # whole vectors per chunk (a point's three components are read together), and
    # spatial chunks as the field has them, at most _MAX_CHUNK voxels a side
    image = image.chunk({"c": 3, **{d: min(int(c), _MAX_CHUNK)
                                    for d, c in zip(SPATIAL_DIMS, sizes[1:], strict=True)}})
    root = xr.Dataset(attrs={"multiscaleSpatialImageVersion": 1, "method": "mean",
                             "name": name})
    level = image.to_dataset(promote_attrs=False)
    level.attrs = {"factors": [1, 1, 1], "absolute_factors": [1, 1, 1]}
    tree = xr.DataTree.from_dict({"/": root, "scale0": level})
    to_ome_zarr(tree, store / path, version="0.6", coordinate_system=system,
                axis_types={"c": "displacement"}, overwrite=overwrite,
                attributes={"outside": field.outside, "transform": "displacements"})


def _ensure_group(path: Path) -> None:
    if (path / "zarr.json").is_file():
        return
    path.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(path / "zarr.json",
                       {"zarr_format": 3, "node_type": "group", "attributes": {}})


def _field_paths(entry: Any) -> list[str]:
    """Every ``displacements``/``coordinates`` path a stored transform names."""
    out: list[str] = []
    if isinstance(entry, dict):
        if entry.get("type") in ("displacements", "coordinates") and isinstance(
            entry.get("path"), str
        ):
            out.append(entry["path"])
        for key in ("transformations", "forward", "inverse", "transformation"):
            value = entry.get(key)
            for item in value if isinstance(value, list) else [value]:
                out.extend(_field_paths(item))
    return out


def _consolidate(store: Path, doc: dict[str, Any]) -> None:
    if doc.get("consolidated_metadata"):
        import warnings

        import zarr

        with warnings.catch_warnings():  # zarr notes consolidation is not in the v3 spec
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(str(store))


def write_transforms(
    store: str | os.PathLike,
    transforms: Mapping[str, Transform] | Transform,
    *,
    unit: str | None = None,
    overwrite: bool = False,
    grid: xr.DataArray | DisplacementField | None = None,
) -> Path:
    """Add named transforms to an OME-Zarr 0.6 image store as RFC-5 metadata.

    Parameters
    ----------
    store : str or Path
        An existing OME-Zarr 0.6 image store (see
        :func:`ngffreg.io.write.to_ome_zarr` with ``version="0.6"``).
    transforms : mapping of str to Transform, or Transform
        Transforms by name (a single transform is stored under its own ``name``). Each
        needs ``input`` and ``output`` coordinate-system names; ``fixed`` and ``moving``
        are declared when absent, any other must already be declared in the store, and
        names used only inside a sequence or bijection are declared as ``z, y, x``
        systems.
    unit : str, optional
        The length unit of the transforms' parameters. Default: the unit of the store's
        ``fixed`` system, else of the image's. It must match the declared systems
        (convert the transform first otherwise). Displacement fields carry their own
        unit and are converted to it.
    overwrite : bool
        Replace transforms of the same name (and their fields); otherwise refuse.
    grid : xarray.DataArray or DisplacementField, optional
        Grid on which transforms without an RFC-5 type (thin-plate splines) are sampled.

    Returns
    -------
    Path
        The store.

    Raises
    ------
    TransformError
        A transform without names, between undeclared systems, or of a type RFC-5 lacks.
    OutputError
        A transform of the same name exists and ``overwrite`` is false.

    Notes
    -----
    Fields are written first (each atomically, chunk by chunk); the root ``zarr.json`` is
    then replaced in one atomic rename, so an interrupted call leaves the old metadata.
    """
    from ngff_zarr.v06.zarr_metadata import Axis, CoordinateSystem, validate_transform

    path = _store_path(store)
    doc = _read_json(path / "zarr.json")
    ms = _holder(doc, path)
    if isinstance(transforms, Transform):
        if not transforms.name:
            raise TransformError(
                "The transform has no name to store it under. Pass a mapping "
                "({'name': transform}) or name it with transform.renamed(name=...).")
        transforms = {transforms.name: transforms}
    if not transforms:
        raise TransformError("No transforms to write.")
    for key, t in transforms.items():
        if not isinstance(t, Transform):
            raise TransformError(f"{key!r} is a {type(t).__name__}, not an ngffreg transform.")
        if not isinstance(key, str) or not key:
            raise TransformError(f"Transform names must be non-empty strings; got {key!r}.")
        if t.input is None or t.output is None:
            raise TransformError(
                f"The transform {key!r} does not say which coordinate systems it maps between "
                f"(input={t.input!r}, output={t.output!r}). Name them, e.g. "
                "t.renamed(input='fixed', output='moving').")

    systems = _systems(ms)
    image_system = _image_system(ms)
    base_unit = None
    for name in (FIXED, image_system):
        if name in systems:
            base_unit = _spatial_unit(systems[name], name)
            if base_unit is not None:
                break
    if unit is not None:
        unit = normalize_unit(unit)
        if base_unit and unit != base_unit:
            raise TransformError(
                f"The transforms are in {unit} but the store's coordinate systems are in "
                f"{base_unit}. Express the transforms in {base_unit} (or write the image in "
                f"{unit}) first.")
    unit = unit or base_unit or ""
    if not unit:
        raise TransformError(
            f"{path} declares no length unit for its coordinate systems; pass unit=.")

    existing = list(ms.get("coordinateTransformations") or [])
    names_there = {e.get("name") for e in existing if isinstance(e, dict)}
    clash = sorted(set(transforms) & names_there)
    if clash and not overwrite:
        raise OutputError(
            errno.EEXIST,
            f"{path} already holds transforms named {clash}. Pass overwrite=True to replace "
            "them, or choose other names.")
    replaced = [e for e in existing if isinstance(e, dict) and e.get("name") in transforms]
    kept = [e for e in existing if not (isinstance(e, dict) and e.get("name") in transforms)]
    kept_fields = {p for e in kept for p in _field_paths(e)}
    replaced_fields = {p for e in replaced for p in _field_paths(e)} - kept_fields
    group = path / FIELD_GROUP
    claimed = set(kept_fields)
    if group.is_dir():
        claimed |= {f"{FIELD_GROUP}/{p.name}" for p in group.iterdir()
                    if p.is_dir() and f"{FIELD_GROUP}/{p.name}" not in replaced_fields}

    encoder = _Encoder(claimed=claimed, grid=grid)
    encoded = {}
    for key, t in transforms.items():
        for side, name in (("input", t.input), ("output", t.output)):
            if name not in systems and name not in (FIXED, MOVING):
                raise TransformError(
                    f"The transform {key!r} maps {'from' if side == 'input' else 'to'} "
                    f"{name!r}, which {path} does not declare (it declares "
                    f"{sorted(systems)}). Use 'fixed'/'moving' or a declared system.")
        model = encoder.encode(t, key, t.input)
        model.name = key
        encoded[key] = model

    new_systems = copy.deepcopy(ms.get("coordinateSystems", []))
    for name in encoder.systems:
        if name in systems:
            if _spatial_unit(systems[name], name) is None:
                raise TransformError(
                    f"The coordinate system {name!r} of {path} has axes "
                    f"{[a.get('name') for a in systems[name]]}; 3-D transforms map between "
                    "z, y, x systems. Use another name.")
            continue
        new_systems.append({"name": name, "axes": [
            {"name": d, "type": "space", "unit": unit} for d in SPATIAL_DIMS]})
    model_systems = [
        CoordinateSystem(name=cs["name"], axes=[Axis(**a) for a in cs["axes"]])
        for cs in new_systems]
    entries = []
    for key, model in encoded.items():
        try:
            validate_transform(model, model_systems)
        except ValueError as exc:
            raise TransformError(f"The transform {key!r} is not valid RFC-5: {exc}") from exc
        entries.append(_strip_none(dataclasses.asdict(model)))

    # fields first (each atomic), then the root document in one rename
    if encoder.fields:
        _ensure_group(group)
    for fpath, (field, system) in encoder.fields.items():
        _write_field(path, fpath, field, system, unit, overwrite=fpath in replaced_fields)
    order = {e["name"]: e for e in entries}
    merged = [order.pop(e["name"]) if isinstance(e, dict) and e.get("name") in order else e
              for e in existing]
    merged.extend(order.values())
    new_doc = copy.deepcopy(doc)
    new_ms = _holder(new_doc, path)
    new_ms["coordinateSystems"] = new_systems
    new_ms["coordinateTransformations"] = merged
    _write_json_atomic(path / "zarr.json", new_doc)
    for fpath in replaced_fields - set(encoder.fields):
        if fpath.startswith(f"{FIELD_GROUP}/"):
            shutil.rmtree(path / fpath, ignore_errors=True)
    _consolidate(path, new_doc)
    return path


def write_registration(
    store: str | os.PathLike,
    transform: Transform,
    *,
    inverse: Transform | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    grid: xr.DataArray | DisplacementField | None = None,
) -> Path:
    """Store the fixed→moving registration as the transform ``registration``.

    ``transform`` maps ``fixed`` points to ``moving`` points (missing names are set);
    with ``inverse`` (moving→fixed), or when ``transform`` is a
    :class:`~ngffreg.transforms.Bijection`, both are stored as an RFC-5 ``bijection``.
    See :func:`write_transforms` for ``unit``, ``overwrite`` and ``grid``.
    """
    def named(t: Transform, src: str, dst: str, what: str) -> Transform:
        if t.input not in (None, src) or t.output not in (None, dst):
            raise TransformError(
                f"The {what} must map {src!r} to {dst!r}; it maps {t.input!r} to {t.output!r}. "
                f"Rename it (t.renamed(input={src!r}, output={dst!r})) if that is what it does.")
        return t.renamed(input=src, output=dst)

    if not isinstance(transform, Transform):
        raise TransformError(f"Expected an ngffreg transform; got {type(transform).__name__}.")
    forward = named(transform, FIXED, MOVING, "registration transform")
    if inverse is not None:
        if isinstance(forward, Bijection):
            raise TransformError("The transform is already a bijection; do not pass inverse=.")
        forward = Bijection(forward=forward, inverse_transform=named(
            inverse, MOVING, FIXED, "inverse"), input=FIXED, output=MOVING)
    return write_transforms(store, {REGISTRATION: forward}, unit=unit, overwrite=overwrite,
                            grid=grid)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _matrix(entry: dict[str, Any], key: str, store: Path, where: str) -> np.ndarray:
    """An inline parameter (``key``) or the array at ``path`` (RFC-5 allows either)."""
    if entry.get(key) is not None:
        value = entry[key]
    elif isinstance(entry.get("path"), str):
        import zarr

        rel = entry["path"]
        if rel.startswith("/") or ".." in rel.split("/"):
            raise TransformError(f"{where}: the array path {rel!r} leaves the store.")
        try:
            value = zarr.open_array(str(store / rel), mode="r")[...]
        except Exception as exc:  # zarr raises many types for a missing or broken array
            raise TransformError(
                f"{where}: the {entry.get('type')} parameters at {rel!r} cannot be read: {exc}."
            ) from exc
    else:
        raise TransformError(f"{where}: a {entry.get('type')} needs {key!r} or 'path'.")
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"{where}: the {key} parameters are not numbers: {exc}.") from exc


def _dataset_grid(cts: list[dict[str, Any]], n: int, where: str):
    scale, translation = np.ones(n), np.zeros(n)
    steps = []
    for ct in cts:
        steps.extend(ct.get("transformations", []) if ct.get("type") == "sequence" else [ct])
    for st in steps:
        kind = st.get("type")
        if kind == "scale":
            scale = np.asarray(st["scale"], dtype=np.float64)
        elif kind == "translation":
            translation = np.asarray(st["translation"], dtype=np.float64)
        elif kind != "identity":
            raise TransformError(
                f"{where}: the field's dataset transform {kind!r} is not a scale/translation.")
    if scale.shape != (n,) or translation.shape != (n,):
        raise TransformError(f"{where}: the field's scale/translation do not have {n} values.")
    return scale, translation


def _read_field(store: Path, entry: dict[str, Any], names: dict[str, Any],
                systems: dict[str, list[dict[str, Any]]], where: str) -> DisplacementField:
    import dask.array as da
    import zarr

    rel = entry.get("path")
    if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
        raise TransformError(f"{where}: a displacements transform needs a relative 'path'.")
    interpolation = entry.get("interpolation") or _INTERPOLATION
    if interpolation != _INTERPOLATION:
        raise TransformError(
            f"{where}: the field asks for {interpolation!r} interpolation; ngffreg applies "
            "displacement fields with linear interpolation only.")
    root = store / rel
    if not (root / "zarr.json").is_file():
        raise TransformError(f"{where}: no displacement field at {rel!r} in {store}.")
    fdoc = _read_json(root / "zarr.json")
    try:
        fms = fdoc["attributes"]["ome"]["multiscales"][0]
        dataset = fms["datasets"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise TransformError(
            f"{where}: {rel!r} is not an OME-Zarr multiscales image (a field must be one)."
        ) from exc
    fsystems = _systems(fms)
    system = _image_system(fms) or next(iter(fsystems), None)
    axes = fsystems.get(system)
    if not axes:
        raise TransformError(f"{where}: the field at {rel!r} declares no coordinate system.")
    kinds = [a.get("type") for a in axes]
    if kinds.count("displacement") != 1:
        raise TransformError(
            f"{where}: the field at {rel!r} must have exactly one axis of type 'displacement'; "
            f"its axes are {[(a.get('name'), a.get('type')) for a in axes]}.")
    comp = kinds.index("displacement")
    spatial = [a.get("name") for k, a in enumerate(axes) if k != comp]
    if spatial != list(SPATIAL_DIMS):
        raise TransformError(
            f"{where}: the field at {rel!r} has spatial axes {spatial}; ngffreg needs z, y, x.")
    in_axes = systems.get(names.get("input") or "")
    if in_axes and [a.get("name") for a in in_axes] != spatial:
        raise TransformError(
            f"{where}: the field's axes {spatial} differ from its input system's "
            f"{[a.get('name') for a in in_axes]}.")
    try:
        array = zarr.open_array(str(root / dataset["path"]), mode="r")
    except Exception as exc:  # zarr raises many types for a missing or broken array
        raise TransformError(f"{where}: the field array at {rel!r} cannot be read: {exc}.") \
            from exc
    if array.ndim != 4:
        raise TransformError(
            f"{where}: a 3-D displacement field has 4 dimensions; {rel!r} has {array.ndim}.")
    if array.shape[comp] != 3:
        raise TransformError(
            f"{where}: a 3-D displacement field needs 3 components (z, y, x) per point; the "
            f"field at {rel!r} has {array.shape[comp]}.")
    scale, translation = _dataset_grid(dataset.get("coordinateTransformations", []), 4, where)
    keep = [k for k in range(4) if k != comp]
    data = da.from_zarr(array)
    if comp:
        data = da.moveaxis(data, comp, 0)
    units = {a.get("unit") for k, a in enumerate(axes) if k != comp} - {None}
    if len(units) > 1:
        raise TransformError(f"{where}: the field's axes mix units {sorted(units)}.")
    in_unit = _spatial_unit(in_axes, names.get("input") or "") if in_axes else None
    unit = normalize_unit(units.pop()) if units else (in_unit or "micrometer")
    outside = fdoc["attributes"].get("ngffreg", {}).get("outside", "zero")
    try:
        field = DisplacementField(
            field=make_image(data, spacing=scale[keep], origin=translation[keep], unit=unit,
                             dims=("c", *SPATIAL_DIMS), name="displacement"),
            outside=outside, **names)
    except InputError as exc:
        raise TransformError(f"{where}: the field at {rel!r} is not usable: {exc}") from exc
    return _field_in_unit(field, in_unit) if in_unit else field


def _decode(entry: Any, store: Path, systems: dict[str, list[dict[str, Any]]],
            where: str) -> Transform:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise TransformError(f"{where}: a transformation must be an object with a 'type'.")
    kind = entry["type"]
    where = f"{where} ({kind}{' ' + repr(entry['name']) if entry.get('name') else ''})"
    names = {"name": entry.get("name"), "input": _system_name(entry.get("input")),
             "output": _system_name(entry.get("output"))}
    try:
        if kind == "identity":
            return Identity(**names)
        if kind == "translation":
            return Translation(translation=_matrix(entry, "translation", store, where), **names)
        if kind == "scale":
            return Scale(scale=_matrix(entry, "scale", store, where), **names)
        if kind in ("affine", "rotation"):
            m = _matrix(entry, kind, store, where)
            shape = (3, 4) if kind == "affine" else (3, 3)
            if m.shape != shape:
                raise TransformError(
                    f"{where}: between 3-D coordinate systems RFC-5 stores a {kind} as a "
                    f"{shape[0]}×{shape[1]} matrix (rows z, y, x"
                    f"{'; last column the translation' if kind == 'affine' else ''}); "
                    f"got shape {m.shape}.")
            if kind == "rotation":
                m = np.hstack([m, np.zeros((3, 1))])
            return Affine(matrix=m, **names)
        if kind == "sequence":
            steps = entry.get("transformations")
            if not isinstance(steps, list) or not steps:
                raise TransformError(f"{where}: a sequence needs a non-empty 'transformations'.")
            return Sequence(transforms=tuple(
                _decode(s, store, systems, f"{where}[{i}]") for i, s in enumerate(steps)),
                **names)
        if kind == "bijection":
            if "forward" not in entry or "inverse" not in entry:
                raise TransformError(f"{where}: a bijection needs 'forward' and 'inverse'.")
            return Bijection(
                forward=_decode(entry["forward"], store, systems, f"{where}.forward"),
                inverse_transform=_decode(entry["inverse"], store, systems, f"{where}.inverse"),
                **names)
        if kind == "displacements":
            return _read_field(store, entry, names, systems, where)
    except TransformError as exc:
        if str(exc).startswith(where):
            raise
        raise TransformError(f"{where}: {exc}") from exc
    raise TransformError(
        f"{where}: ngffreg cannot apply a {kind!r} transformation; it reads "
        f"{', '.join(_SUPPORTED)}.")


def read_transforms(store: str | os.PathLike) -> dict[str, Transform]:
    """The named transforms of an OME-Zarr 0.6 store's multiscales, as ngffreg transforms.

    Displacement fields are lazy and chunked as stored. Affine, scale, translation and
    rotation parameters are read inline or from the array their ``path`` names.

    Raises
    ------
    TransformError
        A transformation that is malformed (an affine not 3×4, a field without exactly 3
        components), of a type ngffreg cannot apply, between undeclared coordinate
        systems, or a sequence whose coordinate systems do not chain.
    InputError
        The store is not an OME-Zarr 0.6 image.
    """
    path = _store_path(store)
    ms = _holder(_read_json(path / "zarr.json"), path)
    systems = {**_systems(ms), **_referenced_systems(path, ms)}
    out: dict[str, Transform] = {}
    for i, entry in enumerate(ms.get("coordinateTransformations") or []):
        where = f"{path.name}: coordinateTransformations[{i}]"
        t = _decode(entry, path, systems, where)
        for side in ("input", "output"):
            name = getattr(t, side)
            if name is None or name not in systems:
                raise TransformError(
                    f"{where}: its {side} coordinate system {name!r} is not declared in "
                    f"{path} (declared: {sorted(systems)}); RFC-5 requires both.")
        key = t.name or f"{entry['type']}_{i}"
        if key in out:
            raise TransformError(f"{where}: two transforms are named {key!r}.")
        out[key] = t.renamed(name=key)
    return out


def read_registration(store: str | os.PathLike) -> Transform:
    """The ``registration`` transform of a store: fixed → moving (a
    :class:`~ngffreg.transforms.Bijection` when its inverse was stored)."""
    transforms = read_transforms(store)
    if REGISTRATION not in transforms:
        raise InputError(
            f"{store} holds no transform named {REGISTRATION!r} (it holds "
            f"{sorted(transforms) or 'none'}). Write one with write_registration.")
    t = transforms[REGISTRATION]
    if (t.input, t.output) != (FIXED, MOVING):
        raise TransformError(
            f"The {REGISTRATION!r} transform of {store} maps {t.input!r} to {t.output!r}; "
            f"the convention is {FIXED!r} to {MOVING!r}.")
    return t
