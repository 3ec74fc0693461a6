"""Compiled (numba) kernels of the greedy block engine (:mod:`ngffreg.registration.greedy`).

Arrays are C-ordered float32 ``(z, y, x)`` images and ``(3, z, y, x)`` vector fields
whose components are displacements along the grid's own axes in physical units (the
driver turns them into world directions at the end). Every kernel:

- releases the GIL (``nogil``) and runs in parallel over the outer image axis
  (``prange``), so a dask worker keeps heartbeating while a block registers;
- computes every output voxel from its inputs alone, in a fixed order, and writes sums
  over many voxels per slice, to be added up in order by the caller: the result is the
  same bit for bit whatever the number of threads;
- accumulates running sums in float64 and stores float32.

Edges: images and fields are extended by their edge values (a sample outside the grid
takes the nearest edge voxel, with a zero gradient along the axes it left the grid on).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_OPTS = {"nogil": True, "cache": True, "parallel": True, "error_model": "numpy",
         "fastmath": False}
_SERIAL = {"nogil": True, "cache": True, "error_model": "numpy"}


# ---------------------------------------------------------------------------
# box sums (running sums: the cost does not grow with the radius)
# ---------------------------------------------------------------------------
@njit(**_OPTS)
def _box_x(src, dst, r):
    nz, ny, nx = src.shape
    for z in prange(nz):
        # the plane transposed, so that every row's running sum goes at once along a
        # contiguous axis: each row sees the same additions in the same order as alone (the
        # same result bit for bit), and the rows' sums do not wait for one another
        plane = np.empty((nx, ny), dtype=np.float32)
        out = np.empty((nx, ny), dtype=np.float32)
        for y in range(ny):
            for x in range(nx):
                plane[x, y] = src[z, y, x]
        acc = np.zeros(ny, dtype=np.float64)
        for i in range(min(r, nx - 1) + 1):
            for y in range(ny):
                acc[y] += plane[i, y]
        for i in range(nx):
            for y in range(ny):
                out[i, y] = acc[y]
            if i + r + 1 < nx:
                for y in range(ny):
                    acc[y] += plane[i + r + 1, y]
            if i - r >= 0:
                for y in range(ny):
                    acc[y] -= plane[i - r, y]
        for y in range(ny):
            for x in range(nx):
                dst[z, y, x] = out[x, y]


@njit(**_OPTS)
def _box_y(src, dst, r):
    nz, ny, nx = src.shape
    for z in prange(nz):
        acc = np.zeros(nx, dtype=np.float64)
        for i in range(min(r, ny - 1) + 1):
            for x in range(nx):
                acc[x] += src[z, i, x]
        for i in range(ny):
            for x in range(nx):
                dst[z, i, x] = acc[x]
            if i + r + 1 < ny:
                for x in range(nx):
                    acc[x] += src[z, i + r + 1, x]
            if i - r >= 0:
                for x in range(nx):
                    acc[x] -= src[z, i - r, x]


@njit(**_OPTS)
def _box_z(src, dst, r):
    nz, ny, nx = src.shape
    for y in prange(ny):
        acc = np.zeros(nx, dtype=np.float64)
        for i in range(min(r, nz - 1) + 1):
            for x in range(nx):
                acc[x] += src[i, y, x]
        for i in range(nz):
            for x in range(nx):
                dst[i, y, x] = acc[x]
            if i + r + 1 < nz:
                for x in range(nx):
                    acc[x] += src[i + r + 1, y, x]
            if i - r >= 0:
                for x in range(nx):
                    acc[x] -= src[i - r, y, x]


def box_sum(src: np.ndarray, out: np.ndarray, tmp: np.ndarray, radius: tuple) -> np.ndarray:
    """Sum of ``src`` over the box of half-widths ``radius`` (z, y, x voxels) around each
    voxel, the box cut at the edges (no padding). ``tmp`` is scratch of the same shape."""
    _box_x(src, out, int(radius[2]))
    _box_y(out, tmp, int(radius[1]))
    _box_z(tmp, out, int(radius[0]))
    return out


@njit(**_SERIAL, inline="always")
def _count(i, n, r):
    return min(n - 1, i + r) - max(0, i - r) + 1


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------
@njit(**_SERIAL, inline="always")
def _split(c, n):
    """Base index, fraction and whether ``c`` stayed inside ``[0, n - 1]``."""
    if c <= 0.0:
        return 0, 0.0, c == 0.0
    if c >= n - 1:
        return max(n - 2, 0), 1.0 if n > 1 else 0.0, c == n - 1
    i = int(math.floor(c))  # noqa: RUF046 - an int in numba too
    return i, c - i, True


@njit(**_SERIAL, inline="always")
def _trilinear(img, cz, cy, cx):
    """Value and gradient (per voxel, z, y, x) of ``img`` at a continuous index."""
    nz, ny, nx = img.shape
    iz, fz, inz = _split(cz, nz)
    iy, fy, iny = _split(cy, ny)
    ix, fx, inx = _split(cx, nx)
    jz, jy, jx = min(iz + 1, nz - 1), min(iy + 1, ny - 1), min(ix + 1, nx - 1)
    v000 = img[iz, iy, ix]
    v001 = img[iz, iy, jx]
    v010 = img[iz, jy, ix]
    v011 = img[iz, jy, jx]
    v100 = img[jz, iy, ix]
    v101 = img[jz, iy, jx]
    v110 = img[jz, jy, ix]
    v111 = img[jz, jy, jx]
    a00 = v000 + fx * (v001 - v000)
    a01 = v010 + fx * (v011 - v010)
    a10 = v100 + fx * (v101 - v100)
    a11 = v110 + fx * (v111 - v110)
    b0 = a00 + fy * (a01 - a00)
    b1 = a10 + fy * (a11 - a10)
    value = b0 + fz * (b1 - b0)
    gz = (b1 - b0) if inz else 0.0
    gy = ((a01 - a00) + fz * ((a11 - a10) - (a01 - a00))) if iny else 0.0
    d0 = v001 - v000 + fy * (v011 - v010 - v001 + v000)
    d1 = v101 - v100 + fy * (v111 - v110 - v101 + v100)
    gx = (d0 + fz * (d1 - d0)) if inx else 0.0
    return value, gz, gy, gx


@njit(**_SERIAL, inline="always")
def _sample3(u, cz, cy, cx):
    """The three components of field ``u`` at a continuous index (edge values outside)."""
    nz, ny, nx = u.shape[1:]
    iz, fz, _ = _split(cz, nz)
    iy, fy, _ = _split(cy, ny)
    ix, fx, _ = _split(cx, nx)
    jz, jy, jx = min(iz + 1, nz - 1), min(iy + 1, ny - 1), min(ix + 1, nx - 1)
    w000 = (1 - fz) * (1 - fy) * (1 - fx)
    w001 = (1 - fz) * (1 - fy) * fx
    w010 = (1 - fz) * fy * (1 - fx)
    w011 = (1 - fz) * fy * fx
    w100 = fz * (1 - fy) * (1 - fx)
    w101 = fz * (1 - fy) * fx
    w110 = fz * fy * (1 - fx)
    w111 = fz * fy * fx
    out0 = 0.0
    out1 = 0.0
    out2 = 0.0
    for c in range(3):
        v = (w000 * u[c, iz, iy, ix] + w001 * u[c, iz, iy, jx] + w010 * u[c, iz, jy, ix]
             + w011 * u[c, iz, jy, jx] + w100 * u[c, jz, iy, ix] + w101 * u[c, jz, iy, jx]
             + w110 * u[c, jz, jy, ix] + w111 * u[c, jz, jy, jx])
        if c == 0:
            out0 = v
        elif c == 1:
            out1 = v
        else:
            out2 = v
    return out0, out1, out2


@njit(**_OPTS)
def warp_with_gradient(img, u, spacing, out, grad):
    """``out(x) = img(x + u(x))`` and its derivative with respect to ``u`` (per physical
    unit, along the grid axes) into ``grad`` (3, z, y, x); ``u`` in physical units."""
    nz, ny, nx = out.shape
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                v, gz, gy, gx = _trilinear(img, z + u[0, z, y, x] / s0, y + u[1, z, y, x] / s1,
                                           x + u[2, z, y, x] / s2)
                out[z, y, x] = v
                grad[0, z, y, x] = gz / s0
                grad[1, z, y, x] = gy / s1
                grad[2, z, y, x] = gx / s2


@njit(**_OPTS)
def central_gradient(img, spacing, grad):
    """Central differences of ``img`` per physical unit (one-sided at the edges)."""
    nz, ny, nx = img.shape
    for z in prange(nz):
        z0, z1 = max(z - 1, 0), min(z + 1, nz - 1)
        for y in range(ny):
            y0, y1 = max(y - 1, 0), min(y + 1, ny - 1)
            for x in range(nx):
                x0, x1 = max(x - 1, 0), min(x + 1, nx - 1)
                grad[0, z, y, x] = ((img[z1, y, x] - img[z0, y, x]) / (max(z1 - z0, 1)
                                                                      * spacing[0]))
                grad[1, z, y, x] = ((img[z, y1, x] - img[z, y0, x]) / (max(y1 - y0, 1)
                                                                      * spacing[1]))
                grad[2, z, y, x] = ((img[z, y, x1] - img[z, y, x0]) / (max(x1 - x0, 1)
                                                                      * spacing[2]))


@njit(**_OPTS)
def warp_with_sampled_gradient(img, gimg, u, spacing, out, grad):
    """``out(x) = img(x + u(x))`` and ``grad(x) = gimg(x + u(x))`` (a gradient image
    sampled at the same points)."""
    nz, ny, nx = out.shape
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                cz = z + u[0, z, y, x] / s0
                cy = y + u[1, z, y, x] / s1
                cx = x + u[2, z, y, x] / s2
                v, _, _, _ = _trilinear(img, cz, cy, cx)
                out[z, y, x] = v
                a, b, c = _sample3(gimg, cz, cy, cx)
                grad[0, z, y, x] = a
                grad[1, z, y, x] = b
                grad[2, z, y, x] = c


@njit(**_OPTS)
def warp_image(img, u, spacing, out):
    """``out(x) = img(x + u(x))`` (trilinear, edge values outside)."""
    nz, ny, nx = out.shape
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                v, _, _, _ = _trilinear(img, z + u[0, z, y, x] / s0, y + u[1, z, y, x] / s1,
                                        x + u[2, z, y, x] / s2)
                out[z, y, x] = v


@njit(**_OPTS)
def compose(u, v, spacing, out):
    """``out(x) = v(x) + u(x + v(x))``: the map ``x + u`` after ``x + v``."""
    nz, ny, nx = out.shape[1:]
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                a = v[0, z, y, x]
                b = v[1, z, y, x]
                c = v[2, z, y, x]
                p, q, r = _sample3(u, z + a / s0, y + b / s1, x + c / s2)
                out[0, z, y, x] = a + p
                out[1, z, y, x] = b + q
                out[2, z, y, x] = c + r


@njit(**_OPTS)
def invert_step(u, w, spacing, out):
    """One fixed-point step towards the inverse of ``x + u``: ``out(y) = -u(y + w(y))``."""
    nz, ny, nx = out.shape[1:]
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                p, q, r = _sample3(u, z + w[0, z, y, x] / s0, y + w[1, z, y, x] / s1,
                                   x + w[2, z, y, x] / s2)
                out[0, z, y, x] = -p
                out[1, z, y, x] = -q
                out[2, z, y, x] = -r


@njit(**_OPTS)
def upsample(u, out, ratio):
    """``u`` resampled (trilinear) onto a finer grid whose voxel ``j`` sits at ``u``'s
    continuous index ``j * ratio`` (per axis)."""
    nz, ny, nx = out.shape[1:]
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                p, q, r = _sample3(u, z * ratio[0], y * ratio[1], x * ratio[2])
                out[0, z, y, x] = p
                out[1, z, y, x] = q
                out[2, z, y, x] = r


# ---------------------------------------------------------------------------
# Gaussian smoothing (separable, truncated, edge values extended)
# ---------------------------------------------------------------------------
@njit(**_OPTS)
def _conv_x(src, dst, w):
    nz, ny, nx = src.shape
    h = (len(w) - 1) // 2
    for z in prange(nz):
        # the row with its edge values repeated h times each side, then one tap at a time
        # across the whole row (vectorised; the sums in the same order as tap by tap per
        # voxel, so the result is the same bit for bit)
        row = np.empty(nx + 2 * h, dtype=np.float32)
        acc = np.empty(nx, dtype=np.float64)
        for y in range(ny):
            for x in range(nx):
                row[x + h] = src[z, y, x]
            for k in range(h):
                row[k] = src[z, y, 0]
                row[nx + h + k] = src[z, y, nx - 1]
            acc[:] = 0.0
            for k in range(len(w)):
                wk = w[k]
                for x in range(nx):
                    acc[x] += wk * row[x + k]
            for x in range(nx):
                dst[z, y, x] = acc[x]


@njit(**_OPTS)
def _conv_y(src, dst, w):
    nz, ny, nx = src.shape
    h = (len(w) - 1) // 2
    for z in prange(nz):
        acc = np.empty(nx, dtype=np.float64)
        for y in range(ny):
            acc[:] = 0.0
            for k in range(len(w)):
                j = min(max(y + k - h, 0), ny - 1)
                wk = w[k]
                for x in range(nx):
                    acc[x] += wk * src[z, j, x]
            for x in range(nx):
                dst[z, y, x] = acc[x]


@njit(**_OPTS)
def _conv_z(src, dst, w):
    nz, ny, nx = src.shape
    h = (len(w) - 1) // 2
    for y in prange(ny):
        acc = np.empty(nx, dtype=np.float64)
        for z in range(nz):
            acc[:] = 0.0
            for k in range(len(w)):
                j = min(max(z + k - h, 0), nz - 1)
                wk = w[k]
                for x in range(nx):
                    acc[x] += wk * src[j, y, x]
            for x in range(nx):
                dst[z, y, x] = acc[x]


def gaussian_weights(sigma: float) -> np.ndarray | None:
    """Normalised Gaussian taps of ``sigma`` voxels, cut at 3σ (``None`` for σ ≈ 0)."""
    if sigma < 0.05:
        return None
    h = max(1, math.ceil(3.0 * sigma))
    t = np.arange(-h, h + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def smooth(img: np.ndarray, weights: tuple, tmp: np.ndarray) -> np.ndarray:
    """Smooth a (z, y, x) image in place with per-axis taps (``None``: that axis is left
    alone); ``tmp`` is scratch of the same shape."""
    wz, wy, wx = weights
    if wx is not None:
        _conv_x(img, tmp, wx)
        img[...] = tmp
    if wy is not None:
        _conv_y(img, tmp, wy)
        img[...] = tmp
    if wz is not None:
        _conv_z(img, tmp, wz)
        img[...] = tmp
    return img


# ---------------------------------------------------------------------------
# metrics: forces (the descent direction of each metric) and values
# ---------------------------------------------------------------------------
@njit(**_OPTS)
def products(f, w, ww, fw):
    nz, ny, nx = f.shape
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                a = w[z, y, x]
                ww[z, y, x] = a * a
                fw[z, y, x] = f[z, y, x] * a


@njit(**_OPTS)
def ncc_terms(sf, sff, sw, sww, sfw, radius, weight, per_slice, ta, tb, tc, td):
    """Per window centre ``c`` (box sums ``s*`` over its window of ``n`` voxels): the
    local correlation ``cc = sfw'² / (sff' sww')`` of the centred sums, summed per slice
    into ``per_slice`` (weighted by ``weight``, e.g. a mask; or all ones), and the four
    terms whose box sums give the correlation's exact derivative with respect to the
    moving image: ``α = 2 sfw'/(sff' sww')``, ``α μf``, ``β = α sfw'/sww'``, ``β μw``."""
    nz, ny, nx = sf.shape
    rz, ry, rx = radius[0], radius[1], radius[2]
    for z in prange(nz):
        cz = _count(z, nz, rz)
        total = 0.0
        for y in range(ny):
            cy = _count(y, ny, ry)
            for x in range(nx):
                n = cz * cy * _count(x, nx, rx)
                mf = sf[z, y, x] / n
                mw = sw[z, y, x] / n
                vf = sff[z, y, x] - n * mf * mf
                vw = sww[z, y, x] - n * mw * mw
                cfw = sfw[z, y, x] - n * mf * mw
                if vf > 1e-5 * n and vw > 1e-5 * n:
                    den = vf * vw
                    alpha = 2.0 * cfw / den
                    beta = alpha * cfw / vw
                    total += weight[z, y, x] * (cfw * cfw / den)
                else:
                    alpha = 0.0
                    beta = 0.0
                ta[z, y, x] = alpha
                tb[z, y, x] = alpha * mf
                tc[z, y, x] = beta
                td[z, y, x] = beta * mw
        per_slice[z] = total


@njit(**_OPTS)
def ncc_force(f, w, grad, ba, bb, bc, bd, mask, out):
    """``out = ∂(Σ cc)/∂w · ∇w`` from the box sums of the four terms, times ``mask``."""
    nz, ny, nx = f.shape
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                m = mask[z, y, x]
                if m == 0.0:
                    out[0, z, y, x] = 0.0
                    out[1, z, y, x] = 0.0
                    out[2, z, y, x] = 0.0
                    continue
                d = m * (f[z, y, x] * ba[z, y, x] - bb[z, y, x] - w[z, y, x] * bc[z, y, x]
                         + bd[z, y, x])
                out[0, z, y, x] = d * grad[0, z, y, x]
                out[1, z, y, x] = d * grad[1, z, y, x]
                out[2, z, y, x] = d * grad[2, z, y, x]


@njit(**_OPTS)
def ssd_force(f, w, grad, mask, out, per_slice):
    """``out = -(w - f) ∇w · mask`` (the descent direction of the sum of squared
    differences); the masked sum of squares per slice into ``per_slice``."""
    nz, ny, nx = f.shape
    for z in prange(nz):
        total = 0.0
        for y in range(ny):
            for x in range(nx):
                m = mask[z, y, x]
                d = w[z, y, x] - f[z, y, x]
                total += m * d * d
                d = -m * d
                out[0, z, y, x] = d * grad[0, z, y, x]
                out[1, z, y, x] = d * grad[1, z, y, x]
                out[2, z, y, x] = d * grad[2, z, y, x]
        per_slice[z] = total


@njit(**_OPTS)
def max_norm(v, spacing, per_slice):
    """Largest length per slice of ``v`` in voxels (``|v / spacing|``)."""
    nz, ny, nx = v.shape[1:]
    s0, s1, s2 = spacing[0], spacing[1], spacing[2]
    for z in prange(nz):
        best = 0.0
        for y in range(ny):
            for x in range(nx):
                a = v[0, z, y, x] / s0
                b = v[1, z, y, x] / s1
                c = v[2, z, y, x] / s2
                n = a * a + b * b + c * c
                if n > best:
                    best = n
        per_slice[z] = math.sqrt(best)
