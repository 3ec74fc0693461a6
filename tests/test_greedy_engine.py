"""The compiled greedy engine (ngffreg.registration.greedy) on problems with known answers."""

from __future__ import annotations

import os

import numba
import numpy as np
import pytest
from scipy import ndimage

from ngffreg.errors import InputError
from ngffreg.image import Grid, make_image
from ngffreg.registration.greedy import (
    GreedyOptions,
    greedy_register,
    local_ncc,
    register_arrays,
)
from ngffreg.synthetic import random_deformation
from ngffreg.warp import warp

SPACING = (2.0, 1.0, 1.0)


def _texture(shape=(40, 64, 64), seed=0, sigma=(0.75, 1.5, 1.5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    """A textured volume (anisotropic: 2 × 1 × 1 µm, non-zero origin) and a copy deformed
    by a known smooth random map S (moving → fixed); the true fixed → moving map is S⁻¹."""
    fixed = make_image(_texture(), spacing=SPACING, origin=(5.0, -3.0, 7.0), unit="um")
    s = random_deformation(Grid.of(fixed), seed=2, coarse_amplitude=2.0, fine_amplitude=0.5)
    moving = warp(fixed, s, like=fixed, interpolator="bSpline").compute()
    return fixed, moving, s


def _inner_points(image, margin=8):
    g = Grid.of(image)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in g.shape], indexing="ij"), -1)
    idx = idx.reshape(-1, 3)
    lo = np.array([margin // 2, margin, margin])
    keep = np.all((idx >= lo) & (idx < np.array(g.shape) - lo), axis=1)
    return g.points()[keep][::5]


@pytest.mark.parametrize("velocity", [False, True])
def test_recovers_a_known_smooth_deformation(pair, velocity):
    fixed, moving, s = pair
    pts = _inner_points(fixed)
    truth = s.apply_inverse(pts)
    before = np.linalg.norm(pts - truth, axis=1)
    result = greedy_register(fixed, moving, GreedyOptions(velocity=velocity))
    err = np.linalg.norm(result.transform.apply(pts) - truth, axis=1)  # µm = voxels of 1 µm
    assert np.median(before) > 0.5
    assert np.median(err) < 0.1, np.median(err)
    assert np.percentile(err, 95) < 0.25
    # inverse consistency: ψ(φ(x)) ≈ x
    back = result.inverse.apply(result.transform.apply(pts))
    assert np.median(np.linalg.norm(back - pts, axis=1)) < 0.05
    assert result.levels[-1]["metric_last"] > result.levels[-1]["metric_first"]


def test_flipped_direction_gives_the_same_physical_answer(pair):
    """The same physical images stored with the y axis reversed (direction diag(1, -1, 1))
    give the same fixed → moving map at the same physical points."""
    fixed, moving, _ = pair
    flip = np.diag([1.0, -1.0, 1.0])

    def flipped(img):
        g = Grid.of(img)
        last = g.points()[-1]
        origin = np.array([g.origin[0], last[1], g.origin[2]])
        return make_image(np.ascontiguousarray(img.values[:, ::-1, :]), spacing=g.spacing,
                          origin=origin, direction=flip, unit=g.unit)

    f2, m2 = flipped(fixed), flipped(moving)
    # the flipped images hold the same values at the same physical points
    pts = _inner_points(fixed)
    assert np.allclose(warp(f2, make_identity(), like=fixed).values, fixed.values, atol=1e-5)
    opts = GreedyOptions(iterations=(40, 20, 10))
    a = greedy_register(fixed, moving, opts).transform.apply(pts)
    b = greedy_register(f2, m2, opts).transform.apply(pts)
    assert np.max(np.linalg.norm(a - b, axis=1)) < 0.02


def make_identity():
    from ngffreg.transforms import Identity

    return Identity()


def test_deterministic_bit_for_bit_whatever_the_threads(pair):
    fixed, moving, _ = pair
    opts = GreedyOptions(iterations=(20, 10, 5))
    args = (np.asarray(fixed.values), np.asarray(moving.values), SPACING, opts)
    first = register_arrays(*args)["u"]
    again = register_arrays(*args)["u"]
    assert np.array_equal(first, again)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = register_arrays(*args)["u"]
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(first, single)


def test_mask_is_honoured(pair):
    """With the fixed mask off over the high-z half, no force acts there: the displacement
    in its interior (beyond the smoothing's reach) stays near zero."""
    fixed, moving, _ = pair
    mask = np.zeros(fixed.shape, dtype=bool)
    mask[:20] = True
    u = register_arrays(np.asarray(fixed.values), np.asarray(moving.values), SPACING,
                        fixed_mask=mask)["u"]
    free = np.abs(u[:, :20]).max()
    far = np.abs(u[:, 34:]).max()
    assert free > 0.5
    assert far < 0.25 * free


def test_ssd_metric_and_local_ncc(pair):
    fixed, moving, s = pair
    pts = _inner_points(fixed)
    truth = s.apply_inverse(pts)
    result = greedy_register(fixed, moving, GreedyOptions(metric="ssd"))
    err = np.linalg.norm(result.transform.apply(pts) - truth, axis=1)
    assert np.median(err) < 0.15
    f = np.asarray(fixed.values)
    assert local_ncc(f, f, 2) == pytest.approx(1.0, abs=1e-3)
    assert local_ncc(f, np.asarray(moving.values), 2) < 0.9


def test_an_in_memory_call_writes_no_files(pair, tmp_path, monkeypatch):
    fixed, moving, _ = pair
    greedy_register(fixed, moving, GreedyOptions(iterations=(2, 2, 2)))  # compiled, cached
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = {p: p.stat().st_mtime for p in _package_tree()}
    greedy_register(fixed, moving, GreedyOptions(iterations=(5, 5, 5)))
    assert list(tmp_path.iterdir()) == []
    after = {p: p.stat().st_mtime for p in _package_tree()}
    assert before == after


def _package_tree():
    import ngffreg

    root = os.path.dirname(ngffreg.__file__)
    from pathlib import Path

    return sorted(Path(root).rglob("*"))


def test_bad_input_is_refused_with_advice(pair):
    fixed, moving, _ = pair
    with pytest.raises(InputError, match="resample the moving image"):
        greedy_register(fixed, moving.isel(z=slice(0, 30)))
    for bad in ({"metric": "mi"}, {"iterations": ()}, {"radius": 0}, {"step": 0},
                {"sigma_field": "wide"}):
        with pytest.raises(InputError):
            GreedyOptions(**bad)
    # physical smoothing widths are accepted
    GreedyOptions(sigma_update="3 um", sigma_field="1.5 micrometer")


def test_the_edge_of_the_moving_data_is_not_fitted():
    """The moving array holds data from x = 24 on (zeros before, as a pre-warp leaves the
    points outside the moving image) and the tissue begins at x = 34, the true map being a
    shift of 2 voxels along x. Told where the data is, the engine fits the tissue near the
    edge of the data: the zeros are read as the data's mean, so that the step between data
    and fill is no edge for the coarser levels (wider windows, smoothed images) to pull
    onto the tissue's edge (with the zeros kept, the median error there was 0.18 voxel,
    the p95 0.28)."""
    from conftest import texture

    shape, start, top = (40, 48, 80), 24, 34
    tissue = texture((shape[0], shape[1], shape[2] + 16), seed=3)
    tissue *= 1 / (1 + np.exp(-(np.arange(shape[2] + 16) - (top + 8)) / 1.5))
    fixed = tissue[:, :, 8:8 + shape[2]].copy()
    moving = tissue[:, :, 6:6 + shape[2]].copy()  # fixed(p) = moving(p + 2 x)
    data = np.zeros(shape, bool)
    data[:, :, start:] = True
    moving[~data] = 0
    u = register_arrays(fixed, moving, (1.0, 1.0, 1.0), moving_mask=data)["u"]
    err = np.abs(u[2] - 2.0)[6:-6, 6:-6]
    near = err[:, :, start + 6:top]
    assert np.median(near) < 0.1 and np.percentile(near, 95) < 0.2
    assert np.median(err[:, :, top + 8:-8]) < 0.02


@pytest.mark.xfail(strict=True, reason="known bug (issue 17, session 13): where the true map "
                   "points out of the moving array at a face, the engine reads the clamped "
                   "edge and the field runs away (x = 0 face: -6.0 voxels against a true -2; "
                   "the coarse stage's 35.8 um on the EASI-FISH known crop). Remove this "
                   "marker with the fix.")
def test_the_field_does_not_run_away_where_the_map_points_out_of_the_image():
    """Tissue that goes on past the arrays' faces, the true map a shift of 2 voxels along x:
    at the face where the map points out of the moving array the field must stay near the
    true shift, as it does at the other face (the map points inward there)."""
    from conftest import texture

    shape = (40, 48, 64)
    tissue = texture((shape[0], shape[1], shape[2] + 16), seed=3)
    fixed = tissue[:, :, 8:8 + shape[2]].copy()
    moving = tissue[:, :, 10:10 + shape[2]].copy()  # fixed(p) = moving(p - 2 x)
    ux = register_arrays(fixed, moving, (1.0, 1.0, 1.0))["u"][2][6:-6, 6:-6]
    assert abs(np.median(ux[:, :, 8:-8]) + 2.0) < 0.05  # the inside is right
    assert np.abs(ux[:, :, -4:] + 2.0).mean() < 0.1  # the face the map points into
    assert np.abs(ux[:, :, :4] + 2.0).mean() < 0.5  # the face it points out of
