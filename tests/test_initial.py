"""The coarse step's start: the translation whose overlap correlates best over every
shift (ngffreg.registration.initial), used when ANTs' centroid start would mislead."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngffreg.image import make_image
from ngffreg.registration.initial import correlation_map, initial_translation


def _texture(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma)


def test_the_map_peaks_at_the_shift_and_ignores_what_lies_outside():
    big = _texture((50, 60, 70))
    f = big[5:35, 10:50, 10:60].copy()
    m = big[12:42, 0:40, 25:70].copy()  # f(i) = m(i + (-7, 10, -15))
    m[:, :, -5:] = np.nan  # outside the moving image: not counted
    ncc, n = correlation_map(f, m)
    ncc = np.where(n >= 0.3 * f.size, ncc, np.nan)  # tiny overlaps correlate by chance
    best = np.unravel_index(int(np.nanargmax(ncc)), ncc.shape)
    assert tuple(np.array(best) - (np.array(f.shape) - 1)) == (-7, 10, -15)
    assert ncc[best] == pytest.approx(1.0, abs=1e-9)
    assert n[best] == 23 * 30 * 35  # the overlap: m[0:23, 10:40, 0:35], NaNs left out


def test_every_shift_is_the_correlation_of_its_own_overlap():
    """The map against the NCC of each overlap computed directly, NaNs left out."""
    rng = np.random.default_rng(4)
    f, m = rng.random((9, 11, 13)), rng.random((8, 12, 10))
    f[0, :4] = np.nan
    m[:, -2:, 3] = np.nan
    ncc, n = correlation_map(f, m)
    checked = 0
    for s in [(0, 0, 0), (-3, 2, 5), (4, -6, -7), (2, 5, -3), (-5, -9, 6)]:
        i = np.array(s) + np.array(f.shape) - 1
        fs = tuple(slice(max(0, -d), min(a, b - d)) for d, a, b in
                   zip(s, f.shape, m.shape, strict=True))
        ms = tuple(slice(x.start + d, x.stop + d) for x, d in zip(fs, s, strict=True))
        a, b = f[fs].ravel(), m[ms].ravel()
        keep = np.isfinite(a) & np.isfinite(b)
        assert n[tuple(i)] == keep.sum()
        if keep.sum() > 2:
            want = np.corrcoef(a[keep], b[keep])[0, 1]
            assert ncc[tuple(i)] == pytest.approx(want, abs=1e-9)
            checked += 1
    assert checked >= 4


def test_the_translation_is_physical_whatever_the_grids():
    """Fixed at 1 µm with one origin, moving at 1.5 µm with another: the fixed → moving
    translation is found within one search voxel."""
    big = _texture((120, 120, 120), sigma=3.0)
    fixed = make_image(big[20:80, 20:90, 10:100].astype(np.float32), spacing=(1, 1, 1),
                       origin=(5.0, -3.0, 2.0), unit="micrometer")
    truth = np.array([8.0, -6.0, 12.0])  # moving(p + truth) = fixed(p)
    z, y, x = np.meshgrid(*[np.arange(n) * 1.5 for n in (40, 40, 50)], indexing="ij")
    origin = np.array([15.0, -10.0, 10.0])
    pts = np.stack([z, y, x], -1) + origin - truth - np.array([5.0, -3.0, 2.0]) \
        + np.array([20, 20, 10])
    values = ndimage.map_coordinates(big, np.moveaxis(pts, -1, 0), order=1, cval=np.nan)
    moving = make_image(values.astype(np.float32), spacing=(1.5, 1.5, 1.5), origin=origin,
                        unit="micrometer")
    t, report = initial_translation(fixed, moving, reference=np.zeros(3))
    assert np.abs(t.translation - truth).max() <= report["search_spacing"]
    assert report["ncc"] > 0.8 and report["reference_ncc"] < report["ncc"]


@pytest.mark.slow
def test_a_pair_whose_centroids_mislead_starts_from_the_correlation():
    """The moving round images a wider field (tissue on both sides of the fixed round's
    field): aligning the centroids starts 20 voxels from the truth, ANTs' translation
    stays near that start; the correlation start finds the shift and the coarse step
    ends within a voxel of it."""
    from ngffreg.registration.coarse import coarse_register

    tissue = (_texture((40, 48, 120), seed=3, sigma=1.5) * 1000).astype(np.float32)
    fixed = make_image(tissue[:, :, 10:60], spacing=(1, 1, 1), unit="micrometer")
    moving = make_image(tissue, spacing=(1, 1, 1), unit="micrometer")  # p ↦ p + 10 in x
    result = coarse_register([fixed], [moving], linear_type="Translation",
                             nonlinear_type=None, downsample_factor=None)
    start = result.metrics["initial"]
    assert start["used"] == "correlation" and abs(start["translation"][2] - 10) <= 1.5
    assert abs(start["centroid_translation"][2] - 10) > 15  # the centroids mislead
    p = np.array([[20.0, 24.0, 25.0]])
    assert np.abs(result.transform.apply(p) - (p + np.array([0, 0, 10]))).max() < 1.0
