"""An oblique direction survives OME-Zarr 0.6: written as a ``grid`` system (scale and
translation per level) plus one ``affine`` to the physical system, read back exactly.

Neither real volume is oblique (mni's and ch2's directions are signed permutations, which
ngffreg normalises on open), so a crop of mni is given a rotation of 7° about an oblique
axis. ITK is the reference for where its voxels are: the same image written as NRRD by ITK
and placed by ``TransformIndexToPhysicalPoint``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ngffreg
from conftest import raise_if_dask_computes
from ngffreg.errors import InputError, OrientationError
from ngffreg.image import direction, index_to_physical, load, origin, spacing
from ngffreg.io.read import open_levels

N_LEVELS = 3
CHUNKS = 16
_AXIS = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)


def _rotation(degrees: float, axis: np.ndarray = _AXIS) -> np.ndarray:
    """Rodrigues' rotation matrix (z, y, x) about a unit ``axis``."""
    a = np.radians(degrees)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(a) * k + (1.0 - np.cos(a)) * (k @ k)


ROTATION = _rotation(7.0)


@pytest.fixture
def oblique(data_dir: Path):
    """A 40×48×44 crop of mni (real voxels, 1 mm), turned 7° about an oblique axis."""
    mni = data_dir / "ants" / "mni.nii.gz"
    if not mni.is_file():
        pytest.skip("ants/mni.nii.gz missing from the data folder")
    crop = ngffreg.open_image(mni).isel(z=slice(70, 110), y=slice(80, 128), x=slice(70, 114))
    image = ngffreg.make_image(crop.data, spacing=spacing(crop), origin=origin(crop),
                               direction=ROTATION @ direction(crop), unit=ngffreg.units(crop))
    assert not np.allclose(direction(image), np.eye(3), atol=1e-3)  # kept oblique
    return image


def _write(image, path: Path, **kwargs) -> Path:
    kwargs = {"version": "0.6", "chunks": CHUNKS, "n_levels": N_LEVELS, **kwargs}
    return ngffreg.to_ome_zarr(image, path, **kwargs)


def _multiscales(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]


def _corners_and_some(shape, n: int = 12, seed: int = 3) -> np.ndarray:
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in shape], indexing="ij")).reshape(3, -1).T
    rng = np.random.default_rng(seed)
    some = np.stack([rng.integers(0, s, n) for s in shape], axis=1)
    return np.concatenate([corners, some])


def _assert_same_points(got: np.ndarray, expected: np.ndarray, rel: float) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * scale)


def test_positions_match_itk_after_an_ome_zarr_round_trip(oblique, tmp_path: Path) -> None:
    import itk

    from ngffreg.itk_bridge import to_itk

    nrrd = tmp_path / "oblique.nrrd"
    pixels = load(oblique).values
    itk.imwrite(to_itk(pixels, spacing(oblique), origin(oblique), direction(oblique)), str(nrrd))
    reference = itk.imread(str(nrrd))
    ref_pixels = itk.array_from_image(reference)  # z, y, x

    source = ngffreg.open_image(nrrd)
    np.testing.assert_allclose(direction(source), direction(oblique), atol=1e-12)
    store = _write(source, tmp_path / "oblique.ome.zarr")
    back = ngffreg.open_image(store)
    values = load(back).values
    for z, y, x in _corners_and_some(back.shape, n=20):
        p_xyz = reference.TransformIndexToPhysicalPoint([int(x), int(y), int(z)])
        expected = np.array([p_xyz[2], p_xyz[1], p_xyz[0]])
        _assert_same_points(index_to_physical(back, [z, y, x])[0], expected, 1e-9)
        assert values[z, y, x] == ref_pixels[z, y, x]


def test_every_level_reads_back_where_it_was_written(oblique, tmp_path: Path) -> None:
    store = _write(oblique, tmp_path / "oblique.ome.zarr")
    written = ngffreg.levels(ngffreg.to_pyramid(oblique, n_levels=N_LEVELS, chunks=CHUNKS))
    read = open_levels(store)
    assert len(read) == len(written) == N_LEVELS
    for k, (got, level) in enumerate(zip(read, written, strict=True)):
        assert got.shape == level.shape, k
        np.testing.assert_allclose(direction(got), direction(level), rtol=0, atol=1e-12)
        np.testing.assert_allclose(origin(got), origin(level), rtol=0, atol=1e-12)
        np.testing.assert_allclose(spacing(got), spacing(level), rtol=0, atol=1e-12)
        idx = _corners_and_some(level.shape)
        _assert_same_points(index_to_physical(got, idx), index_to_physical(level, idx), 1e-12)
        assert got.attrs["level"] == k
    np.testing.assert_array_equal(load(read[0]).values, load(oblique).values)
    np.testing.assert_array_equal(load(read[-1]).values, load(written[-1]).values)


def test_metadata_alone_places_every_level(oblique, tmp_path: Path) -> None:
    """What a reader that knows only the spec sees: datasets → ``grid`` (scale, then
    translation), then the multiscales' one affine ``grid`` → the named physical system,
    listed last; the root attributes keep the source direction."""
    store = _write(oblique, tmp_path / "oblique.ome.zarr", coordinate_system="fixed")
    doc = json.loads((store / "zarr.json").read_text())
    ms = doc["attributes"]["ome"]["multiscales"][0]
    assert [cs["name"] for cs in ms["coordinateSystems"]] == ["grid", "fixed"]
    for cs in ms["coordinateSystems"]:
        assert cs["axes"] == [{"name": d, "type": "space", "unit": "millimeter"} for d in "zyx"]
    (affine,) = ms["coordinateTransformations"]
    assert affine["type"] == "affine" and "path" not in affine  # inline numbers
    assert affine["input"] == {"name": "grid"} and affine["output"] == {"name": "fixed"}
    matrix = np.vstack([np.asarray(affine["affine"]), [0.0, 0.0, 0.0, 1.0]])
    assert matrix.shape == (4, 4)
    np.testing.assert_array_equal(matrix[:3, :3], direction(oblique))
    np.testing.assert_allclose(
        doc["attributes"]["ngffreg"]["source_direction_zyx"], direction(oblique), atol=0)
    written = ngffreg.levels(ngffreg.to_pyramid(oblique, n_levels=N_LEVELS, chunks=CHUNKS))
    for k, (ds, level) in enumerate(zip(ms["datasets"], written, strict=True)):
        (seq,) = ds["coordinateTransformations"]
        assert seq["output"] == {"name": "grid"} and seq["input"] == {"path": ds["path"]}
        scale, translation = seq["transformations"]
        if k == 0:
            assert translation["translation"] == [0.0, 0.0, 0.0]
        idx = _corners_and_some(level.shape)
        grid = idx * np.asarray(scale["scale"]) + np.asarray(translation["translation"])
        physical = grid @ matrix[:3, :3].T + matrix[:3, 3]
        _assert_same_points(physical, index_to_physical(level, idx), 1e-12)


def test_store_validates(oblique, tmp_path: Path) -> None:
    import ngff_zarr
    from jsonschema import ValidationError

    oblique_store = _write(oblique, tmp_path / "oblique.ome.zarr")
    plain = ngffreg.make_image(np.zeros((4, 5, 6), "uint8"), spacing=1, unit="um")
    plain_store = _write(plain, tmp_path / "plain.ome.zarr", n_levels=1)
    ngff_zarr.from_ngff_zarr(str(oblique_store), validate=True)
    for store in (oblique_store, plain_store):
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        # The image schema is for the group's attributes, which hold ``ome``: handed the
        # ``ome`` object itself it fails on its first line.
        with pytest.raises(ValidationError, match="'ome' is a required property"):
            ngff_zarr.validate(attrs["ome"], version="0.6", model="image", strict=True)
        # strict too: the multiscales says how its levels were made (``type``, ``metadata``)
        ngff_zarr.validate(attrs, version="0.6", model="image", strict=True)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_older_versions_refuse_and_say_to_write_0_6(oblique, tmp_path: Path,
                                                    version: str) -> None:
    out = tmp_path / "oblique.ome.zarr"
    with pytest.raises(OrientationError, match=rf"oblique direction.*OME-Zarr {version}.*"
                                               r"Write OME-Zarr 0\.6 .*version='0\.6'"):
        ngffreg.to_ome_zarr(oblique, out, version=version, chunks=CHUNKS, n_levels=N_LEVELS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("system", ["intrinsic", "fixed"])
def test_axis_aligned_images_are_written_as_before(tmp_path: Path, system: str) -> None:
    image = ngffreg.make_image(np.zeros((4, 5, 6), "uint8"), spacing=(2, 1, 0.5),
                               origin=(1, 2, 3), unit="um")
    store = _write(image, tmp_path / "plain.ome.zarr", n_levels=1, coordinate_system=system)
    axes = [{"name": d, "type": "space", "unit": "micrometer"} for d in "zyx"]
    assert _multiscales(store) == {
        "coordinateSystems": [{"name": system, "axes": axes}],
        "datasets": [{"path": "scale0/image", "coordinateTransformations": [{
            "input": {"path": "scale0/image"}, "output": {"name": system},
            "name": f"scale0_to_{system}", "type": "sequence", "transformations": [
                {"type": "scale", "scale": [2.0, 1.0, 0.5]},
                {"type": "translation", "translation": [1.0, 2.0, 3.0]}]}]}],
        "name": "image", "@type": "ngff:Image", "type": "mean",
        "metadata": {"description": "ngffreg pyramid: each level from the one before it (mean)",
                     "method": "ngffreg.pyramid.downsample", "version": ngffreg.__version__},
    }


def test_opening_and_writing_compute_nothing_extra(oblique, tmp_path: Path) -> None:
    with raise_if_dask_computes(max_computes=N_LEVELS):  # one streamed store per level
        store = _write(oblique, tmp_path / "oblique.ome.zarr")
    with raise_if_dask_computes():
        for k in range(N_LEVELS):
            image = ngffreg.open_image(store, level=k)
            index_to_physical(image, [[0, 0, 0]])
        open_levels(store)


def _edit(store: Path, change) -> None:
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    change(doc["attributes"])
    meta.write_text(json.dumps(doc))


def test_a_rotation_with_scale_from_another_writer_is_read(oblique, tmp_path: Path) -> None:
    """An affine whose columns also scale (the grid in voxels of another size) places the
    image the same: the stretch goes into the spacing."""
    store = _write(oblique, tmp_path / "oblique.ome.zarr", n_levels=2)
    before = open_levels(store)
    stretch = np.array([2.0, 0.5, 4.0])

    def rescale(attrs: dict) -> None:
        del attrs["ngffreg"]
        ms = attrs["ome"]["multiscales"][0]
        m = np.asarray(ms["coordinateTransformations"][0]["affine"])
        m[:, :3] = m[:, :3] * stretch
        ms["coordinateTransformations"][0]["affine"] = m.tolist()
        for ds in ms["datasets"]:
            scale, translation = ds["coordinateTransformations"][0]["transformations"]
            scale["scale"] = (np.asarray(scale["scale"]) / stretch).tolist()
            translation["translation"] = (np.asarray(translation["translation"]) / stretch).tolist()

    _edit(store, rescale)
    for got, level in zip(open_levels(store), before, strict=True):
        np.testing.assert_allclose(direction(got), direction(level), rtol=0, atol=1e-12)
        idx = _corners_and_some(level.shape)
        _assert_same_points(index_to_physical(got, idx), index_to_physical(level, idx), 1e-12)


def test_a_shearing_affine_is_refused_naming_the_store(oblique, tmp_path: Path) -> None:
    store = _write(oblique, tmp_path / "sheared.ome.zarr", n_levels=1)

    def shear(attrs: dict) -> None:
        affine = attrs["ome"]["multiscales"][0]["coordinateTransformations"][0]["affine"]
        affine[0][1] += 0.2

    _edit(store, shear)
    with pytest.raises(InputError, match=rf"{store.name}.*not a rotation.*shear"):
        ngffreg.open_image(store)


def test_a_registration_beside_an_axis_aligned_image_does_not_move_it(tmp_path: Path) -> None:
    """ngffreg's stores from before the scene layout hold the registration (fixed →
    moving) on the multiscales, with ``moving`` listed last: the image stays where its
    datasets put it, as its ``ngffreg`` attributes record an axis-aligned source."""
    image = ngffreg.make_image(np.zeros((4, 5, 6), "uint8"), spacing=(2, 1, 0.5),
                               origin=(1, 2, 3), unit="um")
    store = _write(image, tmp_path / "registered.ome.zarr", n_levels=1,
                   coordinate_system="fixed")

    def add_registration(attrs: dict) -> None:
        ms = attrs["ome"]["multiscales"][0]
        ms["coordinateSystems"].append({**ms["coordinateSystems"][0], "name": "moving"})
        ms["coordinateTransformations"] = [{
            "type": "affine", "name": "registration", "input": {"name": "fixed"},
            "output": {"name": "moving"},
            "affine": [[1.0, 0.3, 0.0, 5.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]}]

    _edit(store, add_registration)
    got = ngffreg.open_image(store)
    np.testing.assert_array_equal(direction(got), np.eye(3))
    assert origin(got) == (1.0, 2.0, 3.0) and spacing(got) == (2.0, 1.0, 0.5)


def test_a_field_on_an_oblique_grid_is_stored_axis_aligned(tmp_path: Path) -> None:
    """An OME-NGFF field is placed by scale and translation alone: a field on an oblique
    grid (a registration whose fixed image is oblique) is stored resampled onto the
    axis-aligned grid covering it, and maps points as before (exactly, for a field linear
    in space, away from its edge)."""
    from ngffreg.image import Grid
    from ngffreg.transforms import DisplacementField
    from ngffreg.transforms.ngff import read_registration, write_registration
    from ngffreg.transforms.scene import IMAGE, IMAGE_SYSTEM, start_scene

    grid = Grid.from_origin((12, 14, 16), (2.0, 1.0, 0.75), (3.0, -4.0, 5.0), ROTATION, "um")
    pts = grid.points()
    linear = np.array([[0.02, -0.01, 0.03], [0.01, 0.02, -0.02], [-0.03, 0.01, 0.01]])
    disp = (pts @ linear.T + [0.5, -0.25, 1.0]).T.reshape(3, *grid.shape).astype("float32")
    field = DisplacementField(field=grid.image(disp, dims=("c", "z", "y", "x")), name="warp")
    image = ngffreg.make_image(np.zeros(grid.shape, "uint8"), spacing=grid.spacing,
                               origin=grid.origin, direction=grid.direction, unit="um")
    store = start_scene(ngffreg.to_ome_zarr(image, tmp_path / "reg.ome.zarr", version="0.6",
                                            chunks=8, coordinate_system=IMAGE_SYSTEM,
                                            image_group=IMAGE))
    write_registration(store, field)
    stored = read_registration(store)
    assert Grid.of(stored.field).is_axis_aligned
    assert np.all(np.asarray(stored.grid.spacing) == np.asarray(grid.spacing))
    inner = Grid(tuple(n - 4 for n in grid.shape), grid.spacing, grid.frame_origin
                 + 2 * grid.spacing, grid.direction, grid.unit).points()
    np.testing.assert_allclose(stored.apply(inner), field.apply(inner), rtol=0, atol=1e-5)
    # and the image keeps its oblique placement in the scene
    assert np.allclose(direction(ngffreg.open_image(store)), ROTATION, atol=1e-12)
