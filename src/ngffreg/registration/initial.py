"""A starting translation for the coarse step, found by correlation over every shift.

Intensity-based linear registration (ANTs, elastix) climbs from where it starts: ANTs'
default start aligns the images' intensity centroids, and a pair whose centroids do not
coincide with its true alignment (tissue cut differently between imaging rounds, sparse
bright spots) can end in a local optimum tens of micrometres away. Here both images are
resampled onto axis-aligned grids of the same spacing (a coarse level of at most
:data:`SEARCH_VOXELS` voxels) and the normalised cross-correlation of the overlap is
computed for every integer shift at once, with FFTs (the masked form: each shift is
normalised by the statistics of its own overlap, so partial overlaps are not favoured).
Shifts whose overlap is less than :data:`MIN_OVERLAP` of the smaller image are not
considered.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..image import Grid, physical_bbox, spacing, units
from ..transforms import Identity, Translation
from ..warp import warp

#: The search runs on grids of at most this many voxels (the finer of the two images').
SEARCH_VOXELS = 2**20
#: The smallest overlap a shift may have, as a fraction of the smaller image's voxels.
MIN_OVERLAP = 0.3


def search_spacing(fixed: xr.DataArray, moving: xr.DataArray) -> np.ndarray:
    """An isotropic spacing no finer than either image's and coarse enough that both
    images' bounding boxes hold at most :data:`SEARCH_VOXELS` voxels."""
    s = max(float(np.max(spacing(fixed))), float(np.max(spacing(moving))))
    for image in (fixed, moving):
        lo, hi = physical_bbox(image)
        s = max(s, float(np.prod(hi - lo) / SEARCH_VOXELS) ** (1 / 3))
    return np.full(3, s)


def _on_axes(image: xr.DataArray, step: np.ndarray) -> tuple[np.ndarray, Grid]:
    """``image`` resampled (linearly, block-averaged first by warp's level choice) onto the
    axis-aligned grid of spacing ``step`` that covers its bounding box."""
    lo, hi = physical_bbox(image)
    shape = np.maximum(1, np.floor((hi - lo) / step).astype(int) + 1)
    grid = Grid.from_origin(shape, step, lo + 0.5 * ((hi - lo) - (shape - 1) * step),
                            unit=units(image))
    values = warp(image.astype(np.float32), Identity(), like=grid, fill_value=np.nan).values
    return np.asarray(values, dtype=np.float64), grid


def correlation_map(f: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NCC of the overlap of ``f`` and ``m`` shifted by every integer shift ``s`` (voxels:
    ``f(x)`` against ``m(x + s)``; NaN marks voxels outside an image), and the overlap's
    size, both indexed by ``s + (len(f) - 1)`` per axis.

    Six sums over each overlap (its size, the sums of ``f``, ``m``, their squares and their
    product) are correlations of zero-filled images and their masks; they are made in an
    order that keeps at most five maps of the overlap's size and three spectra alive (the
    search's peak, traced: 628 MiB for two 1 M-voxel images, where all at once took
    882 MiB)."""
    from scipy import fft

    shape = [a + b - 1 for a, b in zip(f.shape, m.shape, strict=True)]
    size = [fft.next_fast_len(n, real=True) for n in shape]
    crop = tuple(slice(0, n) for n in shape)
    mf, mm = np.isfinite(f), np.isfinite(m)
    f0, m0 = np.where(mf, f, 0.0), np.where(mm, m, 0.0)
    flip = (slice(None, None, -1),) * 3

    def spectrum(a: np.ndarray, reverse: bool = False) -> Any:
        # Σ_x a(x) b(x + s) is the convolution of a reversed with b, at s + (len(a) - 1)
        return fft.rfftn(np.asarray(a[flip] if reverse else a, dtype=np.float64), size)

    def corr(sa: Any, sb: Any) -> np.ndarray:
        return np.array(fft.irfftn(sa * sb, size)[crop])  # the padding freed

    fa, fb, sm_ = spectrum(mf, True), spectrum(f0, True), spectrum(mm)
    n = corr(fa, sm_)
    sf = corr(fb, sm_)
    var_f = corr(spectrum(f0 * f0, True), sm_)  # Σf², then Σ(f - mean)²
    del sm_
    # a denominator below this is rounding noise (float32: a threshold needs no more)
    floor = (1e-12 * np.maximum(var_f, 1)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_f -= sf * sf / n
        s0 = spectrum(m0)
        sm = corr(fa, s0)
        num = corr(fb, s0)  # Σfm, then Σ(f - mean)(m - mean)
        del fb, s0
        num -= sf * sm / n
        del sf
        var_m = corr(fa, spectrum(m0 * m0))
        del fa
        var_m -= sm * sm / n
        del sm
        np.maximum(var_f, 0, out=var_f)
        np.maximum(var_m, 0, out=var_m)
        var_f *= var_m  # the denominator, squared
        del var_m
        np.sqrt(var_f, out=var_f)
        valid = (n > 0.5) & (var_f > floor)
        del floor
        num /= var_f
    del var_f
    num[~valid] = np.nan
    return num, np.round(n)


def initial_translation(fixed: xr.DataArray, moving: xr.DataArray,
                        reference: Any = None) -> tuple[Translation, dict[str, Any]]:
    """The fixed → moving translation whose overlap correlates best, and what was
    measured: its NCC, and the NCC of ``reference`` (a translation, e.g. the intensity
    centroids') on the same map."""
    step = search_spacing(fixed, moving)
    f, gf = _on_axes(fixed, step)
    m, gm = _on_axes(moving, step)
    ncc, n = correlation_map(f, m)
    smaller = min(np.isfinite(f).sum(), np.isfinite(m).sum())
    ncc = np.where(n >= MIN_OVERLAP * smaller, ncc, np.nan)
    if not np.isfinite(ncc).any():
        return Translation(translation=np.zeros(3)), {"ncc": None}
    best = np.unravel_index(int(np.nanargmax(ncc)), ncc.shape)
    shift = np.array(best) - (np.array(f.shape) - 1)  # voxels: f(x) ~ m(x + shift)
    # fixed point p = gf.origin + step * i ↦ moving point gm.origin + step * (i + shift)
    t = gm.origin - gf.origin + step * shift
    report: dict[str, Any] = {"ncc": float(ncc[best]), "translation": t.tolist(),
                              "search_spacing": float(step[0])}
    if reference is not None:
        r = np.asarray(reference, dtype=np.float64)
        s = np.round((r - (gm.origin - gf.origin)) / step).astype(int) + np.array(f.shape) - 1
        if np.all(s >= 0) and np.all(s < np.array(ncc.shape)) and np.isfinite(ncc[tuple(s)]):
            report["reference_ncc"] = float(ncc[tuple(s)])
    return Translation(translation=t), report


__all__ = ["correlation_map", "initial_translation", "search_spacing"]
