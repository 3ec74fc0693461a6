"""Issue 5: a reader that knows only the NGFF 0.6 spec (tests/ngff_spec_reader.py) maps
fixed points to moving points from an output store exactly as ngffreg's own reader and
its ``transform-points`` CLI do. ngffreg is used here only to write the stores and to
produce the reference mappings."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

import ngff_spec_reader as spec
import ngffreg
from ngffreg.cli import main
from ngffreg.io.write import to_ome_zarr
from ngffreg.transforms import Affine, DisplacementField, Sequence
from ngffreg.transforms.ngff import read_registration, write_registration
from ngffreg.transforms.scene import IMAGE, IMAGE_SYSTEM, start_scene

SPACING = np.array([2.0, 1.0, 0.5])  # the image's (fixed) grid
ORIGIN = (1.0, 2.0, 3.0)
# the field's own grid: anisotropic, non-zero origin, unrelated to the image's
F_SHAPE = (9, 11, 13)
F_SPACING = np.array([3.0, 1.5, 0.75])
F_ORIGIN = np.array([-4.0, 2.5, 7.25])
RNG = np.random.default_rng(5)


@pytest.fixture(params=["scene", "image"])
def store(tmp_path: Path, request) -> Path:
    """A store ready for a registration: the scene ngffreg writes now (the image in
    ``registered/``, the scene declaring ``fixed`` and ``moving``), or an OME-Zarr 0.6 image
    whose datasets map to ``fixed`` (the layout of stores written before the scene)."""
    image = ngffreg.make_image(RNG.random((12, 14, 16)).astype("float32"), spacing=SPACING,
                               origin=ORIGIN, unit="um")
    if request.param == "image":
        return to_ome_zarr(image, tmp_path / "reg.ome.zarr", version="0.6", chunks=8,
                           coordinate_system="fixed")
    out = to_ome_zarr(image, tmp_path / "reg.ome.zarr", version="0.6", chunks=8,
                      coordinate_system=IMAGE_SYSTEM, image_group=IMAGE)
    return start_scene(out)


def _stored(store: Path) -> dict:
    """The object holding the store's named transforms (scene, or image multiscales)."""
    ome = json.loads((store / "zarr.json").read_text())["attributes"]["ome"]
    return ome["scene"] if "scene" in ome else ome["multiscales"][0]


def _affine(seed: int) -> Affine:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] += rng.normal(scale=0.1, size=(3, 3))
    m[:3, 3] = rng.normal(scale=3.0, size=3)
    return Affine(matrix=m)


def _field() -> DisplacementField:
    """Random smooth float32 displacements (up to 2 um) on an anisotropic, offset grid."""
    raw = ndimage.gaussian_filter(RNG.normal(size=(3, *F_SHAPE)), sigma=(0, 1.5, 1.5, 1.5))
    raw *= 2.0 / np.abs(raw).max()
    return DisplacementField.from_array(raw.astype("float32"), spacing=F_SPACING,
                                        origin=F_ORIGIN, unit="um")


def _field_points(n_inside: int = 2000, n_outside: int = 40) -> np.ndarray:
    """Points inside the field's domain (voxel centres ± half a voxel), its grid nodes,
    and a few well outside it on every side."""
    lo = F_ORIGIN - 0.45 * F_SPACING
    hi = F_ORIGIN + (np.array(F_SHAPE) - 0.55) * F_SPACING
    inside = RNG.uniform(lo, hi, size=(n_inside, 3))
    nodes = F_ORIGIN + np.array([[0, 0, 0], [8, 10, 12], [4, 5, 6], [8, 0, 12]]) * F_SPACING
    span = hi - lo
    outside = RNG.uniform(lo - 2 * span, hi + 2 * span, size=(20 * n_outside, 3))
    outside = outside[np.any((outside < lo - span / 4) | (outside > hi + span / 4), axis=1)]
    return np.vstack([inside, nodes, outside[:n_outside]])


def _cli(store: Path, pts: np.ndarray, tmp_path: Path) -> np.ndarray:
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame(pts, columns=["z", "y", "x"]).to_csv(src, index=False, float_format="%.17g")
    assert main(["transform-points", str(store), "--points", str(src), "-o", str(out)]) == 0
    return pd.read_csv(out)[["z", "y", "x"]].to_numpy()


def _check_all_three(store: Path, pts: np.ndarray, tmp_path: Path, tol: float) -> np.ndarray:
    """The spec reader, ngffreg's reader and the CLI agree within ``tol`` spacings."""
    ours = spec.map_points(store, pts)
    ref = read_registration(store).apply(pts)
    cli = _cli(store, pts, tmp_path)
    atol = tol * SPACING
    for name, other in (("read_registration", ref), ("transform-points", cli)):
        err = np.abs(ours - other)
        print(f"spec-only reader vs {name}: max |Δ| = {err.max():.3g}")
        assert np.all(err <= atol), f"spec reader and {name} differ by {err.max():.3g}"
    return ours


def test_affine(store: Path, tmp_path: Path, capsys) -> None:
    aff = _affine(1)
    write_registration(store, aff)
    pts = RNG.uniform([-5, -5, -5], [30, 20, 15], size=(2000, 3))
    ours = _check_all_three(store, pts, tmp_path, tol=1e-6)
    # and it is the affine, not something that happens to agree with ngffreg
    np.testing.assert_allclose(ours, pts @ aff.matrix[:3, :3].T + aff.matrix[:3, 3],
                               rtol=0, atol=1e-12)
    capsys.readouterr()


def test_sequence_of_field_and_affine(store: Path, tmp_path: Path, capsys) -> None:
    field, aff = _field(), _affine(2)
    write_registration(store, Sequence(transforms=(field, aff)))
    pts = _field_points()
    ours = _check_all_three(store, pts, tmp_path, tol=1e-4)
    # the field really moves the points inside it, and leaves those outside alone
    affine_only = pts @ aff.matrix[:3, :3].T + aff.matrix[:3, 3]
    moved = np.abs(ours - affine_only).max(axis=1) > 1e-3
    n_in = 2000 + 4
    assert moved[:n_in].mean() > 0.9
    np.testing.assert_allclose(ours[n_in:], affine_only[n_in:], rtol=0, atol=1e-12)
    capsys.readouterr()


def test_bijection_uses_the_forward(store: Path, tmp_path: Path, capsys) -> None:
    forward = Sequence(transforms=(_field(), _affine(3)))
    inverse = _affine(3).inverse()  # deliberately not the exact inverse of forward
    write_registration(store, forward, inverse=inverse)
    entry = next(t for t in _stored(store)["coordinateTransformations"]
             if t.get("name") == "registration")
    assert entry["type"] == "bijection"
    pts = _field_points(1500, 20)
    ours = _check_all_three(store, pts, tmp_path, tol=1e-4)
    np.testing.assert_allclose(ours, forward.apply(pts), rtol=0, atol=1e-4 * SPACING.min())
    capsys.readouterr()


def test_systems_are_found_from_the_metadata_not_their_names(store: Path) -> None:
    """Rename ``fixed``/``moving`` (and the field's system) everywhere: same mapping."""
    write_registration(store, Sequence(transforms=(_field(), _affine(4))))
    pts = _field_points(300, 10)
    before = spec.map_points(store, pts)
    for meta in [store / "zarr.json", *store.glob("coordinateTransformations/*/zarr.json")]:
        text = meta.read_text().replace('"fixed"', '"atlas"').replace('"moving"', '"sample"')
        meta.write_text(text)
    np.testing.assert_array_equal(spec.map_points(store, pts), before)


def _hand_written_store(root: Path, field: np.ndarray, field_scale, field_translation,
                        registration: dict) -> Path:
    """A minimal OME-Zarr 0.6 store written with zarr alone, from the spec's examples:
    intrinsic system ``in``, a transformation to ``out``, and a displacement field with its
    displacement axis last (the spec's SHOULD) under ``coordinateTransformations/df``."""
    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    group = zarr.open_group(str(root), mode="w")
    group.create_array("s0", shape=(2, 2, 2), dtype="uint8")
    group.attrs["ome"] = {"version": "0.6", "multiscales": [{
        "coordinateSystems": [{"name": "in", "axes": space}, {"name": "out", "axes": space}],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0], "input": {"path": "s0"},
             "output": {"name": "in"}}]}],
        "coordinateTransformations": [registration]}]}
    df = zarr.open_group(str(root / "coordinateTransformations" / "df"), mode="w")
    df.create_array("s0", data=field)
    df.attrs["ome"] = {"version": "0.6", "multiscales": [{
        "coordinateSystems": [{"name": "in", "axes": [
            *space, {"name": "d", "type": "displacement", "discrete": True}]}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{
            "type": "sequence", "input": {"path": "s0"}, "output": {"name": "in"},
            "transformations": [{"type": "scale", "scale": field_scale},
                                {"type": "translation", "translation": field_translation}],
        }]}]}]}
    return root


def test_the_specs_worked_displacement_example(tmp_path: Path) -> None:
    """The spec's 1-D example along z: displacements [-1, 0, 1] at spacing 2 map the point
    1.0 to 0.5 (index 0.5, linear interpolation gives -0.5). Here as a 3-D field (z, y, x, d)
    that moves only z, then a translation, in a sequence, in a store written by hand."""
    field = np.zeros((3, 1, 1, 3), dtype="float32")
    field[:, 0, 0, 0] = [-1.0, 0.0, 1.0]
    reg = {"type": "sequence", "name": "reg", "input": {"name": "in"},
           "output": {"name": "out"}, "transformations": [
               {"type": "displacements", "path": "coordinateTransformations/df",
                "interpolation": "linear"},
               {"type": "translation", "translation": [0.0, 10.0, 20.0]}]}
    store = _hand_written_store(tmp_path / "hand.ome.zarr", field, [2.0, 1.0, 1.0, 1.0],
                                [0.0, 0.0, 0.0, 0.0], reg)
    pts = np.array([[1.0, 0.0, 0.0],     # the spec's point: 1.0 -> 0.5
                    [3.0, 0.2, -0.3],    # index 1.5 -> d = 0.5
                    [4.9, 0.0, 0.0],     # index 2.45: inside the last voxel, edge value 1
                    [5.1, 0.0, 0.0],     # index 2.55: outside, no displacement
                    [1.0, 0.6, 0.0]])    # y index 0.6: outside
    got = spec.map_points(store, pts)
    want = pts + np.array([[-0.5, 10, 20], [0.5, 10, 20], [1, 10, 20], [0, 10, 20], [0, 10, 20]])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_full_homogeneous_affine_and_a_bare_string_system_are_read(tmp_path: Path) -> None:
    m = np.eye(4)
    m[:3, :3] = [[0, 1, 0], [-1, 0, 0], [0, 0, -1]]  # the spec's matrix example
    reg = {"type": "affine", "input": "in", "output": "out", "affine": m.tolist()}
    store = _hand_written_store(tmp_path / "h.ome.zarr", np.zeros((1, 1, 1, 3), "float32"),
                                [1.0] * 4, [0.0] * 4, reg)
    np.testing.assert_array_equal(spec.map_points(store, [[1.0, 2.0, 3.0]]), [[2, -1, -3]])


@pytest.mark.parametrize("entry", [
    {"type": "byDimension", "transformations": []},
    {"type": "sequence", "transformations": [{"type": "mapAxis", "mapAxis": [0, 2, 1]}]},
    {"type": "bijection", "forward": {"type": "coordinates", "path": "x"},
     "inverse": {"type": "identity"}},
])
def test_unknown_types_are_refused_clearly(tmp_path: Path, entry: dict) -> None:
    reg = {**entry, "input": {"name": "in"}, "output": {"name": "out"}}
    store = _hand_written_store(tmp_path / "u.ome.zarr", np.zeros((1, 1, 1, 3), "float32"),
                                [1.0] * 4, [0.0] * 4, reg)
    with pytest.raises(spec.SpecReaderError, match="does not know the transformation type"):
        spec.map_points(store, np.zeros((2, 3)))


def test_the_reader_imports_no_ngffreg() -> None:
    tree = ast.parse(Path(spec.__file__).read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree)
               if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules <= {"__future__", "json", "pathlib", "typing", "numpy", "zarr", "scipy"}


def test_a_field_stored_as_a_bare_annotated_array(tmp_path: Path) -> None:
    """The spec's Example 2 layout: the field is an array whose own attributes carry its
    coordinate system and array-to-field transformation (bare-string names)."""
    reg = {"type": "displacements", "path": "coordinateTransformations/arr",
           "input": {"name": "in"}, "output": {"name": "out"}}
    store = _hand_written_store(tmp_path / "a.ome.zarr", np.zeros((1, 1, 1, 3), "float32"),
                                [1.0] * 4, [0.0] * 4, reg)
    data = np.zeros((1, 1, 3, 3), dtype="float64")  # z, y, x, d: displacement along x only
    data[0, 0, :, 2] = [-1.0, 0.0, 1.0]
    zarr.create_array(str(store / "coordinateTransformations" / "arr"), data=data,
                      attributes={"coordinateSystems": [{"name": "in", "axes": [
                          *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"),
                          {"name": "d", "type": "displacement", "discrete": True}]}],
                          "coordinateTransformations": [{"type": "scale",
                                                         "scale": [1.0, 1.0, 2.0, 1.0],
                                                         "output": "in"}]})
    got = spec.map_points(store, [[0.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.5], [0.0, 0.0, 9.0]], rtol=0, atol=1e-12)
