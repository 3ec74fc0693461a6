"""Reading OME-NGFF 0.6 (RFC-5) coordinate transformations as ngffreg transforms:
:func:`read_transforms`, :func:`read_registration` (see :mod:`ngffreg.transforms.ngff` for
the semantics followed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError, TransformError
from ...image import SPATIAL_DIMS, make_image
from ...units import normalize_unit
from ..base import Transform
from ..composite import Bijection, Sequence
from ..field import DisplacementField
from ..linear import Affine, Identity, Scale, Translation
from .store import (
    FIXED,
    INTERPOLATION,
    MOVING,
    REGISTRATION,
    datasets_system,
    declared_systems,
    existing_store,
    field_in_unit,
    read_json,
    referenced_systems,
    spatial_unit,
    system_name,
    transform_holder,
)

_SUPPORTED = ("identity", "translation", "scale", "affine", "rotation", "sequence",
              "bijection", "displacements")

__all__ = ["read_field", "read_parameters", "read_registration", "read_transforms"]


def read_parameters(entry: dict[str, Any], key: str, store: Path, where: str) -> np.ndarray:
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


def read_field(store: Path, entry: dict[str, Any], names: dict[str, Any],
                systems: dict[str, list[dict[str, Any]]], where: str) -> DisplacementField:
    """The ``displacements`` transformation ``entry`` of ``store`` as a lazy field (``names``:
    its name, input and output; ``systems``: the declared systems, by name)."""
    import dask.array as da
    import zarr

    rel = entry.get("path")
    if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
        raise TransformError(f"{where}: a displacements transform needs a relative 'path'.")
    interpolation = entry.get("interpolation") or INTERPOLATION
    if interpolation != INTERPOLATION:
        raise TransformError(
            f"{where}: the field asks for {interpolation!r} interpolation; ngffreg applies "
            "displacement fields with linear interpolation only.")
    root = store / rel
    if not (root / "zarr.json").is_file():
        raise TransformError(f"{where}: no displacement field at {rel!r} in {store}.")
    fdoc = read_json(root / "zarr.json")
    try:
        fms = fdoc["attributes"]["ome"]["multiscales"][0]
        dataset = fms["datasets"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise TransformError(
            f"{where}: {rel!r} is not an OME-Zarr multiscales image (a field must be one)."
        ) from exc
    fsystems = declared_systems(fms)
    system = datasets_system(fms) or next(iter(fsystems), None)
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
    in_unit = spatial_unit(in_axes, names.get("input") or "") if in_axes else None
    unit = normalize_unit(units.pop()) if units else (in_unit or "micrometer")
    outside = fdoc["attributes"].get("ngffreg", {}).get("outside", "zero")
    try:
        field = DisplacementField(
            field=make_image(data, spacing=scale[keep], origin=translation[keep], unit=unit,
                             dims=("c", *SPATIAL_DIMS), name="displacement"),
            outside=outside, **names)
    except InputError as exc:
        raise TransformError(f"{where}: the field at {rel!r} is not usable: {exc}") from exc
    return field_in_unit(field, in_unit) if in_unit else field


def _decode(entry: Any, store: Path, systems: dict[str, list[dict[str, Any]]],
            where: str) -> Transform:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise TransformError(f"{where}: a transformation must be an object with a 'type'.")
    kind = entry["type"]
    where = f"{where} ({kind}{' ' + repr(entry['name']) if entry.get('name') else ''})"
    names = {"name": entry.get("name"), "input": system_name(entry.get("input")),
             "output": system_name(entry.get("output"))}
    try:
        if kind == "identity":
            return Identity(**names)
        if kind == "translation":
            return Translation(translation=read_parameters(entry, "translation", store, where),
                               **names)
        if kind == "scale":
            return Scale(scale=read_parameters(entry, "scale", store, where), **names)
        if kind in ("affine", "rotation"):
            m = read_parameters(entry, kind, store, where)
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
            return read_field(store, entry, names, systems, where)
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
    path = existing_store(store)
    ms = transform_holder(read_json(path / "zarr.json"), path)
    systems = {**declared_systems(ms), **referenced_systems(path, ms)}
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
