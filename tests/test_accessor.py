"""The ``.reg`` accessor: each method a thin call into the functional API, checked for
physical correctness on real data (ITK's own reading of the headers is the reference)."""

from __future__ import annotations

import doctest
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import ngffreg
from ngffreg.errors import InputError
from ngffreg.qc import ncc
from ngffreg.transforms import (
    DisplacementField,
    Identity,
    Translation,
    read_registration,
    read_transforms,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "accessor.md"


# ---------------------------------------------------------------------------------------
# helpers: the truth from ITK, in z, y, x
# ---------------------------------------------------------------------------------------
def _itk(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ITK's pixels (z, y, x) and its origin, spacing and direction turned into z, y, x."""
    import itk

    image = itk.imread(str(path))
    data = itk.array_from_image(image)  # [k, j, i]
    org = np.asarray(image.GetOrigin(), dtype=np.float64)[::-1]
    sp = np.asarray(image.GetSpacing(), dtype=np.float64)[::-1]
    dirn = itk.array_from_matrix(image.GetDirection()).astype(np.float64)[::-1, ::-1]
    return data, org, sp, dirn


def _physical(index: np.ndarray, org, sp, dirn) -> np.ndarray:
    """``origin + direction · (spacing ∘ index)`` for (N, 3) z, y, x indices."""
    return org + (index * sp) @ dirn.T


def _centres_in_box(shape, org, sp, dirn, lower, upper) -> np.ndarray:
    """Which voxels of a grid have their centre in the physical box (plane by plane)."""
    inside = np.zeros(shape, dtype=bool)
    jj, ii = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for k in range(shape[0]):
        idx = np.stack([np.full(jj.size, k), jj.ravel(), ii.ravel()], axis=1)
        p = _physical(idx, org, sp, dirn)
        inside[k] = np.all((p >= lower) & (p <= upper), axis=1).reshape(jj.shape)
    return inside


def _source_values(image: xr.DataArray, data, org, sp, dirn) -> np.ndarray:
    """The ITK pixels at the physical positions of ``image``'s voxel centres (which must
    fall on voxel centres of the ITK grid)."""
    z, y, x = np.meshgrid(*(image[d].values for d in "zyx"), indexing="ij")
    p = np.stack([z.ravel(), y.ravel(), x.ravel()], axis=1)
    cidx = ((p - org) @ dirn) / sp
    idx = np.rint(cidx).astype(int)
    np.testing.assert_allclose(cidx, idx, atol=1e-6)
    return data[idx[:, 0], idx[:, 1], idx[:, 2]].reshape(image.shape)


@pytest.fixture(scope="module")
def brains(data_dir):
    """ch2 and mni, opened by ngffreg and by ITK."""
    out = {}
    for name in ("ch2", "mni"):
        path = data_dir / "ants" / f"{name}.nii.gz"
        if not path.is_file():
            pytest.skip(f"ants/{name}.nii.gz missing from the data folder")
        out[name] = (ngffreg.open_image(path), _itk(path))
    return out


def _synthetic_pair(shift=(2.0, -3.0, 1.5)):
    """A synthetic volume and the same content moved by ``shift`` (z, y, x, µm): the fixed →
    moving point map is ``p ↦ p + shift``."""
    from ngffreg.synthetic import synthetic_volume

    fixed = synthetic_volume((36, 40, 38), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                             dtype="float32", chunks=16)
    moving = ngffreg.make_image(fixed.data, spacing=1.0, origin=shift, unit="um")
    return fixed, moving


# ---------------------------------------------------------------------------------------
# registration of the accessor, statelessness, docstrings
# ---------------------------------------------------------------------------------------
def test_import_registers_a_stateless_reg_accessor_on_dataarray_and_datatree():
    img = ngffreg.make_image(np.zeros((4, 6, 8), "uint8"), spacing=(2.0, 1.0, 0.5),
                             origin=(1.0, 2.0, 3.0), unit="mm")
    pyr = img.reg.to_pyramid(n_levels=2)
    assert isinstance(pyr, xr.DataTree)
    from ngffreg.accessor import DataArrayRegAccessor, DataTreeRegAccessor

    assert isinstance(img.reg, DataArrayRegAccessor)
    assert isinstance(pyr.reg, DataTreeRegAccessor)
    assert vars(img.reg) == {"_obj": img} and vars(pyr.reg) == {"_obj": pyr}
    # the same answers as the functional API
    assert img.reg.spacing == ngffreg.spacing(img) == (2.0, 1.0, 0.5)
    assert img.reg.origin == ngffreg.origin(img) == (1.0, 2.0, 3.0)
    assert img.reg.units == "millimeter"
    np.testing.assert_array_equal(img.reg.direction, np.eye(3))
    assert img.reg.to_units("um").reg.spacing == pytest.approx((2000.0, 1000.0, 500.0))
    # a DataArray that is no image: a clear error, not an AttributeError
    with pytest.raises(InputError, match="z', 'y', 'x"):
        _ = xr.DataArray(np.zeros((2, 2)), dims=("a", "b")).reg.spacing


def test_docstring_examples_run():
    import ngffreg.accessor

    result = doctest.testmod(ngffreg.accessor, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 40
    assert result.failed == 0


# ---------------------------------------------------------------------------------------
# metadata and boxes on ch2 and mni (different direction matrices)
# ---------------------------------------------------------------------------------------
def test_bbox_and_directions_agree_with_the_itk_headers(brains):
    expected = {"ch2": ([-71, -91, -90], [109, 125, 90]),
                "mni": ([-72, -91, -90], [109, 126, 91])}  # data README, z, y, x
    for name, (image, (data, org, sp, dirn)) in brains.items():
        corners = np.array(np.meshgrid(*[[0, n - 1] for n in data.shape], indexing="ij"))
        pts = _physical(corners.reshape(3, -1).T, org, sp, dirn)
        lower, upper = image.reg.bbox
        np.testing.assert_allclose(lower, pts.min(axis=0), atol=1e-6)
        np.testing.assert_allclose(upper, pts.max(axis=0), atol=1e-6)
        np.testing.assert_allclose(lower, expected[name][0])
        np.testing.assert_allclose(upper, expected[name][1])
        np.testing.assert_allclose(image.reg.source_direction, dirn)
        np.testing.assert_allclose(image.reg.direction, np.eye(3))  # normalised on open
        assert image.reg.spacing == tuple(sp) and image.reg.units == "millimeter"
        # the origin is the centre of the first voxel of the normalised array: a corner
        np.testing.assert_allclose(image.reg.origin, lower)
    ch2, mni = brains["ch2"][0], brains["mni"][0]
    assert not np.allclose(ch2.reg.source_direction, mni.reg.source_direction)


def test_crop_holds_exactly_the_voxels_whose_centres_lie_in_the_box(brains):
    lower, upper = np.array([-20.5, -30.2, -40.7]), np.array([15.3, 22.0, 31.5])
    blocks = {}
    for name, (image, (data, org, sp, dirn)) in brains.items():
        block = image.reg.crop(lower, upper)
        truth = _centres_in_box(data.shape, org, sp, dirn, lower, upper)
        assert block.size == truth.sum() > 0
        for k, d in enumerate("zyx"):
            assert lower[k] <= block[d].values.min() and block[d].values.max() <= upper[k]
        # every voxel carries the value ITK has at that physical position
        np.testing.assert_array_equal(block.values, _source_values(block, data, org, sp, dirn))
        blocks[name] = block
    # both grids lie on whole millimetres: the same box is the same piece of space
    for d in "zyx":
        np.testing.assert_array_equal(blocks["ch2"][d].values, blocks["mni"][d].values)
    # a margin widens the box on every side
    wide = brains["ch2"][0].reg.crop(lower, upper, margin=2.0)
    assert [wide.sizes[d] - blocks["ch2"].sizes[d] for d in "zyx"] == [4, 4, 4]
    with pytest.raises(InputError, match="holds no voxel"):
        brains["ch2"][0].reg.crop((500, 500, 500), (600, 600, 600))


def test_crop_of_an_oblique_image_holds_every_voxel_centre_in_the_box():
    a = np.deg2rad(30.0)
    dirn = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0, 0, 1.0]])
    shape, sp, org = (20, 24, 22), np.array([1.5, 1.0, 1.0]), np.array([5.0, -3.0, 2.0])
    values = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)  # value = flat index
    image = ngffreg.make_image(values, spacing=sp, origin=org, direction=dirn, unit="um")
    np.testing.assert_allclose(image.reg.direction, dirn)
    lower, upper = np.array([10.0, 0.0, 6.0]), np.array([20.0, 12.0, 15.0])
    truth = _centres_in_box(shape, org, sp, dirn, lower, upper)
    got = set(image.reg.crop(lower, upper).values.astype(int).ravel().tolist())
    wanted = set(np.flatnonzero(truth).tolist())
    assert wanted and wanted <= got < set(range(values.size))
    # bbox of an oblique image: the rotated corners
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"))
    pts = _physical(corners.reshape(3, -1).T, org, sp, dirn)
    np.testing.assert_allclose(image.reg.bbox[0], pts.min(axis=0), atol=1e-9)
    np.testing.assert_allclose(image.reg.bbox[1], pts.max(axis=0), atol=1e-9)


# ---------------------------------------------------------------------------------------
# pyramids
# ---------------------------------------------------------------------------------------
def test_pyramid_levels_by_index_spacing_and_size(brains):
    ch2 = brains["ch2"][0]
    pyr = ch2.reg.to_pyramid(n_levels=3)
    assert len(pyr.reg.levels) == 3
    assert [lv.reg.spacing for lv in pyr.reg.levels] == [(1.0,) * 3, (2.0,) * 3, (4.0,) * 3]
    assert pyr.reg.level(1).reg.spacing == (2.0,) * 3
    assert pyr.reg.level(-1).reg.spacing == (4.0,) * 3
    assert pyr.reg.level(spacing=3.0).reg.spacing == (2.0,) * 3
    assert pyr.reg.level(max_voxels=ch2.size // 8).reg.spacing == (2.0,) * 3
    assert pyr.reg.level(memory_budget="1 MiB").reg.spacing == (4.0,) * 3
    with pytest.raises(InputError, match="exactly one"):
        pyr.reg.level()
    with pytest.raises(InputError, match="exactly one"):
        pyr.reg.level(1, spacing=2.0)
    # metadata of a pyramid: that of level 0
    assert pyr.reg.spacing == ch2.reg.spacing and pyr.reg.units == ch2.reg.units
    np.testing.assert_array_equal(pyr.reg.bbox, ch2.reg.bbox)
    np.testing.assert_array_equal(pyr.reg.source_direction, ch2.reg.source_direction)
    # a coarse level's voxel centres are the means of the fine ones: still physical
    block = pyr.reg.crop((-10, -10, -10), (10, 10, 10), level=1)
    assert block.reg.spacing == (2.0,) * 3
    fine = ch2.reg.crop(block.reg.bbox[0] - 0.5, block.reg.bbox[1] + 0.5)
    np.testing.assert_allclose(block.values, fine.coarsen(z=2, y=2, x=2).mean().values,
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------
# warp
# ---------------------------------------------------------------------------------------
def test_warp_with_identity_and_translation_moves_voxels_where_they_belong(brains):
    ch2, (data, org, sp, dirn) = brains["ch2"]
    mni = brains["mni"][0]
    # identity onto mni's grid: each mni voxel gets ch2's value at the same physical point
    on_mni = ch2.reg.warp(Identity(), like=mni)
    assert on_mni.shape == mni.shape and on_mni.reg.bbox[0].tolist() == [-72, -91, -90]
    inner = on_mni.reg.crop(*ch2.reg.bbox)  # where ch2 has voxels
    np.testing.assert_array_equal(inner.values, _source_values(inner, data, org, sp, dirn))
    assert on_mni.sel(z=-72.0).values.max() == 0  # outside ch2 (z < -71): fill value
    # a translation t: out(p) = ch2(p + t)
    t = np.array([3.0, -2.0, 5.0])
    shifted = ch2.reg.warp(Translation(translation=t), like=ch2).values
    src = ch2.values
    np.testing.assert_array_equal(shifted[10:-10, 10:-10, 10:-10],
                                  src[13:-7, 8:-12, 15:-5])
    assert ncc(shifted[10:-10, 10:-10, 10:-10], src[10:-10, 10:-10, 10:-10]) < 0.95
    # a pyramid warps onto the pyramid of the fixed grid; level 0 is the image warp
    pyr = ch2.reg.to_pyramid(n_levels=2)
    out = pyr.reg.warp(Translation(translation=t), like=mni, n_levels=2)
    assert isinstance(out, xr.DataTree)
    assert [lv.reg.spacing for lv in out.reg.levels] == [(1.0,) * 3, (2.0,) * 3]
    np.testing.assert_array_equal(out.reg.level(0).values,
                                  ch2.reg.warp(Translation(translation=t), like=mni).values)


# ---------------------------------------------------------------------------------------
# OME-Zarr
# ---------------------------------------------------------------------------------------
def test_to_ome_zarr_round_trip_keeps_voxels_in_place_and_stores_transforms(brains, tmp_path):
    ch2 = brains["ch2"][0]
    block = ch2.reg.crop((-20, -30, -25), (15, 20, 30))
    path = block.reg.to_ome_zarr(tmp_path / "block.ome.zarr", chunks=16)
    back = ngffreg.open_image(path)
    for d in "zyx":
        np.testing.assert_array_equal(back[d].values, block[d].values)
    np.testing.assert_array_equal(back.values, block.values)
    assert back.reg.units == "millimeter"
    meta = json.loads((path / "zarr.json").read_text())["attributes"]
    assert meta["ome"]["version"] == "0.5"
    np.testing.assert_allclose(meta["ngffreg"]["source_direction_zyx"],
                               ch2.reg.source_direction)

    # with a transform: OME-Zarr 0.6, the image in the "fixed" system, "registration" stored
    t = Translation(translation=(1.0, -2.0, 3.5))
    path6 = block.reg.to_ome_zarr(tmp_path / "with_t.ome.zarr", transforms=t, chunks=16)
    back6 = ngffreg.open_image(path6)
    np.testing.assert_array_equal(back6.values, block.values)
    np.testing.assert_array_equal(back6.x.values, block.x.values)
    pts = np.array([[0.0, 0.0, 0.0], [-10.0, 5.0, 7.0]])
    np.testing.assert_allclose(read_registration(path6).apply(pts), pts + t.translation)
    # a mapping of named transforms is stored as given
    named = {"shift": t.renamed(input="fixed", output="moving")}
    path_named = block.reg.to_ome_zarr(tmp_path / "named.ome.zarr", transforms=named)
    np.testing.assert_allclose(read_transforms(path_named)["shift"].apply(pts),
                               pts + t.translation)
    with pytest.raises(InputError, match=r"0\.6"):
        block.reg.to_ome_zarr(tmp_path / "v5.ome.zarr", transforms=t, version="0.5")
    assert not (tmp_path / "v5.ome.zarr").exists()

    # a pyramid is written level by level, each level in place
    pyr = block.reg.to_pyramid(n_levels=2)
    path_pyr = pyr.reg.to_ome_zarr(tmp_path / "pyr.ome.zarr")
    level1 = ngffreg.open_image(path_pyr, level=1)
    np.testing.assert_array_equal(level1.values, pyr.reg.level(1).values)
    np.testing.assert_allclose(level1.reg.origin, pyr.reg.level(1).reg.origin)


# ---------------------------------------------------------------------------------------
# register and qc
# ---------------------------------------------------------------------------------------
def test_register_finds_a_known_translation_and_qc_reports_it(tmp_path):
    pytest.importorskip("ants")
    shift = np.array([2.0, -3.0, 1.5])
    fixed, moving = _synthetic_pair(shift)
    out = tmp_path / "out.ome.zarr"
    result = fixed.reg.register(moving, out, linear_type="Translation",
                                nonlinear_type_coarse=None, nonlinear_type_fine=None,
                                downsample_factor=1, linear_accuracy="low")
    pts = np.array([[18.0, 20.0, 19.0], [8.0, 10.0, 30.0], [28.0, 30.0, 9.0]])
    err = np.linalg.norm(result.transform.apply(pts) - (pts + shift), axis=1)
    assert err.max() < 0.25, err
    assert result.output == out.resolve()
    registered = ngffreg.open_image(out)
    assert ncc(registered.values[4:-4, 4:-4, 4:-4], fixed.values[4:-4, 4:-4, 4:-4]) > 0.99

    # the moving image, warped through the result, lands on the fixed image
    warped = moving.reg.warp(result, like=fixed).values
    assert ncc(warped[4:-4, 4:-4, 4:-4], fixed.values[4:-4, 4:-4, 4:-4]) > 0.99

    report = fixed.reg.qc(moving, result, figure=tmp_path / "overlay.png")
    assert report["ncc_after"] > 0.99 and report["ncc_after_foreground"] > 0.99
    assert report["ncc_before"] < report["ncc_after"] - 0.1
    assert report["ncc_before_foreground"] < report["ncc_after_foreground"] - 0.2
    assert report["overlap"] > 0.95 and report["fields"] == []
    assert (tmp_path / "overlay.png").stat().st_size > 10_000
    # the transform read back from the output store gives the same numbers
    again = fixed.reg.qc(moving, out, fields=False)
    assert again["ncc_after"] == pytest.approx(report["ncc_after"], abs=1e-4)
    assert "fields" not in again

    # on pyramids: the same call with the fixed and moving pyramids
    fixed_pyr = fixed.reg.to_pyramid(n_levels=2)
    result2 = fixed_pyr.reg.register(moving.reg.to_pyramid(n_levels=2), linear_type="Translation",
                                     nonlinear_type_coarse=None, nonlinear_type_fine=None,
                                     coarse_level=0, linear_accuracy="low")
    err2 = np.linalg.norm(result2.transform.apply(pts) - (pts + shift), axis=1)
    assert err2.max() < 0.25, err2
    coarse = fixed_pyr.reg.qc(moving, result2, max_voxels=fixed.size // 4)
    assert coarse["level_spacing"] == [2.0, 2.0, 2.0] and coarse["ncc_after"] > 0.98


def test_qc_reports_the_jacobian_of_displacement_fields():
    fixed, _ = _synthetic_pair()
    z = fixed.z.values[:, None, None] * np.ones(fixed.shape)

    def field(a: float) -> DisplacementField:
        # u_z = a · z: det(I + ∂u/∂p) = 1 + a everywhere
        u = np.stack([a * z, np.zeros(fixed.shape), np.zeros(fixed.shape)])
        return DisplacementField.from_array(u, spacing=1.0, unit="um", name=f"a{a}")

    smooth = fixed.reg.qc(fixed, field(0.05))
    (rep,) = smooth["fields"]
    assert rep["name"] == "a0.05" and rep["shape"] == list(fixed.shape)
    assert rep["jacobian_min"] == pytest.approx(1.05) == rep["jacobian_max"]
    assert rep["folded_voxels"] == 0
    folding = fixed.reg.qc(fixed, field(-1.5))["fields"][0]
    assert folding["jacobian_max"] == pytest.approx(-0.5)
    assert folding["folded_voxels"] == fixed.size
    # identity: before and after agree and the image matches itself
    same = fixed.reg.qc(fixed, Identity())
    assert same["ncc_before"] == same["ncc_after"] == pytest.approx(1.0)
    # a moving image in another unit is compared in the fixed image's unit
    in_mm = fixed.reg.qc(fixed.reg.to_units("mm"), Identity())
    assert in_mm["ncc_after"] == pytest.approx(1.0) and in_mm["overlap"] == 1.0
    with pytest.raises(InputError, match="Transform"):
        fixed.reg.qc(fixed, 42)


# ---------------------------------------------------------------------------------------
# the documentation page runs
# ---------------------------------------------------------------------------------------
def test_docs_accessor_page_runs(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("ants")
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the page's mkdtemp()
    monkeypatch.setenv("NGFFREG_DATA_DIR", str(data_dir))
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    for k, code in enumerate(blocks):
        exec(compile(code, f"{DOCS.name} block {k + 1}", "exec"), ns)
    # what the page's comments say it printed
    assert [v.tolist() for v in ns["ch2"].reg.bbox] == [[-71, -91, -90], [109, 125, 90]]
    assert ns["box"].shape == ns["same"].shape == (41, 61, 81)
    assert ns["coarse"].reg.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_array_equal(ns["back"].values, ns["shifted"].reg.crop(
        (-40, -60, -60), (60, 60, 60)).values)
    np.testing.assert_allclose(ns["result"].transform.apply([[20.0, 24.0, 22.0]]),
                               [[22.0, 21.0, 22.0]], atol=0.25)
    assert round(ns["report"]["ncc_after"], 2) == 1.0
    assert ns["registered"].shape == ns["fixed"].shape
