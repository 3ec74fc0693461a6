"""The ANTs backend: images reach ANTs in the right physical place, and registrations come
back as fixed → moving transforms in our physical space."""

from __future__ import annotations

import numpy as np
import pytest

from ngffreg import itk_bridge
from ngffreg.errors import InputError
from ngffreg.image import Grid
from ngffreg.registration import ants_backend
from ngffreg.registration.coarse import image_levels

ants = pytest.importorskip("ants")


@pytest.mark.parametrize("name", ["mni", "ch2"])
def test_images_reach_ants_at_their_physical_positions(data_dir, name):
    image = image_levels(data_dir / "ants" / f"{name}.nii.gz")[0].compute()
    grid = Grid.of(image)
    img = itk_bridge.to_ants(image.values, grid.spacing, grid.origin, grid.direction)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, np.asarray(grid.shape), size=(50, 3))
    ours = grid.points()[np.ravel_multi_index(idx.T, grid.shape)]
    theirs = np.array([ants.transform_index_to_physical_point(img, [int(v) for v in i[::-1]])
                       for i in idx])[:, ::-1]
    assert np.allclose(ours, theirs, atol=1e-6)
    assert np.array_equal(itk_bridge.from_ants(img), image.values.astype(np.float32))
    # the file as ANTs reads it itself (its own direction, not normalised) holds the same
    # intensity at the same physical point
    raw = ants.image_read(str(data_dir / "ants" / f"{name}.nii.gz"))
    values = image.values[tuple(idx.T)]
    for p, v in zip(ours, values, strict=True):
        j = np.rint(ants.transform_physical_point_to_index(raw, list(p[::-1]))).astype(int)
        assert raw.numpy()[tuple(j)] == pytest.approx(v)


def test_length_scale_keeps_mm_and_rescales_tiny_spacings():
    assert itk_bridge.ants_length_scale([1.0, 1.0, 1.0]) == 1.0
    assert itk_bridge.ants_length_scale([50.0, 40.0, 40.0]) == 0.01
    assert itk_bridge.ants_length_scale([4e-4, 4e-4, 1e-3]) == 1e3


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(InputError, match="Rigid"):
        ants_backend.linear_stages("Rigidd")
    with pytest.raises(InputError, match="medium"):
        ants_backend.linear_stages("Rigid", "best")
    with pytest.raises(InputError, match="SyNOnly"):
        ants_backend.nonlinear_stage("BSpline")


def test_schedule_drops_levels_too_coarse_for_the_image():
    its, shrink, sigmas = ants_backend._levels((100, 70, 50, 20), (40, 40, 40), linear=False)
    assert shrink == [2, 1] and its == [50, 20] and sigmas == [1, 0]


def _phantom_truth(data_dir):
    from ngffreg.transforms.files import read_c3d_matrix

    return read_c3d_matrix(data_dir / "greedy" / "phantom01_rigid.mat", maps="moving_to_fixed")


@pytest.mark.slow
def test_rigid_on_the_phantom_in_any_length_unit(data_dir):
    """greedy phantom01: the rigid result matches the known truth, and the same images in
    metres (spacing 1e-3, where ANTs alone misbehaves) give the same map."""
    fixed = image_levels(data_dir / "greedy" / "phantom01_fixed.nii.gz")[1].compute()
    moving = image_levels(data_dir / "greedy" / "phantom01_moving.nii.gz")[1].compute()
    truth = _phantom_truth(data_dir)
    stages = ants_backend.linear_stages("Rigid", "low")
    mm = ants_backend.run_ants(fixed, moving, stages)
    pts = Grid.of(fixed).points()[fixed.values.ravel() > 0]
    err = np.linalg.norm(mm.transform.apply(pts) - truth.apply(pts), axis=1)
    assert np.percentile(err, 95) < 0.5
    back = mm.inverse.apply(mm.transform.apply(pts))
    assert np.abs(back - pts).max() < 1e-6

    from ngffreg.image import to_units

    metres = ants_backend.run_ants(to_units(fixed, "meter"), to_units(moving, "meter"), stages)
    err_m = np.linalg.norm(metres.transform.apply(pts * 1e-3) * 1e3 - truth.apply(pts), axis=1)
    assert np.percentile(err_m, 95) < 0.5


def test_ants_outputs_read_with_antspy_match_the_itk_reader(ants_syn, data_dir):
    """The backend reads ANTs' output files with ANTsPy (no ITK transform IO import in
    every worker); on real mni/ch2 SyN outputs (direction matrices that differ) it maps
    points exactly as the ITK-based reader, forward and inverse."""
    from ngffreg.image import Grid
    from ngffreg.io.read import open_image
    from ngffreg.registration.ants_backend import read_outputs
    from ngffreg.transforms.files import read_ants_transforms

    pts = Grid.of(open_image(ants_syn["fixed"])).points()[::4999]
    fwd = [str(p) for p in ants_syn["fwdtransforms"]]
    ours, theirs = read_outputs(fwd), read_ants_transforms(fwd)
    np.testing.assert_allclose(ours.apply(pts), theirs.apply(pts), atol=1e-6)
    inv = [str(p) for p in ants_syn["invtransforms"]]
    flags = [p.endswith(".mat") for p in inv]
    np.testing.assert_allclose(read_outputs(inv, invert=flags).apply(pts),
                               read_ants_transforms(inv, invert=flags).apply(pts), atol=1e-6)
