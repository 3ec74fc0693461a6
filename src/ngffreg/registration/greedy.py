"""The greedy block engine: compiled, GIL-free deformable registration of two images on
one grid.

The method is the greedy diffeomorphic class (Avants et al. 2008's greedy SyN half; the
``greedy`` tool's documented algorithm; with ``velocity=True`` the stationary-velocity
form of diffeomorphic log-demons, Vercauteren et al. 2009), written here from those
descriptions. At each level of an image pyramid (anti-aliased by Gaussian smoothing
before each halving), from coarse to fine, with ``iterations[level]`` steps:

1. warp the moving image through the current map ``φ(x) = x + u(x)``, with its gradient:
   the moving image's central differences sampled at ``φ(x)`` (``gradient="central"``,
   the default: smoother, and measured 0.22 → 0.13 voxel median error on brain blocks)
   or the exact derivative of the trilinear samples (``"exact"``);
2. the metric's force: for ``"ncc"``, the exact derivative of the sum of local normalised
   cross-correlations over box windows of half-width ``radius`` (running sums: the cost
   does not grow with the window); for ``"ssd"`` minus the squared difference's
   derivative; zero outside the masks (the moving mask says where the moving image
   holds data: the force stays a window + 1 voxel inside it, and beyond it the moving
   image reads its mean over the data, so that no step there becomes an edge to fit);
3. smooth the force with a Gaussian of ``sigma_update`` and scale it so that its largest
   step is ``step`` voxels;
4. compose: ``φ ← φ ∘ (x + v)`` (greedy), or, with ``velocity``, add the step to a
   stationary velocity field ``w`` and take ``φ = exp(w)`` by scaling and squaring;
5. smooth the displacement (or the velocity) with a Gaussian of ``sigma_field``.

The inverse is ``exp(-w)`` (``velocity``) or a fixed-point iteration
``ψ(y) = -u(y + ψ(y))``, refined until the residual stops falling. Smoothing widths are
voxels of each level (a number) or lengths (``"80 um"``), per axis on anisotropic grids.
The images' direction enters only at the end: the answer is a
:class:`~ngffreg.transforms.field.DisplacementField` (fixed → moving, physical units,
world z, y, x components) on the fixed grid, so any direction and spacing give the same
physical answer. Everything runs in memory (no files, no subprocess) in float32 with
float64 sums, in kernels that release the GIL; the same inputs give the same field bit
for bit whatever the number of threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import LENGTH
from ..errors import InputError
from ..image import Grid
from ..transforms import DisplacementField
from ..units import normalize_unit, unit_factor
from . import greedy_kernels as K

METRICS = ("ncc", "ssd")
GRADIENTS = ("central", "exact")
#: Gaussian (voxels) applied to both images before a fit is judged on held-out voxels.
JUDGE_SIGMA = 1.0
#: An axis is halved for a coarser level only while it keeps this many voxels.
MIN_LEVEL_VOXELS = 16


@dataclass(frozen=True)
class GreedyOptions:
    """Settings of the engine (see the module docstring).

    ``iterations`` lists the steps per level, coarsest first (its length is the number of
    levels; each level halves the finer one's axes, except axes already much coarser
    than the others). ``radius``: NCC window half-width in voxels (one or z, y, x; kept
    as z, y, x).
    ``sigma_update``/``sigma_field``: voxels or lengths (``"60 um"``). ``step``: the
    largest update per iteration, voxels. ``inverse_iterations``: fixed-point steps of the
    inverse (at most). The defaults were chosen on brain blocks under a known deformation
    (benchmarks/RESULTS.md, "Block engine defaults").
    """

    metric: str = "ncc"
    radius: Any = 2
    iterations: tuple[int, ...] = (50, 25, 10)
    step: float = 1.0
    sigma_update: Any = 1.732
    sigma_field: Any = 0.707
    velocity: bool = False
    inverse: bool = True
    inverse_iterations: int = 30
    squaring_steps: int = 6
    gradient: str = "central"

    def __post_init__(self) -> None:
        if self.gradient not in GRADIENTS:
            raise InputError(f"Unknown gradient {self.gradient!r}; use one of "
                             f"{', '.join(GRADIENTS)}.")
        if self.metric not in METRICS:
            raise InputError(f"Unknown metric {self.metric!r}; use one of {', '.join(METRICS)}.")
        its = tuple(int(i) for i in np.atleast_1d(self.iterations))
        if not its or min(its) < 0:
            raise InputError(f"iterations must list non-negative counts per level, coarse to "
                             f"fine (e.g. (100, 50, 10)); got {self.iterations!r}.")
        object.__setattr__(self, "iterations", its)
        rad = np.broadcast_to(np.asarray(self.radius), (3,))
        if np.any(rad < 1) or np.any(rad != np.round(rad)):
            raise InputError(f"radius must be whole voxels ≥ 1 (one or z, y, x); got "
                             f"{self.radius!r}.")
        object.__setattr__(self, "radius", tuple(int(r) for r in rad))  # z, y, x
        if not self.step > 0:
            raise InputError(f"step must be a positive number of voxels; got {self.step!r}.")
        for name in ("sigma_update", "sigma_field"):
            _sigma_value(getattr(self, name), name)  # fails early on a bad value


@dataclass
class GreedyResult:
    """The engine's answer: ``transform`` (fixed → moving) and its ``inverse`` (or None),
    both on the fixed grid, and what happened per level."""

    transform: DisplacementField
    inverse: DisplacementField | None
    levels: list[dict[str, Any]] = field(default_factory=list)
    held_out: tuple[float, float] | None = None


def _sigma_value(value: Any, name: str) -> tuple[float, str | None]:
    """``(amount, unit)``: a number is voxels (unit None); ``"80 um"`` a length."""
    if isinstance(value, str):
        m = LENGTH.match(value)
        if m is None:
            try:
                return float(value), None
            except ValueError:
                raise InputError(f"{name} must be voxels (a number) or a length such as "
                                 f"'80 um'; got {value!r}.") from None
        return float(m.group(1)), normalize_unit(m.group(2))
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be voxels (a number) or a length such as '80 um'; "
                         f"got {value!r}.") from None
    if out < 0:
        raise InputError(f"{name} must not be negative; got {value!r}.")
    return out, None


def _taps(value: Any, spacing: np.ndarray, unit: str, name: str) -> tuple:
    """Per-axis Gaussian taps for a smoothing width on a level of ``spacing``."""
    amount, u = _sigma_value(value, name)
    sig = (np.full(3, amount) if u is None
           else amount * unit_factor(u, unit) / np.asarray(spacing, dtype=np.float64))
    return tuple(K.gaussian_weights(float(s)) for s in sig)


def level_factors(shape: tuple[int, ...], spacing: np.ndarray, n_levels: int) -> list[np.ndarray]:
    """Per-axis shrink factors of each level relative to full resolution, coarsest first:
    an axis is halved at a level when its spacing there is at most 1.5× the finest axis
    spacing there and it keeps at least :data:`MIN_LEVEL_VOXELS` voxels."""
    factors = [np.ones(3, dtype=np.int64)]
    for _ in range(n_levels - 1):
        f = factors[-1].copy()
        sp = spacing * f
        for k in range(3):
            if sp[k] <= 1.5 * sp.min() and -(-shape[k] // (2 * f[k])) >= MIN_LEVEL_VOXELS:
                f[k] *= 2
        factors.append(f)
    return factors[::-1]


def _shrink(img: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Halve the axes where ``rel`` is 2: a Gaussian of 1 voxel first (anti-aliasing)."""
    if np.all(rel == 1):
        return img
    out = np.array(img, dtype=np.float32, copy=True)
    tmp = np.empty_like(out)
    K.smooth(out, tuple(K.gaussian_weights(1.0) if r > 1 else None for r in rel), tmp)
    return np.ascontiguousarray(out[::rel[0], ::rel[1], ::rel[2]])


def data_mask(valid: np.ndarray | None, radius: Any) -> np.ndarray | None:
    """The voxels a fit may use in a moving image that holds data only where ``valid``
    (e.g. a block whose points leave the moving image): ``valid`` less ``radius`` + 1
    voxels along its edges, so that no correlation window and no gradient there reads the
    zeros beyond the data; ``None`` when ``valid`` is."""
    if valid is None:
        return None
    return _erode(valid, np.broadcast_to(np.asarray(radius), (3,)).astype(np.int64) + 1)


def _erode(valid: np.ndarray, reach: Any) -> np.ndarray:
    """``valid`` less ``reach`` voxels (one or z, y, x) along its edges."""
    from scipy import ndimage

    size = tuple(2 * int(r) + 1 for r in np.broadcast_to(np.asarray(reach), (3,)))
    return ndimage.minimum_filter(np.asarray(valid, dtype=np.uint8), size=size,
                                  mode="nearest") > 0


def _normalise(img: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Zero mean, unit variance (over the mask where given), float32."""
    data = np.asarray(img, dtype=np.float32)
    sel = data if mask is None or not mask.any() else data[mask > 0]
    mean = float(np.mean(sel, dtype=np.float64))
    std = float(np.std(sel, dtype=np.float64))
    out = data - np.float32(mean)
    if std > 0:
        out *= np.float32(1.0 / std)
    return np.ascontiguousarray(out, dtype=np.float32)


def _ordered_sum(per_slice: np.ndarray) -> float:
    return float(np.add.reduce(per_slice.astype(np.float64)))


class _Level:
    """Buffers and fixed statistics of one pyramid level."""

    def __init__(self, fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray,
                 spacing: np.ndarray, options: GreedyOptions) -> None:
        self.f, self.m, self.mask = fixed, moving, mask
        self.spacing = np.asarray(spacing, dtype=np.float64)
        shape = fixed.shape
        self.shape = shape
        self.w = np.empty(shape, np.float32)
        self.grad = np.empty((3, *shape), np.float32)
        self.force = np.empty((3, *shape), np.float32)
        self.tmp = np.empty(shape, np.float32)
        self.per_slice = np.empty(shape[0], np.float64)
        self.mgrad = None
        if options.gradient == "central":
            self.mgrad = np.empty((3, *shape), np.float32)
            K.central_gradient(moving, self.spacing, self.mgrad)
        self.radius = np.asarray(options.radius, dtype=np.int64)
        if options.metric == "ncc":
            self.sf = K.box_sum(fixed, np.empty(shape, np.float32), self.tmp, self.radius)
            self.sff = K.box_sum(fixed * fixed, np.empty(shape, np.float32), self.tmp,
                                 self.radius)
            # sw, sww, sfw; then (reused) three of the four boxed terms, the fourth in `last`
            self.stats = np.empty((3, *shape), np.float32)
            self.terms = np.empty((4, *shape), np.float32)
            self.last = np.empty(shape, np.float32)

    def force_and_metric(self, u: np.ndarray, metric: str) -> float:
        """The metric's force at ``u`` into ``self.force``; returns the metric per voxel
        (mean local correlation, or mean squared difference)."""
        if self.mgrad is None:
            K.warp_with_gradient(self.m, u, self.spacing, self.w, self.grad)
        else:
            K.warp_with_sampled_gradient(self.m, self.mgrad, u, self.spacing, self.w, self.grad)
        n = max(1.0, float(self.mask.sum()))
        if metric == "ssd":
            K.ssd_force(self.f, self.w, self.grad, self.mask, self.force, self.per_slice)
            return _ordered_sum(self.per_slice) / n
        sw, sww, sfw = self.stats
        ta, tb, tc, td = self.terms
        K.products(self.f, self.w, ta, tb)  # w², f·w
        K.box_sum(self.w, sw, self.tmp, self.radius)
        K.box_sum(ta, sww, self.tmp, self.radius)
        K.box_sum(tb, sfw, self.tmp, self.radius)
        K.ncc_terms(self.sf, self.sff, sw, sww, sfw, self.radius, self.mask, self.per_slice,
                    ta, tb, tc, td)
        boxed = (*self.stats, self.last)  # the statistics are used up
        for k in range(4):
            K.box_sum(self.terms[k], boxed[k], self.tmp, self.radius)
        K.ncc_force(self.f, self.w, self.grad, *boxed, self.mask, self.force)
        return _ordered_sum(self.per_slice) / n


def _smooth_field(u: np.ndarray, taps: tuple, tmp: np.ndarray) -> None:
    if all(t is None for t in taps):
        return
    for c in range(3):
        K.smooth(u[c], taps, tmp)


def _exp(w: np.ndarray, spacing: np.ndarray, steps: int, out: np.ndarray,
         scratch: np.ndarray) -> np.ndarray:
    """``exp(w)`` by scaling and squaring (``steps`` squarings) into ``out``."""
    np.multiply(w, np.float32(0.5 ** steps), out=out)
    for _ in range(steps):
        K.compose(out, out, spacing, scratch)
        out[...] = scratch
    return out


def invert_displacement(u: np.ndarray, spacing: np.ndarray, *, start: np.ndarray | None = None,
                        iterations: int = 30) -> tuple[np.ndarray, float]:
    """The inverse ``ψ`` of ``x + u`` on the same grid (``ψ(y) = -u(y + ψ(y))``, iterated
    from ``start`` or ``-u`` until the largest change stops falling) and its largest
    residual ``|u(y + ψ(y)) + ψ(y)|`` in voxels."""
    w = -u if start is None else start.copy()
    nxt = np.empty_like(w)
    per_slice = np.empty(u.shape[1], np.float64)
    best = np.inf
    for _ in range(max(1, iterations)):
        K.invert_step(u, w, spacing, nxt)
        diff = nxt - w
        K.max_norm(diff, spacing, per_slice)
        change = float(per_slice.max())
        w, nxt = nxt, w
        if change < 1e-4 or change >= best:
            best = min(best, change)
            break
        best = change
    return w, best


def register_arrays(fixed: np.ndarray, moving: np.ndarray, spacing: Any,
                    options: GreedyOptions | None = None, *, fixed_mask: np.ndarray | None = None,
                    moving_mask: np.ndarray | None = None, unit: str = "micrometer",
                    hold_out: np.ndarray | None = None, judge: Any = None) -> dict[str, Any]:
    """Register two (z, y, x) arrays on the same grid (``spacing`` z, y, x): returns
    ``{"u": forward displacement (3, z, y, x) along the grid axes in physical units,
    "inverse": its inverse or None, "levels": [...]}``.

    ``fixed_mask``: the voxels whose force drives the fit. ``moving_mask``: where the
    moving array holds data (e.g. the points of a pre-warp that fell inside the moving
    image): the fit uses those voxels less the window + 1 (:func:`data_mask`), and beyond
    them the moving array reads its mean over the data, so that no step between data and
    fill becomes an edge to fit.

    ``hold_out``: voxels whose force is ignored (true = held out), so that the fit can be
    judged on them: the result then has ``"held_out": (before, after)``, the mean local
    correlation over the held-out voxels (within the index box ``judge``, e.g. a block's
    core, when given) before and after."""
    options = options or GreedyOptions()
    fixed = np.asarray(fixed)
    moving = np.asarray(moving)
    if fixed.shape != moving.shape or fixed.ndim != 3:
        raise InputError(f"The greedy engine takes two 3-D arrays on one grid; got shapes "
                         f"{fixed.shape} and {moving.shape}.")
    spacing = np.asarray(spacing, dtype=np.float64)
    data = None if moving_mask is None else np.asarray(moving_mask) > 0
    fit = None if data is None else data_mask(data, options.radius)
    mask = np.ones(fixed.shape, np.float32)
    if fixed_mask is not None:
        mask *= (np.asarray(fixed_mask) > 0)
    if fit is not None:  # judged where the moving mask lands (unwarped: small steps)
        mask *= fit
    if hold_out is not None:
        mask *= ~np.asarray(hold_out, dtype=bool)
    f0 = _normalise(fixed, mask)
    m0 = _normalise(moving, mask)
    if data is not None:
        # beyond the data the moving image reads its mean: a step there would be an edge
        # that the coarser levels (wider windows, smoothed images) pull the data onto
        m0[~data] = 0.0
    factors = level_factors(fixed.shape, spacing, len(options.iterations))
    # the pyramids, finest first, then used coarsest first
    fs, ms, ks = [f0], [m0], [mask]
    for i in range(len(factors) - 1, 0, -1):
        rel = factors[i - 1] // factors[i]
        fs.append(_shrink(fs[-1], rel))
        ms.append(_shrink(ms[-1], rel))
        ks.append(np.ascontiguousarray((_shrink(ks[-1], rel) > 0.5).astype(np.float32)))
    fs, ms, ks = fs[::-1], ms[::-1], ks[::-1]
    u = w = None  # the displacement, and the velocity (``options.velocity``)
    levels: list[dict[str, Any]] = []
    for li, its in enumerate(options.iterations):
        lev = _Level(fs[li], ms[li], ks[li], spacing * factors[li], options)
        ratio = None if li == 0 else factors[li].astype(np.float64) / factors[li - 1]
        with _threads_for(fs[li].size):
            u, w, record = _run_level(lev, its, options, unit, u, w, ratio)
        levels.append({"shape": list(lev.shape), "factor": factors[li].tolist(), **record})
        del lev  # its buffers go before the next level's (or the judging) are made
    del fs, ms, ks
    out: dict[str, Any] = {"u": u, "levels": levels}
    with _threads_for(fixed.size):
        if hold_out is not None:
            weight = np.zeros(fixed.shape, np.float32)
            box = tuple(slice(None) for _ in range(3)) if judge is None else judge
            weight[box] = np.asarray(hold_out, dtype=np.float32)[box]
            if fixed_mask is not None:
                weight *= (np.asarray(fixed_mask) > 0)
            # judged on copies smoothed alike: interpolation blurs the warped image, which
            # alone lowers the correlation of fine structure (0.80 -> 0.78 on a brain at 4×
            # down while the error fell from 0.76 to 0.44 voxel)
            taps = tuple(K.gaussian_weights(JUDGE_SIGMA) for _ in range(3))
            if fit is not None:  # nor where that smoothing reads beyond the data
                weight *= _erode(fit, [len(t) // 2 for t in taps])
            warped = np.empty_like(m0)
            K.warp_image(m0, u, spacing, warped)
            f1, m1 = (K.smooth(a.copy(), taps, np.empty_like(a)) for a in (f0, m0))
            K.smooth(warped, taps, np.empty_like(warped))
            out["held_out"] = (local_ncc(f1, m1, options.radius, weight),
                               local_ncc(f1, warped, options.radius, weight))
        out["inverse"] = None
        if options.inverse:
            start = None
            if options.velocity:
                start = _exp(-w, spacing, options.squaring_steps, np.empty_like(w),
                             np.empty_like(w))
            out["inverse"], change = invert_displacement(
                u, spacing, start=start, iterations=options.inverse_iterations)
            levels[-1]["inverse_change_vox"] = change
    return out


def _run_level(lev: _Level, its: int, options: GreedyOptions, unit: str, u: Any, w: Any,
               ratio: np.ndarray | None) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """One pyramid level's iterations from the coarser level's ``u`` and ``w`` (``None``
    at the first level; ``ratio``: coarse voxels per fine voxel); returns the new ``u``,
    ``w`` and what happened."""
    sp = lev.spacing
    if u is None:
        u = np.zeros((3, *lev.shape), np.float32)
        w = np.zeros_like(u) if options.velocity else None
    else:
        u = _upsample(u, lev.shape, ratio)
        w = _upsample(w, lev.shape, ratio) if options.velocity else None
    upd_taps = _taps(options.sigma_update, sp, unit, "sigma_update")
    fld_taps = _taps(options.sigma_field, sp, unit, "sigma_field")
    scratch = np.empty_like(u)
    first = last = None
    for _ in range(its):
        last = lev.force_and_metric(u, options.metric)
        first = last if first is None else first
        v = lev.force
        _smooth_field(v, upd_taps, lev.tmp)
        K.max_norm(v, sp, lev.per_slice)
        top = float(lev.per_slice.max())
        if not top > 0:
            break
        v *= np.float32(options.step / top)
        if options.velocity:
            w += v
            _smooth_field(w, fld_taps, lev.tmp)
            _exp(w, sp, options.squaring_steps, u, scratch)
        else:
            K.compose(u, v, sp, scratch)
            u, scratch = scratch, u
            _smooth_field(u, fld_taps, lev.tmp)
    return u, w, {"iterations": its, "metric_first": first, "metric_last": last}


#: Voxels per thread below which a level runs on fewer threads: each kernel is a parallel
#: region, and on a busy machine waiting for every thread at its end costs more than the
#: work (measured: 50 s instead of 2.5 s for a 40×64×64 pair with the other core loaded).
VOXELS_PER_THREAD = 2**20


@contextlib.contextmanager
def _threads_for(voxels: int) -> Iterator[None]:
    """numba's threads for ``voxels`` of work (the results are the same whatever the
    count)."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(max(1, min(before, voxels // VOXELS_PER_THREAD)))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def local_ncc(fixed: np.ndarray, moving: np.ndarray, radius: Any,
              weight: np.ndarray | None = None) -> float:
    """The mean local normalised cross-correlation (squared, over box windows of
    half-width ``radius``) of two arrays, weighted by ``weight`` (default: all voxels)."""
    f = np.ascontiguousarray(fixed, dtype=np.float32)
    m = np.ascontiguousarray(moving, dtype=np.float32)
    radius = np.broadcast_to(np.asarray(radius, dtype=np.int64), (3,)).copy()
    weight = (np.ones(f.shape, np.float32) if weight is None
              else np.ascontiguousarray(weight, dtype=np.float32))
    tmp = np.empty(f.shape, np.float32)
    prod = np.empty((2, *f.shape), np.float32)
    sums = np.empty((5, *f.shape), np.float32)  # f, f², m, m², f·m
    K.products(f, f, prod[0], prod[1])
    K.box_sum(f, sums[0], tmp, radius)
    K.box_sum(prod[0], sums[1], tmp, radius)
    K.products(f, m, prod[0], prod[1])
    K.box_sum(m, sums[2], tmp, radius)
    K.box_sum(prod[0], sums[3], tmp, radius)
    K.box_sum(prod[1], sums[4], tmp, radius)
    del prod
    terms = np.empty((4, *f.shape), np.float32)
    per = np.empty(f.shape[0], np.float64)
    K.ncc_terms(*sums, radius, weight, per, *terms)
    total = float(np.add.reduce(weight.astype(np.float64).ravel()))
    return _ordered_sum(per) / total if total > 0 else float("nan")


def hold_out_cells(shape: tuple[int, ...], cell: int = 4) -> np.ndarray:
    """A regular lattice of cubes of ``cell`` voxels, one cube in eight (every other cube
    along each axis): the voxels held out of a fit to judge it on."""
    idx = [(np.arange(n) // cell) % 2 == 0 for n in shape]
    return idx[0][:, None, None] & idx[1][None, :, None] & idx[2][None, None, :]


def _upsample(u: np.ndarray, shape: tuple, ratio: np.ndarray) -> np.ndarray:
    if tuple(u.shape[1:]) == tuple(shape):
        return u
    out = np.empty((3, *shape), np.float32)
    K.upsample(u, out, np.asarray(ratio, dtype=np.float64))
    return out


def to_field(u: np.ndarray, grid: Grid, **names: Any) -> DisplacementField:
    """A displacement ``u`` along ``grid``'s axes (physical units) as a world-space field."""
    d = u if grid.is_axis_aligned else np.einsum("ij,j...->i...", grid.direction, u)
    return DisplacementField.from_array(np.ascontiguousarray(d, dtype=np.float32),
                                        spacing=grid.spacing, origin=grid.origin,
                                        direction=grid.direction, unit=grid.unit, **names)


def greedy_register(fixed: xr.DataArray, moving: xr.DataArray,
                    options: GreedyOptions | None = None, *,
                    fixed_mask: xr.DataArray | np.ndarray | None = None,
                    moving_mask: xr.DataArray | np.ndarray | None = None,
                    hold_out: np.ndarray | None = None, judge: Any = None) -> GreedyResult:
    """Register ``moving`` to ``fixed``, two images on the same grid (resample the moving
    image onto the fixed grid first, e.g. through an affine): the fixed → moving map and
    its inverse as displacement fields on the fixed grid (see the module docstring)."""
    grid = Grid.of(fixed)
    if not Grid.of(moving).matches(grid):
        raise InputError("The greedy engine registers two images on one grid; resample the "
                         "moving image onto the fixed grid first (ngffreg.warp(moving, "
                         "initial_transform, like=fixed)).")
    out = register_arrays(
        np.asarray(fixed.values), np.asarray(moving.values), grid.spacing, options,
        fixed_mask=None if fixed_mask is None else np.asarray(getattr(fixed_mask, "values",
                                                                      fixed_mask)),
        moving_mask=None if moving_mask is None else np.asarray(getattr(moving_mask, "values",
                                                                        moving_mask)),
        unit=grid.unit, hold_out=hold_out, judge=judge)
    forward = to_field(out["u"], grid)
    inverse = None if out["inverse"] is None else to_field(out["inverse"], grid)
    return GreedyResult(forward, inverse, out["levels"], out.get("held_out"))


__all__ = [
    "GreedyOptions",
    "GreedyResult",
    "data_mask",
    "greedy_register",
    "hold_out_cells",
    "invert_displacement",
    "level_factors",
    "local_ncc",
    "register_arrays",
    "to_field",
]
