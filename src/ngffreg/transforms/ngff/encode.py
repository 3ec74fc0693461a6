"""Writing transforms as OME-NGFF 0.6 (RFC-5) metadata: :func:`write_transforms`,
:func:`write_registration` (see :mod:`ngffreg.transforms.ngff` for what is written)."""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ...errors import OutputError, TransformError
from ...image import SPATIAL_DIMS, physical_bbox
from ...image import direction as image_direction
from ...io.write import strip_none
from ...units import normalize_unit
from ..base import Transform
from ..composite import Bijection, Sequence
from ..field import DisplacementField, sample_field
from ..linear import Affine, Identity, Scale, Translation
from ..spline import ThinPlateSpline
from .store import (
    FIELD_GROUP,
    FIXED,
    INTERPOLATION,
    MOVING,
    REGISTRATION,
    datasets_system,
    declared_systems,
    existing_store,
    field_in_unit,
    read_json,
    spatial_unit,
    transform_holder,
    write_json_atomic,
)

#: Largest chunk side written for a field.
_MAX_CHUNK = 128
_NODE_NAME = re.compile(r"[A-Za-z0-9._-]+")

__all__ = ["axis_aligned", "write_registration", "write_transforms"]


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
            return m.Displacements(path=path, interpolation=INTERPOLATION, **names)
        raise TransformError(
            f"A {type(t).__name__} has no OME-NGFF 0.6 transformation type; ngffreg writes "
            "identity, translation, scale, affine, sequence, bijection and displacement fields."
        )


def axis_aligned(field: DisplacementField) -> DisplacementField:
    """A field on an oblique grid resampled (lazily, linearly) onto the axis-aligned grid
    that covers it: an OME-NGFF field is placed by scale and translation alone, which every
    reader follows. Each world axis gets the spacing of the grid axis best aligned with it;
    the displacement is zero where the oblique grid does not reach (ngffreg's "outside"
    rule), so the map is the same there."""
    grid = field.grid
    lo, hi = physical_bbox(field.field)
    spacing = grid.spacing[np.argmax(np.abs(grid.direction), axis=1)]
    shape = np.ceil((hi - lo) / spacing - 1e-9).astype(int) + 1  # covers every corner
    chunks = field.field.data.chunksize[1:] if field.field.chunks is not None else 64
    out = sample_field(field, shape=shape, spacing=spacing, origin=lo, unit=grid.unit,
                       chunks=chunks)
    return dataclasses.replace(out, name=field.name, input=field.input, output=field.output,
                               outside=field.outside)


def _write_field(store: Path, path: str, field: DisplacementField, system: str, unit: str,
                 overwrite: bool) -> None:
    from ...io.write import to_ome_zarr

    if not np.allclose(image_direction(field.field), np.eye(3), atol=1e-9):
        field = axis_aligned(field)
    field = field_in_unit(field, unit)
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
    write_json_atomic(path / "zarr.json",
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

    path = existing_store(store)
    doc = read_json(path / "zarr.json")
    ms = transform_holder(doc, path)
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

    systems = declared_systems(ms)
    image_system = datasets_system(ms)
    base_unit = None
    for name in (FIXED, image_system):
        if name in systems:
            base_unit = spatial_unit(systems[name], name)
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
            if spatial_unit(systems[name], name) is None:
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
        entries.append(strip_none(dataclasses.asdict(model)))

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
    new_ms = transform_holder(new_doc, path)
    new_ms["coordinateSystems"] = new_systems
    new_ms["coordinateTransformations"] = merged
    write_json_atomic(path / "zarr.json", new_doc)
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
