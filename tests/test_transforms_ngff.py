"""Transforms as OME-NGFF 0.6 (RFC-5) metadata: exact round trips, ngff-zarr and ITK
cross-checks, a reader written from the RFC-5 text alone, and refusals."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import ndimage

import ngffreg
from conftest import raise_if_dask_computes
from ngffreg.errors import InputError, OutputError, TransformError
from ngffreg.io.write import to_ome_zarr
from ngffreg.transforms import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Translation,
    invert_field,
    read_registration,
    read_transforms,
    write_registration,
    write_transforms,
)

SPACING = (2.0, 1.0, 0.5)
ORIGIN = (1.0, 2.0, 3.0)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A small registered-image store: OME-Zarr 0.6, datasets mapping to ``fixed``."""
    rng = np.random.default_rng(0)
    image = ngffreg.make_image(rng.random((12, 14, 16)).astype("float32"), spacing=SPACING,
                               origin=ORIGIN, unit="um")
    return to_ome_zarr(image, tmp_path / "out.ome.zarr", version="0.6", chunks=8,
                       coordinate_system="fixed")


def _affine(seed: int = 1) -> Affine:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] += rng.normal(scale=0.1, size=(3, 3))
    m[:3, 3] = rng.normal(scale=3.0, size=3)
    return Affine(matrix=m)


def _field(seed: int = 2, shape=(6, 7, 8), dtype="float32", chunks=4) -> DisplacementField:
    rng = np.random.default_rng(seed)
    data = da.from_array(rng.normal(size=(3, *shape)).astype(dtype), chunks=(3, *(chunks,) * 3))
    return DisplacementField.from_array(data, spacing=(4.0, 2.5, 1.25), origin=(0.5, -1.0, 1.5),
                                        unit="um")


def _root(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())


def _edit_root(store: Path, edit) -> None:
    doc = _root(store)
    edit(doc["attributes"]["ome"]["multiscales"][0])
    doc.pop("consolidated_metadata", None)
    (store / "zarr.json").write_text(json.dumps(doc))


def _points(n: int = 200, seed: int = 3, low=(1.0, 0.0, 2.0), high=(20.0, 15.0, 10.0)):
    return np.random.default_rng(seed).uniform(low, high, size=(n, 3))


def assert_same(a, b) -> None:
    """Same type, names and parameters, bit for bit; fields: identical arrays and grids."""
    assert type(a) is type(b)
    assert (a.input, a.output) == (b.input, b.output)
    if isinstance(a, Translation):
        assert np.array_equal(a.translation, b.translation)
    elif isinstance(a, Scale):
        assert np.array_equal(a.scale, b.scale)
    elif isinstance(a, Affine):
        assert a.matrix.tobytes() == b.matrix.tobytes()
    elif isinstance(a, Sequence):
        assert len(a.transforms) == len(b.transforms)
        for x, y in zip(a.transforms, b.transforms, strict=True):
            assert x.name == y.name
            assert_same(x, y)
    elif isinstance(a, Bijection):
        assert_same(a.forward, b.forward)
        assert_same(a.inverse_transform, b.inverse_transform)
    elif isinstance(a, DisplacementField):
        x, y = np.asarray(a.field.data), np.asarray(b.field.data)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()
        assert np.allclose(a.spacing, b.spacing, rtol=0, atol=1e-12)
        assert np.allclose(a.grid.frame_origin, b.grid.frame_origin, rtol=0, atol=1e-12)
        assert a.unit == b.unit and a.outside == b.outside


def _cases() -> dict:
    aff = _affine()
    return {
        "identity": Identity(),
        "translation": Translation(translation=[0.1, -2.5, 1e-17]),
        "scale": Scale(scale=[1.0 / 3.0, 2.0, 0.7]),
        "affine": aff,
        "nested_sequence": Sequence(
            name="outer",
            transforms=(
                Translation(translation=[1.0, 2.0, 3.0], name="shift", output="a"),
                Sequence(name="inner", input="a", output="b", transforms=(
                    Scale(scale=[2.0, 0.5, 1.1], output="c"), Affine(matrix=aff.matrix,
                                                                       input="c"))),
                Identity(input="b"),
            )),
        "bijection_affine": Bijection(forward=aff, inverse_transform=aff.inverse()),
        "field": _field(),
    }


@pytest.mark.parametrize("kind", list(_cases()))
def test_round_trip_is_exact_for_every_type(store: Path, kind: str) -> None:
    t = _cases()[kind].renamed(input="fixed", output="moving")
    if isinstance(t, Bijection):
        t = Bijection(forward=t.forward.renamed(input="fixed", output="moving"),
                      inverse_transform=t.inverse_transform.renamed(input="moving",
                                                                    output="fixed"))
    write_transforms(store, {kind: t})
    back = read_transforms(store)
    assert list(back) == [kind]
    got = back[kind]
    assert got.name == kind
    assert_same(t, got)
    pts = _points()
    assert np.array_equal(got.apply(pts), t.apply(pts))


def test_registration_bijection_with_field_inverse_round_trips(store: Path) -> None:
    smooth = _field(shape=(8, 9, 10))
    field = DisplacementField.from_array(  # small enough to invert
        ndimage.gaussian_filter(np.asarray(smooth.field.data), (0, 1, 1, 1)) * 0.5,
        spacing=smooth.spacing, origin=smooth.grid.origin, unit="um")
    aff = _affine(5)
    forward = Sequence(transforms=(field.renamed(input="fixed", output="warped"),
                                   aff.renamed(input="warped", output="moving")))
    inverse_field = invert_field(field).compute()
    inverse = Sequence(transforms=(aff.inverse().renamed(input="moving", output="warped"),
                                   inverse_field.renamed(input="warped", output="fixed")))
    write_registration(store, forward, inverse=inverse)

    got = read_registration(store)
    assert isinstance(got, Bijection)
    assert (got.input, got.output) == ("fixed", "moving")
    assert_same(forward, got.forward)
    assert_same(inverse, got.inverse_transform)
    # fields are stored as multiscale images under coordinateTransformations/
    entry = _root(store)["attributes"]["ome"]["multiscales"][0]["coordinateTransformations"][0]
    assert entry["type"] == "bijection" and entry["name"] == "registration"
    paths = [entry["forward"]["transformations"][0]["path"],
             entry["inverse"]["transformations"][1]["path"]]
    for p in paths:
        assert p.startswith("coordinateTransformations/")
        assert (store / p / "zarr.json").is_file()
    # the inverse field's own coordinate system is named after its input system
    inv_meta = json.loads((store / paths[1] / "zarr.json").read_text())
    assert inv_meta["attributes"]["ome"]["multiscales"][0]["coordinateSystems"][0]["name"] \
        == "warped"
    # forward then inverse comes back near the start, through the stored transforms
    pts = _points(100, low=(6.0, 2.0, 4.0), high=(24.0, 18.0, 10.0))
    assert np.abs(got.inverse_transform.apply(got.apply(pts)) - pts).max() < 1e-2


def test_fields_are_read_lazily_and_chunked_as_stored(store: Path) -> None:
    field = _field(shape=(9, 10, 11), chunks=4).renamed(input="fixed", output="moving")
    write_registration(store, field)
    arr = zarr.open_array(str(store / "coordinateTransformations/registration/scale0/"
                                        "registration"), mode="r")
    assert arr.chunks == (3, 4, 4, 4)
    with raise_if_dask_computes():
        got = read_registration(store)
    assert isinstance(got.field.data, da.Array)
    assert got.field.data.chunksize == (3, 4, 4, 4)


def test_ngff_zarr_reads_the_store_and_the_fields(store: Path) -> None:
    import ngff_zarr
    from ngff_zarr.displacement_field_transform import field_image
    from ngff_zarr.v06 import zarr_metadata as m

    forward = Sequence(transforms=(_field().renamed(input="fixed", output="mid"), _affine().renamed(
        input="mid")))
    write_registration(store, forward, inverse=Sequence(transforms=(
        _affine().inverse().renamed(output="mid"), _field(7).renamed(input="mid"))))

    ms = ngff_zarr.from_ngff_zarr(str(store), validate=True)
    names = [cs.name for cs in ms.metadata.coordinateSystems]
    assert names[0] == "fixed" and {"moving", "mid"} <= set(names)
    assert ms.images[0].dims == ("z", "y", "x") or list(ms.images[0].dims) == ["z", "y", "x"]
    assert ms.images[0].scale == dict(zip("zyx", SPACING, strict=True))
    (reg,) = ms.metadata.coordinateTransformations
    assert isinstance(reg, m.Bijection) and reg.name == "registration"
    assert (reg.input.name, reg.output.name) == ("fixed", "moving")
    fwd, inv = reg.forward, reg.inverse
    assert isinstance(fwd, m.TransformSequence) and isinstance(inv, m.TransformSequence)
    assert [type(t) for t in fwd.transformations] == [m.Displacements, m.Affine]
    assert [type(t) for t in inv.transformations] == [m.Affine, m.Displacements]
    disp = fwd.transformations[0]
    assert (disp.input.name, disp.output.name) == ("fixed", "mid")
    assert disp.interpolation == "linear"
    assert np.array_equal(np.asarray(fwd.transformations[1].affine), _affine().matrix[:3])

    # the field is an OME-Zarr 0.6 image ngff-zarr reads, validates and accepts as a field
    field_ms = ngff_zarr.from_ngff_zarr(str(store / disp.path), validate=True)
    assert tuple(field_ms.images[0].dims) == ("c", "z", "y", "x")
    assert field_ms.images[0].axes_types == {"c": "displacement"}
    assert field_ms.metadata.coordinateSystems[0].name == "fixed"
    image = field_image(disp, field_ms, ["z", "y", "x"])
    assert image.data.shape == (3, 6, 7, 8)
    declared = ngff_zarr.declare_field_transform(field_ms)
    assert declared.metadata.coordinateTransformations[-1].type == "displacements"
    on_image = ngff_zarr.declare_field_transform(
        ms, path=disp.path, input_system="fixed", output_system="moving")
    assert on_image.metadata.coordinateTransformations[-1].path == disp.path


def _itk_affine(params: np.ndarray):
    """ITK-Wasm affine parameters (x, y, z; 9 matrix + 3 offset) as a function of z, y, x
    points."""
    matrix, offset = params[:9].reshape(3, 3), params[9:]

    def apply(pts_zyx: np.ndarray) -> np.ndarray:
        xyz = pts_zyx[:, ::-1]
        return (xyz @ matrix.T + offset)[:, ::-1]

    return apply


def test_ngff_zarr_itk_conversion_maps_points_like_ours(store: Path) -> None:
    import ngff_zarr

    linear = Sequence(transforms=(Scale(scale=[1.1, 0.9, 1.05]),
                                  Translation(translation=[3.0, -1.0, 0.25]), _affine(9)))
    write_registration(store, linear, inverse=linear.inverse())
    ms = ngff_zarr.from_ngff_zarr(str(store), validate=True)
    (reg,) = ms.metadata.coordinateTransformations
    pts = _points(500)
    ours = read_registration(store)
    for part, mine in ((reg, ours), (reg.inverse, ours.inverse_transform)):
        (itk_tx,) = ngff_zarr.ngff_transform_to_itk_transform(part, ("z", "y", "x"))
        theirs = _itk_affine(np.asarray(itk_tx.parameters, dtype=np.float64))(pts)
        err = np.abs(theirs - mine.apply(pts)).max()
        print(f"ngff-zarr→ITK-Wasm affine vs ours: max |Δ| = {err:.3g}")
        assert err < 1e-12

    # a field: ITK-Wasm's field holds our displacements at our grid points
    field = _field(11, shape=(5, 6, 7)).renamed(input="fixed", output="moving")
    write_transforms(store, {"warp": field})
    ms = ngff_zarr.from_ngff_zarr(str(store), validate=True)
    disp = next(t for t in ms.metadata.coordinateTransformations if t.name == "warp")
    field_ms = ngff_zarr.from_ngff_zarr(str(store / disp.path))
    (itk_field,) = ngff_zarr.ngff_transform_to_itk_transform(
        disp, ("z", "y", "x"), fields={disp.path: field_ms})
    fixed = np.asarray(itk_field.fixedParameters)
    size, origin, spacing = fixed[:3].astype(int), fixed[3:6], fixed[6:9]
    assert np.array_equal(fixed[9:], np.eye(3).ravel())
    vectors = np.asarray(itk_field.parameters).reshape(*size[::-1], 3)  # [z][y][x][x,y,z]
    got = read_transforms(store)["warp"]
    grid = got.grid_points()
    assert np.allclose(origin[::-1], grid[0], rtol=0, atol=1e-12)
    assert np.allclose(spacing[::-1], got.spacing, rtol=0, atol=1e-12)
    itk_disp = vectors[..., ::-1].reshape(-1, 3)
    assert np.abs(itk_disp - got.displacement(grid)).max() == 0.0


def test_itk_transforms_points_like_ours(store: Path) -> None:
    itk = pytest.importorskip("itk")
    import ngff_zarr

    field = _field(13, shape=(5, 6, 7), dtype="float64").renamed(input="fixed",
                                                                   output="moving")
    write_transforms(store, {"warp": field})
    ms = ngff_zarr.from_ngff_zarr(str(store), validate=True)
    (disp,) = ms.metadata.coordinateTransformations
    (tx,) = ngff_zarr.ngff_transform_to_itk_transform(
        disp, ("z", "y", "x"), fields={disp.path: ngff_zarr.from_ngff_zarr(
            str(store / disp.path))})
    fixed = np.asarray(tx.fixedParameters)
    size = fixed[:3].astype(int)
    vectors = np.ascontiguousarray(np.asarray(tx.parameters).reshape(*size[::-1], 3))
    image = itk.Image[itk.Vector[itk.D, 3], 3].New()
    image.SetRegions([int(n) for n in size])
    image.Allocate()
    itk.array_view_from_image(image)[:] = vectors
    image.SetOrigin(fixed[3:6].tolist())
    image.SetSpacing(fixed[6:9].tolist())
    itk_tx = itk.DisplacementFieldTransform[itk.D, 3].New()
    itk_tx.SetDisplacementField(image)
    got = read_transforms(store)["warp"]
    lo, hi = got.grid_points()[[0, -1]]
    pts = np.vstack([got.grid_points()[::7], _points(200, low=lo, high=hi)])
    theirs = np.array([list(itk_tx.TransformPoint(p[::-1].tolist())) for p in pts])[:, ::-1]
    err = np.abs(theirs - got.apply(pts)).max()
    print(f"ITK DisplacementFieldTransform vs ours: max |Δ| = {err:.3g}")
    assert err < 1e-9


def _spec_apply(entry: dict, pts: np.ndarray, store: Path) -> np.ndarray:
    """Apply an RFC-5 transformation knowing only the spec text and plain json/zarr."""
    kind = entry["type"]
    if kind == "identity":
        return pts
    if kind == "translation":
        return pts + np.asarray(entry["translation"])
    if kind == "scale":
        return pts * np.asarray(entry["scale"])
    if kind == "affine":  # upper M x (N+1) block of the homogeneous matrix
        a = np.asarray(entry["affine"])
        return pts @ a[:, :-1].T + a[:, -1]
    if kind == "sequence":  # first transformation first
        for t in entry["transformations"]:
            pts = _spec_apply(t, pts, store)
        return pts
    if kind == "bijection":
        return _spec_apply(entry["forward"], pts, store)
    if kind == "displacements":  # p + field(p), the field placed by its own transforms
        group = store / entry["path"]
        ms = json.loads((group / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
        ds = ms["datasets"][0]
        axes = next(cs for cs in ms["coordinateSystems"]
                    if cs["name"] == ds["coordinateTransformations"][0]["output"]["name"])["axes"]
        comp = [a["type"] for a in axes].index("displacement")
        scale, trans = np.ones(4), np.zeros(4)
        for t in ds["coordinateTransformations"][0]["transformations"]:
            if t["type"] == "scale":
                scale = np.asarray(t["scale"])
            elif t["type"] == "translation":
                trans = np.asarray(t["translation"])
        spatial = [k for k in range(4) if k != comp]
        data = np.moveaxis(zarr.open_array(str(group / ds["path"]), mode="r")[...], comp, 0)
        index = (pts - trans[spatial]) / scale[spatial]
        d = np.stack([ndimage.map_coordinates(data[k].astype(np.float64), index.T, order=1,
                                              mode="nearest") for k in range(3)], axis=1)
        return pts + d
    raise AssertionError(f"unexpected type {kind}")


def test_a_spec_only_reader_maps_points_like_read_registration(store: Path) -> None:
    forward = Sequence(transforms=(
        Translation(translation=[0.5, -0.25, 0.0], output="shifted"),
        _field(17, shape=(8, 9, 10)).renamed(input="shifted", output="warped"),
        Sequence(input="warped", transforms=(Scale(scale=[1.01, 0.98, 1.0]), _affine(4)))))
    write_registration(store, forward)
    entry = next(e for e in _root(store)["attributes"]["ome"]["multiscales"][0][
        "coordinateTransformations"] if e["name"] == "registration")
    assert (entry["input"], entry["output"]) == ({"name": "fixed"}, {"name": "moving"})
    # random points whose shifted position lies inside the field's grid
    pts = _points(1000, low=(0.0, 0.0, 1.0), high=(28.0, 19.5, 13.0))
    spec = _spec_apply(entry, pts, store)
    ours = read_registration(store).apply(pts)
    err = np.abs(spec - ours).max()
    print(f"spec-only reader vs read_registration: max |Δ| = {err:.3g}")
    assert err < 1e-12


def test_ngff_zarr_rewrite_with_matrix_arrays_reads_back_bitwise(store: Path,
                                                                  tmp_path: Path) -> None:
    import ngff_zarr

    aff = _affine(21)
    write_registration(store, aff, inverse=aff.inverse())
    ms = ngff_zarr.from_ngff_zarr(str(store), validate=True)
    other = tmp_path / "rewritten.ome.zarr"
    ngff_zarr.to_ngff_zarr(str(other), ms, version="0.6")
    entry = _root(other)["attributes"]["ome"]["multiscales"][0]["coordinateTransformations"][0]
    assert "affine" not in entry["forward"] and entry["forward"]["path"]  # externalised
    got = read_registration(other)
    assert got.forward.matrix.tobytes() == aff.matrix.tobytes()
    assert got.inverse_transform.matrix.tobytes() == aff.inverse().matrix.tobytes()


def test_sequence_that_does_not_chain_is_refused(store: Path) -> None:
    def edit(ms):
        ms["coordinateSystems"] += [
            {"name": n, "axes": [{"name": d, "type": "space", "unit": "micrometer"}
                                 for d in "zyx"]} for n in ("moving", "a", "b")]
        ms["coordinateTransformations"] = [{
            "type": "sequence", "name": "registration", "input": {"name": "fixed"},
            "output": {"name": "moving"}, "transformations": [
                {"type": "translation", "translation": [1, 2, 3],
                 "input": {"name": "fixed"}, "output": {"name": "a"}},
                {"type": "scale", "scale": [1, 2, 3],
                 "input": {"name": "b"}, "output": {"name": "moving"}}]}]

    _edit_root(store, edit)
    with pytest.raises(TransformError, match="do not chain"):
        read_registration(store)


@pytest.mark.parametrize("matrix", [[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                    [[1, 0, 0, 0], [0, 1, 0, 0]],
                                    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
def test_affine_of_the_wrong_shape_is_refused(store: Path, matrix) -> None:
    write_registration(store, Affine(matrix=np.eye(4)))

    def edit(ms):
        ms["coordinateTransformations"][0]["affine"] = matrix

    _edit_root(store, edit)
    with pytest.raises(TransformError, match="3×4"):
        read_registration(store)


def test_field_with_two_components_is_refused(store: Path) -> None:
    write_registration(store, _field().renamed(input="fixed", output="moving"))
    bad = ngffreg.make_image(np.zeros((2, 4, 4, 4), "float32"), spacing=1.0, unit="um",
                             dims=("c", "z", "y", "x"))
    to_ome_zarr(bad, store / "coordinateTransformations" / "registration", version="0.6",
                coordinate_system="fixed", axis_types={"c": "displacement"}, overwrite=True)
    with pytest.raises(TransformError, match="3 components"):
        read_registration(store)


@pytest.mark.parametrize(("change", "message"), [
    ({"type": "mapAxis", "mapAxis": [2, 1, 0]}, "cannot apply"),
    ({"type": "displacements", "path": "coordinateTransformations/none"}, "no displacement"),
    ({"type": "translation", "translation": [1.0, 2.0]}, "3 values"),
    ({"output": {"name": "nowhere"}}, "not declared"),
])
def test_other_malformed_transforms_are_refused(store: Path, change, message) -> None:
    write_registration(store, Translation(translation=[1.0, 2.0, 3.0]))

    def edit(ms):
        entry = ms["coordinateTransformations"][0]
        entry.pop("translation")
        entry.update({"translation": [1.0, 2.0, 3.0], **change})
        if entry["type"] != "translation":
            entry.pop("translation")

    _edit_root(store, edit)
    with pytest.raises(TransformError, match=message):
        read_transforms(store)


def test_thin_plate_spline_is_sampled_on_a_given_grid_or_refused(store: Path) -> None:
    rng = np.random.default_rng(4)
    src = rng.uniform(0, 20, size=(8, 3))
    tps = ThinPlateSpline(source=src, target=src + rng.normal(scale=0.5, size=(8, 3)),
                          input="fixed", output="moving")
    with pytest.raises(TransformError, match="sample_field"):
        write_registration(store, tps)
    grid = ngffreg.make_image(np.zeros((6, 7, 8)), spacing=(3.0, 2.0, 2.5), unit="um")
    write_registration(store, tps, grid=grid)
    got = read_registration(store)
    assert isinstance(got, DisplacementField)
    pts = got.grid_points()
    assert np.abs(got.apply(pts) - tps.apply(pts)).max() < 1e-5  # float32 field


def test_existing_names_need_overwrite_and_replaced_fields_are_removed(store: Path) -> None:
    write_registration(store, _field().renamed(input="fixed", output="moving"))
    old = store / "coordinateTransformations" / "registration"
    assert old.is_dir()
    with pytest.raises(OutputError, match="overwrite=True"):
        write_registration(store, _affine())
    write_registration(store, _affine(), overwrite=True)
    assert not old.exists()
    assert isinstance(read_registration(store), Affine)
    # the store stays a valid OME-Zarr image ngffreg reads
    assert ngffreg.open_image(store).shape == (12, 14, 16)


def test_refusals_say_what_to_do(store: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="write_registration"):
        read_registration(store)
    with pytest.raises(TransformError, match="renamed"):
        write_transforms(store, {"t": Translation(translation=[1, 2, 3])})
    with pytest.raises(TransformError, match="does not declare"):
        write_transforms(store, {"t": Identity(input="fixed", output="atlas")})
    with pytest.raises(TransformError, match="fixed"):
        write_registration(store, Identity(input="moving", output="fixed"))
    with pytest.raises(TransformError, match="millimeter"):
        write_registration(store, Identity(), unit="mm")
    image = ngffreg.make_image(np.zeros((4, 4, 4), "uint8"), spacing=1.0, unit="um")
    v05 = to_ome_zarr(image, tmp_path / "v05.ome.zarr", version="0.5")
    with pytest.raises(InputError, match=r"0\.6"):
        write_registration(v05, Identity())
    with pytest.raises(InputError, match=r"0\.6"):
        to_ome_zarr(image, tmp_path / "x.ome.zarr", version="0.5", coordinate_system="fixed")


def test_field_in_other_units_is_converted(store: Path) -> None:
    field = _field()
    in_nm = DisplacementField.from_array(
        field.field.data * 1000.0, spacing=np.asarray(field.spacing) * 1000.0,
        origin=field.grid.origin * 1000.0, unit="nm", input="fixed", output="moving")
    write_registration(store, in_nm)
    got = read_registration(store)
    assert got.unit == "micrometer"
    pts = _points()
    assert np.abs(got.apply(pts) - field.apply(pts)).max() < 1e-4


def test_write_is_asdict_of_ngff_zarr_models(store: Path) -> None:
    """What is written parses back into ngff-zarr's models and serialises the same."""
    from ngff_zarr.v06.zarr_metadata import Axis, CoordinateSystem, Metadata

    write_registration(store, Sequence(transforms=(_affine(), Translation(
        translation=[1.0, 2.0, 3.0]))))
    ms = _root(store)["attributes"]["ome"]["multiscales"][0]
    entry = ms["coordinateTransformations"][0]
    cs = [CoordinateSystem(name=c["name"], axes=[Axis(**a) for a in c["axes"]])
          for c in ms["coordinateSystems"]]
    (parsed,) = Metadata._parse_transforms([entry], cs)

    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    assert strip(asdict(parsed)) == entry
