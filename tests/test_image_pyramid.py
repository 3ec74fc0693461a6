"""The image model, pyramids and the writer: physical exactness, laziness, chunk independence."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import ngffreg
from conftest import raise_if_dask_computes
from ngffreg.image import index_to_physical, is_signed_permutation
from ngffreg.pyramid import downsample, level, level_factors, levels
from ngffreg.synthetic import synthetic_volume


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, row in enumerate(perm):
                d[row, col] = signs[col]
            yield d


@pytest.mark.parametrize(
    "d", list(_signed_permutations()), ids=lambda d: str(d.astype(int).tolist())
)
def test_signed_permutation_normalisation_keeps_physical_positions(d):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(5, 6, 7))
    sp, org = np.array([0.5, 0.7, 1.1]), np.array([3.0, -4.0, 5.0])
    img = ngffreg.make_image(data, spacing=sp, origin=org, direction=d, unit="mm")
    assert np.allclose(ngffreg.direction(img), np.eye(3))
    values = img.values
    for idx in np.ndindex(*data.shape):
        truth = org + d @ (sp * np.array(idx))
        pos = [img.coords[dim].values for dim in "zyx"]
        k = tuple(int(np.argmin(np.abs(c - t))) for c, t in zip(pos, truth, strict=True))
        assert np.allclose([c[i] for c, i in zip(pos, k, strict=True)], truth)
        assert values[k] == data[idx]


def test_oblique_direction_is_kept_and_positions_follow_it():
    theta = np.deg2rad(30)
    d = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    assert not is_signed_permutation(d)
    img = ngffreg.make_image(np.zeros((4, 5, 6)), spacing=(1, 2, 3), origin=(1, 2, 3), direction=d)
    np.testing.assert_allclose(ngffreg.direction(img), d)
    idx = np.array([[0, 0, 0], [3, 4, 5], [1, 2, 3]])
    expected = np.array([1, 2, 3]) + (idx * [1, 2, 3]) @ d.T
    np.testing.assert_allclose(index_to_physical(img, idx), expected, atol=1e-12)
    np.testing.assert_allclose(ngffreg.origin(img), [1, 2, 3], atol=1e-12)


def test_oblique_write_is_refused_clearly(tmp_path):
    d = np.array([[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]])
    img = ngffreg.make_image(np.zeros((4, 5, 6), "u1"), spacing=1, direction=d)
    with pytest.raises(ngffreg.OrientationError, match="oblique"):
        ngffreg.to_ome_zarr(img, tmp_path / "o.ome.zarr")
    assert not any(tmp_path.iterdir())


def test_non_orthonormal_direction_is_refused():
    with pytest.raises(ngffreg.OrientationError, match="orthonormal"):
        ngffreg.make_image(np.zeros((2, 2, 2)), spacing=1, direction=np.diag([1, 2, 1]))


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, -2, 1), (1, np.nan, 1), (1, 2)])
def test_bad_spacing_is_refused(bad):
    with pytest.raises(ngffreg.InputError, match=r"(?i)voxel size|3 values|finite"):
        ngffreg.make_image(np.zeros((2, 2, 2)), spacing=bad)


def test_units_are_normalised_and_converted():
    img = ngffreg.make_image(np.zeros((3, 3, 3)), spacing=(2, 1, 1), origin=(1, 0, 0), unit="um")
    assert ngffreg.units(img) == "micrometer"
    mm = ngffreg.to_units(img, "mm")
    assert ngffreg.units(mm) == "millimeter"
    np.testing.assert_allclose(ngffreg.spacing(mm), (0.002, 0.001, 0.001))
    np.testing.assert_allclose(ngffreg.origin(mm), (0.001, 0, 0))
    with pytest.raises(ngffreg.UnitError, match="Unknown unit"):
        ngffreg.make_image(np.zeros((2, 2, 2)), spacing=1, unit="furlong")


def test_two_d_data_is_refused():
    with pytest.raises(ngffreg.InputError, match="3-D"):
        ngffreg.make_image(np.zeros((4, 5)), spacing=1)


def test_select_box_returns_lazy_block_with_physical_coordinates():
    img = synthetic_volume((20, 30, 40), spacing=(2, 1, 0.5), origin=(10, -20, 5), chunks=7)
    with raise_if_dask_computes():
        block = ngffreg.select_box(img, (14, -15, 6), (20, -10.5, 9.9))
    assert isinstance(block.data, da.Array)
    assert block.z.values[0] == 14 and block.z.values[-1] == 20
    assert block.y.values[0] == -15 and block.y.values[-1] == -11
    assert block.x.values[0] == 6 and block.x.values[-1] == 9.5
    np.testing.assert_array_equal(block.values, img.values[2:6, 5:10, 2:10])
    with pytest.raises(ngffreg.InputError, match="holds no voxel"):
        ngffreg.select_box(img, (1000, 0, 0), (1001, 1, 1))


def test_level_factors_wait_for_the_coarse_axis():
    # z is 8x coarser: only y and x are halved until they catch up, then all three
    f = level_factors((100, 1600, 1600), (4.0, 0.5, 0.5), min_size=16)
    assert f[:3] == [(1, 2, 2)] * 3
    assert f[3] == (2, 2, 2)
    # isotropic: all axes together
    assert level_factors((128, 128, 128), (1, 1, 1), min_size=32) == [(2, 2, 2), (2, 2, 2)]


def test_pyramid_is_lazy_and_chunking_does_not_change_it():
    img = synthetic_volume((37, 45, 51), chunks=(17, 23, 31))
    with raise_if_dask_computes():
        pyr = ngffreg.to_pyramid(img, min_size=8, chunks=(9, 11, 13))
    single = ngffreg.to_pyramid(img.chunk(-1), min_size=8, chunks=64)
    assert len(levels(pyr)) == len(levels(single)) >= 3
    for a, b in zip(levels(pyr), levels(single), strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        for d in "zyx":
            np.testing.assert_allclose(a[d].values, b[d].values)


@pytest.mark.parametrize("method", ["mean", "gaussian", "nearest"])
def test_downsample_matches_numpy_and_keeps_voxel_centres(method):
    img = synthetic_volume((17, 23, 31), chunks=(5, 7, 9), dtype="float32")
    out = downsample(img, (2, 2, 1), method=method)
    ref = img.values
    if method == "mean":
        expected = ref[:16, :22].reshape(8, 2, 11, 2, 31).mean(axis=(1, 3))
        np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    elif method == "gaussian":
        from scipy import ndimage

        s = 0.5 * np.sqrt(3)
        smooth = ndimage.gaussian_filter(ref, sigma=(s, s, 0), mode="nearest")
        expected = smooth[:16, :22].reshape(8, 2, 11, 2, 31).mean(axis=(1, 3))
        np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(out.values, ref[1:16:2, 1:22:2])
    # each output voxel centre is the mean (or the pick) of its block's centres
    z = img.z.values
    expected_z = z[:16].reshape(8, 2).mean(1) if method != "nearest" else z[1:16:2]
    np.testing.assert_allclose(out.z.values, expected_z)
    np.testing.assert_allclose(out.x.values, img.x.values)


def test_integer_downsampling_rounds_and_keeps_dtype():
    data = np.array([[[1, 2], [2, 2]], [[2, 2], [2, 2]]], dtype="uint8")
    img = ngffreg.make_image(data, spacing=1)
    out = downsample(img, (2, 2, 2))
    assert out.dtype == np.uint8 and int(out.values.ravel()[0]) == 2  # 1.875 rounds to 2


def test_select_level_by_spacing_voxels_and_memory():
    img = synthetic_volume((64, 128, 128), spacing=(2, 1, 1), chunks=32)
    pyr = ngffreg.to_pyramid(img, min_size=8)
    sizes = [lv.size for lv in levels(pyr)]
    assert ngffreg.select_level(pyr, target_spacing=4) == 2  # spacings (2,1,1) (2,2,2) (4,4,4)
    assert ngffreg.select_level(pyr, target_spacing=0.1) == 0
    assert ngffreg.select_level(pyr, max_voxels=sizes[1]) == 1
    assert ngffreg.select_level(pyr, max_voxels=sizes[1] - 1) == 2
    assert ngffreg.select_level(pyr, memory_budget=sizes[2] * 2) == 2  # uint16: 2 bytes
    assert ngffreg.select_level(pyr, memory_budget="1 kB") == len(sizes) - 1
    with pytest.raises(ngffreg.InputError):
        ngffreg.select_level(pyr)
    assert level(pyr, -1).size == sizes[-1]


def test_written_levels_equal_the_lazy_pyramid(tmp_path):
    """The writer re-derives each level from the one on disk: it must equal to_pyramid's."""
    img = synthetic_volume((40, 50, 60), chunks=(13, 17, 19))
    out = ngffreg.to_ome_zarr(img, tmp_path / "s.ome.zarr", chunks=16, n_levels=3)
    pyr = ngffreg.to_pyramid(img, n_levels=3, chunks=16)
    for k, expected in enumerate(levels(pyr)):
        got = ngffreg.open_image(out, level=k)
        np.testing.assert_array_equal(got.values, expected.values)
        assert ngffreg.spacing(got) == pytest.approx(ngffreg.spacing(expected))
        assert ngffreg.origin(got) == pytest.approx(ngffreg.origin(expected))


def test_failed_write_leaves_nothing_that_looks_complete(tmp_path):
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 0, 0):
            raise OSError(28, "No space left on device (simulated)")
        return block

    img = synthetic_volume((32, 16, 16), chunks=8)
    bad = img.copy(data=img.data.map_blocks(boom, dtype=img.dtype))
    with pytest.raises(ngffreg.OutputError, match="No space left"):
        ngffreg.to_ome_zarr(bad, tmp_path / "x.ome.zarr", chunks=8)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_after_success(tmp_path):
    target = tmp_path / "a.ome.zarr"
    ngffreg.to_ome_zarr(synthetic_volume((16, 16, 16), seed=1), target, chunks=8)
    before = ngffreg.open_image(target).values
    with pytest.raises(ngffreg.OutputError, match="already exists"):
        ngffreg.to_ome_zarr(synthetic_volume((16, 16, 16), seed=2), target)
    np.testing.assert_array_equal(ngffreg.open_image(target).values, before)
    ngffreg.to_ome_zarr(synthetic_volume((16, 16, 16), seed=2), target, overwrite=True)
    assert not np.array_equal(ngffreg.open_image(target).values, before)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ome.zarr"]


def test_open_and_pyramid_compute_nothing(dataset):
    with raise_if_dask_computes():
        img = ngffreg.open_image(dataset("brainreg/brain"), voxel_size=(50, 40, 40), unit="um")
        pyr = ngffreg.to_pyramid(img)
        ngffreg.select_level(pyr, target_spacing=200)
        ngffreg.select_box(level(pyr, 1), (1000, 1000, 1000), (3000, 3000, 3000))
    assert isinstance(levels(pyr)[-1].data, da.Array)


def test_pyramid_layout_is_multiscale_spatial_image():
    pyr = ngffreg.to_pyramid(synthetic_volume((32, 32, 32), spacing=1), min_size=8)
    assert isinstance(pyr, xr.DataTree)
    assert list(pyr.children) == ["scale0", "scale1", "scale2"]
    assert list(pyr["scale1"].ds.data_vars) == ["image"]
