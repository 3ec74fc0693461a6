"""What the NGFF writer, reader and the store's other readers share: the store's root
document (read, and written atomically), the object holding its coordinate systems and
transforms (a scene, or an image's multiscales), coordinate-system names and units, and a
field's unit."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

from ...errors import InputError, InputNotFoundError, TransformError
from ...image import SPATIAL_DIMS
from ...image import to_units as image_to_units
from ...units import normalize_unit, unit_factor
from ..field import DisplacementField

#: The group displacement fields (and any other transformation arrays) live in.
FIELD_GROUP = "coordinateTransformations"
#: Name of the fixed→moving registration transform.
REGISTRATION = "registration"
FIXED = "fixed"
MOVING = "moving"
#: The only interpolation ngffreg applies to a displacement field.
INTERPOLATION = "linear"

__all__ = [
    "FIELD_GROUP",
    "FIXED",
    "INTERPOLATION",
    "MOVING",
    "REGISTRATION",
    "datasets_system",
    "declared_systems",
    "existing_store",
    "field_in_unit",
    "image_multiscales",
    "read_json",
    "referenced_images",
    "referenced_systems",
    "spatial_unit",
    "system_name",
    "transform_holder",
    "write_json_atomic",
]


def existing_store(store: str | os.PathLike) -> Path:
    path = Path(store).expanduser().absolute()
    if not path.exists():
        raise InputNotFoundError(f"No such OME-Zarr store: {path}. Check the path.")
    return path


def read_json(path: Path) -> dict[str, Any]:
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


def image_multiscales(doc: dict[str, Any], where: Path) -> dict[str, Any]:
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


def transform_holder(doc: dict[str, Any], where: Path) -> dict[str, Any]:
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
    return image_multiscales(doc, where)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def system_name(ref: Any) -> str | None:
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


def declared_systems(ms: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {cs["name"]: list(cs.get("axes", [])) for cs in ms.get("coordinateSystems") or []
            if isinstance(cs, dict) and "name" in cs}


def referenced_images(store: Path, holder: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The multiscales of the image groups a scene's transforms reference by ``path``,
    by path (groups that are not images are left out)."""
    from ...io.read import scene_paths

    out: dict[str, dict[str, Any]] = {}
    for where in scene_paths(holder):
        try:
            out[where] = image_multiscales(read_json(store / where / "zarr.json"), store / where)
        except InputError:
            continue
    return out


def referenced_systems(store: Path, holder: dict[str, Any],
                       images: dict[str, dict[str, Any]] | None = None,
                       ) -> dict[str, list[dict[str, Any]]]:
    """The systems of the image groups a scene's transforms reference by ``path`` (read
    here unless ``images``, from :func:`referenced_images`, is given), keyed ``"path:name"``."""
    images = referenced_images(store, holder) if images is None else images
    return {f"{where}:{k}": v for where, ms in images.items()
            for k, v in declared_systems(ms).items()}


def spatial_unit(axes: list[dict[str, Any]], what: str) -> str | None:
    """The unit of a z, y, x system, or None when the system is not one."""
    if [a.get("name") for a in axes] != list(SPATIAL_DIMS) or any(
        a.get("type", "space") != "space" for a in axes
    ):
        return None
    found = {a.get("unit") for a in axes} - {None}
    if len(found) > 1:
        raise TransformError(f"The coordinate system {what!r} mixes units {sorted(found)}.")
    return normalize_unit(found.pop()) if found else ""


def datasets_system(ms: dict[str, Any]) -> str | None:
    """The coordinate system the image's datasets map to."""
    for ct in (ms.get("datasets") or [{}])[0].get("coordinateTransformations", []):
        name = system_name(ct.get("output"))
        if name:
            return name
    return None


def field_in_unit(field: DisplacementField, unit: str) -> DisplacementField:
    """``field`` with grid and displacements in ``unit`` (lazily; no-op when equal)."""
    if not unit or normalize_unit(field.unit) == unit:
        return field
    factor = unit_factor(field.unit, unit)
    image = image_to_units(field.field, unit)
    image = image.copy(data=image.data * factor)
    return dataclasses.replace(field, field=image)
