"""Open an ngffreg output store with the readers microscopists use; print what they see.

Run by the tools Python (``.venv-tools/bin/python``, Python >= 3.12, built by
``make tools-env``), never imported by the test suite itself: the readers need a newer
Python than ngffreg supports. ``tests/test_external_readers.py`` runs it in a subprocess and
judges its output. Each sub-command prints one JSON object on stdout and exits 0 even when
the reader fails: a reader's failure is a result (``"ok": false`` with ``"error"``), not a
crash of this script.

Sub-commands (``STORE`` is the ``.ome.zarr`` folder):

``validate STORE``
    ome-zarr-models (``ome_zarr_models.v06``) validation of the root group (as a ``Scene``
    when its ``ome`` attributes hold ``scene``, as an ``Image`` when they hold
    ``multiscales``), of every image group the scene's transforms name as their ``input`` or
    ``output`` ``path``, and of every displacement-field group under
    ``coordinateTransformations/`` (each an OME-Zarr 0.6 multiscales image).
``scene STORE [--points JSON] [--source NAME] [--target NAME]``
    ome-zarr-py's scene reader (``ome_zarr.OMEZarrScene.from_ome_zarr``) and the shortest
    path through its transform graph (``scene._graph``, a transformnd graph) from the
    scene's system ``source`` to ``target`` (default ``fixed`` → ``moving``), applied to the
    points. Also ``direct``: the scene transform from ``source`` to ``target`` turned into a
    transformnd transform by ome-zarr-py's own converter
    (``ome_zarr.classes.tnd_utils.ozmp_tf_to_tnd_spaced``, what the scene reader does for
    each edge) and applied, so the mapping is still tested where building the whole graph
    fails.
``napari STORE [--group PATH]``
    napari-ome-zarr's reader hook (``napari_ome_zarr._reader.napari_get_reader``), what
    napari runs when a store is dropped on it, on the store (or on its subgroup ``PATH``);
    each layer's type, name, level-0 shape, ``scale``, ``translate`` and ``affine``.

Nothing here imports ngffreg.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

#: Displacement fields live in this subgroup of the store (the specification's example).
FIELDS = "coordinateTransformations"


def _error(exc: BaseException) -> str:
    """``Type: message`` of an exception, shortened; where it was raised is added."""
    message = f"{type(exc).__name__}: {exc}"
    if len(message) > 1500:
        message = message[:1500] + " ..."
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" [at {Path(frame.filename).name}:{frame.lineno} in {frame.name}]" if frame else ""
    return message + where


def _versions(*names: str) -> dict[str, str]:
    return {name: metadata.version(name) for name in names}


def _ome(group_dir: Path) -> dict:
    """The ``ome`` attributes of the Zarr v3 group at ``group_dir`` ({} when none)."""
    doc = json.loads((group_dir / "zarr.json").read_text())
    return doc.get("attributes", {}).get("ome", {})


def image_paths(store: Path) -> list[str]:
    """The image groups a scene's transforms name (``input``/``output`` ``path``), in order;
    for a store that is an image itself, ``[""]``."""
    ome = _ome(store)
    if "scene" not in ome:
        return [""] if "multiscales" in ome else []
    paths: list[str] = []
    for transform in ome["scene"].get("coordinateTransformations", []):
        for end in (transform.get("input"), transform.get("output")):
            path = end.get("path") if isinstance(end, dict) else None
            if path and path not in paths:
                paths.append(path)
    return paths


def field_paths(store: Path) -> list[str]:
    """The groups under ``coordinateTransformations/`` (displacement fields), sorted."""
    folder = store / FIELDS
    if not folder.is_dir():
        return []
    return [f"{FIELDS}/{child.name}" for child in sorted(folder.iterdir())
            if (child / "zarr.json").is_file()
            and json.loads((child / "zarr.json").read_text()).get("node_type") == "group"]


# validate ---------------------------------------------------------------------------------
def _axes(group_dir: Path) -> list[list[str]] | None:
    """``[name, type]`` of each axis of the first multiscales' intrinsic coordinate system
    (the one its datasets map to), read from the JSON."""
    ms = (_ome(group_dir).get("multiscales") or [None])[0]
    if not ms:
        return None
    systems = {cs.get("name"): cs for cs in ms.get("coordinateSystems", [])}
    first = ((ms.get("datasets") or [{}])[0].get("coordinateTransformations") or [{}])[0]
    out = first.get("output")
    name = out.get("name") if isinstance(out, dict) else out
    system = systems.get(name)
    return [[a.get("name"), a.get("type")] for a in system["axes"]] if system else None


def _validate_group(store: Path, path: str, kind: str) -> dict[str, Any]:
    """Validate one group as ``kind`` (``Scene`` or ``Image``) with ome-zarr-models."""
    import zarr
    from ome_zarr_models.v06 import Image, Scene

    group_dir = store / path if path else store
    result: dict[str, Any] = {"path": path, "kind": kind, "ok": False, "error": None,
                              "axes": _axes(group_dir)}
    try:
        group = zarr.open_group(str(group_dir), mode="r")
        {"Scene": Scene, "Image": Image}[kind].from_zarr(group)
        result["ok"] = True
    except Exception as exc:  # a validation failure is the result
        result["error"] = _error(exc)
    return result


def validate(store: Path) -> dict[str, Any]:
    """ome-zarr-models validation of the root, the scene's images and every field group."""
    ome = _ome(store)
    root_kind = "Scene" if "scene" in ome else "Image" if "multiscales" in ome else None
    groups = []
    if root_kind is None:
        groups.append({"path": "", "kind": None, "ok": False, "axes": None,
                       "error": "the root's ome attributes hold neither scene nor multiscales"})
    else:
        groups.append(_validate_group(store, "", root_kind))
    for path in image_paths(store):
        if path:
            groups.append(_validate_group(store, path, "Image"))
    for path in field_paths(store):
        groups.append(_validate_group(store, path, "Image"))
    return {"versions": _versions("ome-zarr-models", "zarr"), "groups": groups}


# scene ------------------------------------------------------------------------------------
def _apply(transform: Any, points: list[list[float]]) -> list[list[float]]:
    """A transformnd transform applied to (N, D) points, computed (fields may be dask)."""
    import numpy as np

    return np.asarray(transform.apply(np.asarray(points, dtype=float)), dtype=float).tolist()


def _scene_graph(store: Path, points: list, source: str, target: str) -> dict[str, Any]:
    """The scene reader, then its graph's path ``source`` → ``target`` applied to points."""
    from ome_zarr import OMEZarrScene

    out: dict[str, Any] = {"ok": False, "stage": "open", "error": None, "points": None}
    try:
        scene = OMEZarrScene.from_ome_zarr(str(store))
        out["stage"] = "path"
        sequence = scene._graph.get_sequence(("", source), ("", target))
        out["sequence"] = str(sequence)
        out["stage"] = "apply"
        out["points"] = _apply(sequence, points)
        out["ok"] = True
    except Exception as exc:
        out["error"] = _error(exc)
    return out


def _scene_direct(store: Path, points: list, source: str, target: str) -> dict[str, Any]:
    """ome-zarr-py's converter on the one scene transform from a system named ``source``
    to one named ``target`` (whatever their paths), with the fields loaded as the scene
    reader loads them, applied to points."""
    import zarr
    from ome_zarr.classes.image import OMEZarrMultiscale
    from ome_zarr.classes.tnd_utils import ozmp_tf_to_tnd_spaced
    from ome_zarr_models.v06.scene import BaseSceneAttrs

    out: dict[str, Any] = {"ok": False, "stage": "open", "error": None, "points": None}
    try:
        root = zarr.open_group(str(store), mode="r")
        attrs = BaseSceneAttrs.model_validate(root.attrs.get("ome", {})).scene
        systems = {cs.name: cs for cs in attrs.coordinateSystems or ()}
        fields = {}
        if FIELDS in root:
            for name in root[FIELDS].group_keys():
                fields[name] = OMEZarrMultiscale.from_ome_zarr(root[FIELDS][name])
        out["stage"] = "find"
        matches = [t for t in attrs.coordinateTransformations if t.input and t.output
                   and (t.input.name, t.output.name) == (source, target)]
        if len(matches) != 1:
            raise LookupError(f"{len(matches)} scene transforms map {source!r} to {target!r}")
        out["stage"] = "convert"
        spaced = ozmp_tf_to_tnd_spaced(matches[0], "", systems.get(source),
                                       systems.get(target), fields)
        out["transform"] = str(spaced.transform)
        out["stage"] = "apply"
        out["points"] = _apply(spaced.transform, points)
        out["ok"] = True
    except Exception as exc:
        out["error"] = _error(exc)
    return out


def scene(store: Path, points: list, source: str, target: str) -> dict[str, Any]:
    """Map points ``source`` → ``target`` through ome-zarr-py's scene graph and directly."""
    return {"versions": _versions("ome-zarr", "ome-zarr-models", "transformnd"),
            "source": source, "target": target, "input": points,
            "graph": _scene_graph(store, points, source, target),
            "direct": _scene_direct(store, points, source, target)}


# napari -----------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """``value`` as JSON: arrays and tuples as lists, napari transforms as their matrix."""
    import numpy as np

    if hasattr(value, "affine_matrix"):
        value = value.affine_matrix
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _layer(layer: tuple) -> dict[str, Any]:
    """What napari gets for one layer: type, name, level-0 shape and placement keywords."""
    data, kwargs = layer[0], layer[1] if len(layer) > 1 else {}
    layer_type = layer[2] if len(layer) > 2 else "image"
    level0 = data[0] if isinstance(data, (list, tuple)) else data
    return {"type": layer_type, "name": kwargs.get("name"),
            "shape": [int(n) for n in level0.shape],
            "levels": len(data) if isinstance(data, (list, tuple)) else 1,
            **{key: _plain(kwargs[key]) for key in ("scale", "translate", "affine",
                                                    "axis_labels", "units") if key in kwargs}}


def napari(store: Path, group: str = "") -> dict[str, Any]:
    """napari-ome-zarr's reader hook on the store (or its subgroup ``group``)."""
    target = str(store / group) if group else str(store)
    out: dict[str, Any] = {"versions": _versions("napari", "napari-ome-zarr", "ome-zarr"),
                           "opened": target, "ok": False, "error": None, "layers": None}
    try:
        from napari_ome_zarr._reader import napari_get_reader

        reader = napari_get_reader(target)
        if reader is None:
            raise LookupError("napari_get_reader returned None: napari-ome-zarr declines it")
        out["layers"] = [_layer(layer) for layer in reader(target)]
        out["ok"] = True
    except Exception as exc:
        out["error"] = _error(exc)
    return out


# command line -----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate").add_argument("store", type=Path)
    sc = sub.add_parser("scene")
    sc.add_argument("store", type=Path)
    sc.add_argument("--points", default="[[0, 0, 0]]", help="JSON list of [z, y, x]")
    sc.add_argument("--source", default="fixed")
    sc.add_argument("--target", default="moving")
    na = sub.add_parser("napari")
    na.add_argument("store", type=Path)
    na.add_argument("--group", default="", help="a subgroup of the store to open instead")
    args = parser.parse_args(argv)
    if args.command == "validate":
        result = validate(args.store)
    elif args.command == "scene":
        result = scene(args.store, json.loads(args.points), args.source, args.target)
    else:
        result = napari(args.store, args.group)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
