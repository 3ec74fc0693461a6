"""Warp: equal to ANTs, chunking-independent, lazy, region-local, labels exact, stores."""

from __future__ import annotations

import cloudpickle
import dask.array as da
import numpy as np
import pytest

from conftest import raise_if_dask_computes
from ngffreg import make_image
from ngffreg.errors import InputError, TransformError
from ngffreg.image import Grid
from ngffreg.io.read import open_image, open_levels
from ngffreg.io.write import to_ome_zarr
from ngffreg.synthetic import synthetic_volume
from ngffreg.transforms import (
    Affine,
    DisplacementField,
    Identity,
    Sequence,
    ThinPlateSpline,
    Translation,
    read_registration,
)
from ngffreg.transforms.files import read_ants_transforms
from ngffreg.warp import warp, write_warped

RNG = np.random.default_rng(11)


def _ants_zyx(image) -> np.ndarray:
    """An ANTs image's array in our normalised z, y, x layout (flips from its direction)."""
    arr = np.transpose(image.numpy(), (2, 1, 0))
    d = np.asarray(image.direction)  # x, y, z columns
    flips = [np.sign(d[2, 2]) < 0, np.sign(d[1, 1]) < 0, np.sign(d[0, 0]) < 0]
    return arr[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def _pair():
    """A synthetic moving image and a fixed grid, plus a fixed→moving transform
    [smooth field, affine]."""
    moving = synthetic_volume((40, 48, 44), spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), unit="um")
    fixed = synthetic_volume((36, 44, 40), spacing=(2.0, 1.0, 1.0), origin=(3, 2, 2), unit="um")
    from scipy import ndimage

    disp = ndimage.gaussian_filter(RNG.normal(size=(3, 12, 14, 12)), (0, 2, 2, 2))
    disp *= 1.5 / np.abs(disp).max()
    field = DisplacementField.from_array(disp, spacing=(6.0, 3.0, 3.0), origin=(3, 2, 2),
                                         unit="um")
    affine = Affine.from_matrix_offset(
        np.array([[1.0, 0.02, 0.0], [-0.02, 1.01, 0.01], [0.0, -0.01, 0.99]]), [1.0, -0.5, 0.8])
    return moving, fixed, Sequence(transforms=(field, affine))


# -- equivalence with ANTs ---------------------------------------------------------------
def test_linear_warp_matches_ants_apply_transforms(ants_syn):
    import ants

    fixed, moving = open_image(ants_syn["fixed"]), open_image(ants_syn["moving"])
    transform = read_ants_transforms(ants_syn["fwdtransforms"])
    ours = warp(moving, transform, like=fixed, chunks=64).values
    ref = ants.apply_transforms(ants.image_read(str(ants_syn["fixed"])),
                                ants.image_read(str(ants_syn["moving"])),
                                ants_syn["fwdtransforms"])
    theirs = _ants_zyx(ref)
    assert ours.shape == theirs.shape
    span = float(moving.max() - moving.min())
    interior = (slice(3, -3),) * 3
    diff = np.abs(ours - theirs)[interior] / span
    assert diff.max() < 1e-3, diff.max()


def test_nearest_neighbour_labels_match_ants(ants_syn, dataset):
    import ants

    labels_path = dataset("ants/mnia")
    # mnia lives on the fixed (mni) grid: bring it onto ch2 through the inverse transforms
    inverse = read_ants_transforms(ants_syn["invtransforms"], invert=[True, False])
    labels, target = open_image(labels_path), open_image(ants_syn["moving"])
    ours = warp(labels, inverse, like=target, interpolator="nearestNeighbor", chunks=64).values
    ref = ants.apply_transforms(ants.image_read(str(ants_syn["moving"])),
                                ants.image_read(str(labels_path)), ants_syn["invtransforms"],
                                whichtoinvert=[True, False], interpolator="nearestNeighbor")
    theirs = _ants_zyx(ref)
    assert ours.dtype == labels.dtype
    agree = np.mean(ours == theirs.astype(ours.dtype))
    assert agree >= 0.999, agree
    assert set(np.unique(ours)) <= set(np.unique(labels.values))


# -- chunking, laziness, locality -----------------------------------------------------------
@pytest.mark.parametrize(("interpolator", "rtol"),
                         [("linear", 0), ("nearestNeighbor", 0), ("bSpline", 1e-6)])
def test_chunked_equals_whole(interpolator, rtol):
    """Linear and nearest are identical; the B-spline prefilter runs on each region with a
    margin, so it agrees to float32 rounding."""
    moving, fixed, transform = _pair()
    whole = warp(moving, transform, like=fixed, interpolator=interpolator,
                 chunks=fixed.shape).values
    odd = warp(moving, transform, like=fixed, interpolator=interpolator,
               chunks=(17, 23, 31)).values
    assert odd.dtype == whole.dtype
    np.testing.assert_allclose(odd, whole, rtol=0, atol=rtol * float(np.abs(whole).max()))
    assert np.abs(whole).max() > 0


def test_warp_is_lazy_and_its_graph_carries_no_arrays(tmp_path):
    moving, fixed, transform = _pair()
    store = to_ome_zarr(moving.astype("float32"), tmp_path / "m.ome.zarr", chunks=16)
    lazy_moving = open_image(store)
    with raise_if_dask_computes():
        out = warp(lazy_moving, transform.transforms[1], like=fixed, chunks=16)
    graph = cloudpickle.dumps(dict(out.data.__dask_graph__()))  # as dask.distributed ships it
    assert len(graph) < 0.25 * lazy_moving.nbytes, (len(graph), lazy_moving.nbytes)


def test_each_chunk_reads_only_the_moving_region_it_needs():
    reads: list[tuple] = []

    def make(block_info=None):
        loc = block_info[None]["array-location"]
        reads.append(tuple(map(tuple, loc)))
        return np.ones(tuple(b - a for a, b in loc), dtype=np.float32)

    data = da.map_blocks(make, chunks=((16,) * 8,) * 3, dtype=np.float32)  # 128³, 512 chunks
    moving = make_image(data, spacing=1.0, unit="um")
    target = Grid.from_origin((16, 16, 16), 1.0, origin=(40.2, 40.2, 40.2), unit="um")
    out = warp(moving, Translation(translation=[1.5, 0.0, -1.0]), like=target, chunks=16)
    assert np.allclose(out.values, 1.0)
    assert 1 <= len(reads) <= 8, reads  # the 2×2×2 chunks around the region, not 512


def test_fill_value_and_integer_output():
    moving = make_image(np.full((10, 10, 10), 7, dtype=np.uint16), spacing=1.0, unit="um")
    shifted = warp(moving, Translation(translation=[5.0, 0.0, 0.0]), like=moving,
                   fill_value=3, interpolator="nearestNeighbor")
    values = shifted.values
    assert values.dtype == np.uint16
    assert (values[:5] == 7).all() and (values[5:] == 3).all()
    lin = warp(moving, Identity(), like=moving, dtype=np.uint16).values
    assert lin.dtype == np.uint16 and (lin == 7).all()


def test_bad_arguments():
    moving, fixed, transform = _pair()
    with pytest.raises(InputError, match="Unknown interpolator"):
        warp(moving, transform, like=fixed, interpolator="sinc")
    with pytest.raises(InputError, match="dims"):
        warp(moving.expand_dims("c"), transform, like=fixed)
    with pytest.raises(InputError, match="Transform"):
        warp(moving, np.eye(4), like=fixed)


# -- output stores -------------------------------------------------------------------
def test_write_warped_stores_pyramid_and_registration(tmp_path):
    import ngff_zarr

    moving, fixed, transform = _pair()
    out, report = write_warped(moving, transform, tmp_path / "w.ome.zarr", like=fixed,
                               chunks=16, n_levels=2)
    assert report[0]["reason"].startswith("level 0 warped, then downsampled")
    levels = open_levels(out)
    assert len(levels) == 2
    np.testing.assert_allclose(levels[0].values,
                               warp(moving, transform, like=fixed, chunks=16).values)
    pts = Grid.of(fixed).points()[::97]
    np.testing.assert_allclose(read_registration(out).apply(pts), transform.apply(pts),
                               atol=1e-5)
    # ngff-zarr reads it as the spec's registration scene: the image below, fixed first
    scene = ngff_zarr.from_ngff_zarr(str(out), kind="scene", validate=True)
    assert list(scene.images) == ["registered"]
    assert [cs.name for cs in scene.coordinateSystems] == ["fixed", "moving"]
    assert [t.name for t in scene.coordinateTransformations] == ["registered_image",
                                                                "registration"]


def test_per_level_pyramid_reads_the_moving_level_that_fits(tmp_path):
    moving, fixed, transform = _pair()
    store = to_ome_zarr(moving, tmp_path / "m.ome.zarr", chunks=16, n_levels=3)
    out, report = write_warped(open_levels(store), transform, tmp_path / "w.ome.zarr",
                               like=fixed, chunks=16, n_levels=3, pyramid="per-level")
    assert [r["moving_level"] for r in report] == [0, 1, 2]
    assert all("coarsest" in r["reason"] for r in report)
    assert len(open_levels(out)) == 3


def test_failure_while_storing_the_transform_leaves_nothing(tmp_path):
    moving, fixed, _ = _pair()
    src = RNG.uniform(0, 40, size=(6, 3))
    spline = ThinPlateSpline(source=src, target=src + 0.5)  # no NGFF type: refused
    target = tmp_path / "w.ome.zarr"
    with pytest.raises(TransformError):
        write_warped(moving, spline, target, like=fixed, chunks=16)
    assert list(tmp_path.iterdir()) == []


def test_cli_warp(ants_syn, tmp_path, capsys, cli_fails):
    from ngffreg.cli import main

    out = tmp_path / "w.ome.zarr"
    argv = ["warp", str(ants_syn["moving"]), "-o", str(out), "--like", str(ants_syn["fixed"]),
            "--transform", *ants_syn["fwdtransforms"], "--chunks", "64", "--quiet"]
    assert main(argv) == 0
    assert "level 0" in capsys.readouterr().out
    assert open_levels(out)[0].shape == open_image(ants_syn["fixed"]).shape
    cli_fails(argv, "already exists")
    cli_fails(["warp", str(ants_syn["moving"]), "-o", str(tmp_path / "x.ome.zarr"), "--like",
               str(ants_syn["fixed"]), "--transform", str(tmp_path / "nope.mat")], "nope.mat")
    assert not (tmp_path / "x.ome.zarr").exists()
