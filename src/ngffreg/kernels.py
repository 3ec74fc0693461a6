"""Compiled (numba) kernels for :func:`ngffreg.warp.warp`: one output chunk's fixed points
pushed through a chain of linear maps and displacement fields to moving continuous
indices, and nearest / trilinear interpolation of the moving region held in memory.

They follow the reference (numpy / scipy) path operation for operation:

- grid points: ``frame_origin + spacing * index``, then the direction (as
  :meth:`ngffreg.image.Grid.points`);
- a linear step is ``((p0 m[:,0] + p1 m[:,1]) + p2 m[:,2]) + offset`` in that order, as
  :func:`ngffreg.image.apply_linear` (so linear chains give bitwise the same points);
- a displacement field step: continuous index ``(Dᵀ p - frame_origin) / spacing``; its
  ``outside`` rule (``zero``: ITK's ``[-0.5, n - 0.5)`` with edge values repeated in the
  half-voxel band; ``nearest``; ``nan``), trilinear interpolation with edge clamping done
  along z, then y, then x, and ``p + d``, all in float64;
- the moving image: inside while every continuous index is in ``[-0.5, n - 0.5)``, else
  ``fill``; nearest neighbour rounds half up (``floor(c + 0.5)``) and keeps the value,
  linear clamps neighbours to the edge and, for an integer output, rounds half to even
  and clips.

Each chunk takes one pass: the moving region comes from the mapped points on the chunk's
faces, and every point is pushed through the chain and interpolated at once, no per-point
arrays made; a point whose neighbours fall outside that region (a fold) sends the chunk
to two passes (an ``(m, 3)`` float64 buffer of continuous indices, then the exact
region). A displacement field that comes first, on an axis-aligned grid, is interpolated
separably. The kernels release the GIL (``nogil``), so dask's threads run them side by
side, and are cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numba.core.errors import NumbaError  # noqa: F401 - warp falls back on it

#: ``outside`` policies of a displacement field, as the kernel codes them.
POLICY_CODES = {"zero": 0, "nearest": 1, "nan": 2}
#: Step kinds of a chain.
LINEAR, FIELD = 0, 1

def _options() -> dict:
    """numba options: no GIL, cached, numpy's error model, and no reference counting
    (``_nrt=False``: the kernels allocate nothing, and counting references to the arrays
    passed to the helpers costs 20× the arithmetic per point). Dropped if this numba
    refuses it."""
    opts = {"nogil": True, "cache": True, "error_model": "numpy", "_nrt": False}
    try:
        njit(**{**opts, "cache": False})(lambda a: a[0])(np.zeros(1))
    except Exception:  # pragma: no cover - a numba without the private flag
        del opts["_nrt"]
    return opts


_OPTS = _options()
_INLINE = {**_OPTS, "inline": "always"}


@njit(**_OPTS)
def _linear(p0, p1, p2, m, s):
    """``apply_linear`` on one point with the matrix ``m[s]`` (3×4): row by row,
    ``((p0 m0 + p1 m1) + p2 m2) + m3``. (Indexing ``m[s, r, c]``, never a view: views
    cost a reference count per point.)"""
    q0 = p0 * m[s, 0, 0]
    q0 += p1 * m[s, 0, 1]
    q0 += p2 * m[s, 0, 2]
    q0 += m[s, 0, 3]
    q1 = p0 * m[s, 1, 0]
    q1 += p1 * m[s, 1, 1]
    q1 += p2 * m[s, 1, 2]
    q1 += m[s, 1, 3]
    q2 = p0 * m[s, 2, 0]
    q2 += p1 * m[s, 2, 1]
    q2 += p2 * m[s, 2, 2]
    q2 += m[s, 2, 3]
    return q0, q1, q2


@njit(**_OPTS)
def _rotate(p0, p1, p2, d, f):
    """``apply_linear(p, d[f])`` without an offset (``d[f]`` is 3×3)."""
    q0 = p0 * d[f, 0, 0]
    q0 += p1 * d[f, 0, 1]
    q0 += p2 * d[f, 0, 2]
    q1 = p0 * d[f, 1, 0]
    q1 += p1 * d[f, 1, 1]
    q1 += p2 * d[f, 1, 2]
    q2 = p0 * d[f, 2, 0]
    q2 += p1 * d[f, 2, 1]
    q2 += p2 * d[f, 2, 2]
    return q0, q1, q2


@njit(**_INLINE)
def _index(p0, p1, p2, f, aligned, dt, fo, sp):
    """Continuous index of a physical point in grid ``f``: ``(Dᵀ p - frame_origin) /
    spacing`` (``dt[f]`` is Dᵀ; on an axis-aligned grid the rotation is skipped, as the
    reference skips it)."""
    if not aligned[f]:
        p0, p1, p2 = _rotate(p0, p1, p2, dt, f)
    if sp[f, 3] != 0.0:  # spacings are powers of two: times the exact reciprocal
        return (p0 - fo[f, 0]) * sp[f, 4], (p1 - fo[f, 1]) * sp[f, 5], (p2 - fo[f, 2]) * sp[f, 6]
    return (p0 - fo[f, 0]) / sp[f, 0], (p1 - fo[f, 1]) / sp[f, 1], (p2 - fo[f, 2]) / sp[f, 2]


@njit(**_OPTS)
def _grid_point(i, j, k, gfo, gsp, gd, galigned):
    p0 = gfo[0] + gsp[0] * i
    p1 = gfo[1] + gsp[1] * j
    p2 = gfo[2] + gsp[2] * k
    if not galigned[0]:
        p0, p1, p2 = _rotate(p0, p1, p2, gd, 0)
    return p0, p1, p2


@njit(**_INLINE)
def _clampi(v, n):
    if v < 0:
        return 0
    if v > n - 1:
        return n - 1
    return v


@njit(**_INLINE)
def _axis(c, n, lo):
    """Lower and upper local node and the weight on the upper one, edges clamped."""
    f = math.floor(c)
    w = c - f
    i0 = int(f)
    return _clampi(i0, n) - lo, _clampi(i0 + 1, n) - lo, w


@njit(**_OPTS)
def _field_value(data, base, rz, ry, rx, z0, z1, wz, y0, y1, wy, x0, x1, wx):
    """One component of a field region (flat (rz, ry, rx) from ``base``), linear along
    z, then y, then x (as the reference's separable path)."""
    a = base + z0 * ry * rx
    b = base + z1 * ry * rx
    v00 = data[a + y0 * rx + x0] * (1.0 - wz) + data[b + y0 * rx + x0] * wz
    v01 = data[a + y0 * rx + x1] * (1.0 - wz) + data[b + y0 * rx + x1] * wz
    v10 = data[a + y1 * rx + x0] * (1.0 - wz) + data[b + y1 * rx + x0] * wz
    v11 = data[a + y1 * rx + x1] * (1.0 - wz) + data[b + y1 * rx + x1] * wz
    v0 = v00 * (1.0 - wy) + v10 * wy
    v1 = v01 * (1.0 - wy) + v11 * wy
    return v0 * (1.0 - wx) + v1 * wx


@njit(**_INLINE)
def _inside(c0, c1, c2, n, f):
    """ITK's rule: every continuous index in ``[-0.5, n - 0.5)`` (NaN is outside)."""
    return (c0 >= -0.5 and c0 < n[f, 0] - 0.5 and c1 >= -0.5 and c1 < n[f, 1] - 0.5
            and c2 >= -0.5 and c2 < n[f, 2] - 0.5)


@njit(**_OPTS)
def _apply_field(p0, p1, p2, f, faligned, fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy,
                 fdata):
    c0, c1, c2 = _index(p0, p1, p2, f, faligned, fdt, ffo, fsp)
    policy = fpolicy[f]
    if policy != 1 and not _inside(c0, c1, c2, fn, f):
        if policy == 2:
            return math.nan, math.nan, math.nan
        return p0, p1, p2  # p + 0
    if math.isnan(c0) or math.isnan(c1) or math.isnan(c2):
        return math.nan, math.nan, math.nan
    z0, z1, wz = _axis(c0, fn[f, 0], flo[f, 0])
    y0, y1, wy = _axis(c1, fn[f, 1], flo[f, 1])
    x0, x1, wx = _axis(c2, fn[f, 2], flo[f, 2])
    rz, ry, rx = fshape[f, 0], fshape[f, 1], fshape[f, 2]
    size = rz * ry * rx
    off = foff[f]
    d0 = _field_value(fdata, off, rz, ry, rx, z0, z1, wz, y0, y1, wy, x0, x1, wx)
    d1 = _field_value(fdata, off + size, rz, ry, rx, z0, z1, wz, y0, y1, wy, x0, x1, wx)
    d2 = _field_value(fdata, off + 2 * size, rz, ry, rx, z0, z1, wz, y0, y1, wy, x0, x1, wx)
    return p0 + d0, p1 + d1, p2 + d2


@njit(**_OPTS)
def _run(i, j, k, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids, faligned, fdt, ffo,
         fsp, fn, flo, fshape, foff, fpolicy, fdata):
    p0, p1, p2 = _grid_point(i, j, k, gfo, gsp, gd, galigned)
    return _steps(p0, p1, p2, 0, nsteps, kinds, mats, fids, faligned, fdt, ffo, fsp, fn, flo,
                  fshape, foff, fpolicy, fdata)


@njit(**_OPTS)
def _steps(p0, p1, p2, first, nsteps, kinds, mats, fids, faligned, fdt, ffo, fsp, fn, flo,
           fshape, foff, fpolicy, fdata):
    for s in range(first, nsteps):
        if kinds[s] == 0:
            p0, p1, p2 = _linear(p0, p1, p2, mats, s)
        else:
            p0, p1, p2 = _apply_field(p0, p1, p2, fids[s], faligned, fdt, ffo, fsp, fn, flo,
                                      fshape, foff, fpolicy, fdata)
    return p0, p1, p2


@njit(**_OPTS)
def field_bounds(start, shape, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids, faligned,
                 fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy, fdata):
    """Min and max (3 each) of the continuous indices in field ``fids[nsteps]`` of the
    chunk's points after ``nsteps`` steps, over the points that field reads (inside it,
    or all for ``nearest``; NaN points skipped), and how many there were."""
    f = fids[nsteps]
    lo0 = lo1 = lo2 = np.inf
    hi0 = hi1 = hi2 = -np.inf
    count = 0
    for i in range(start[0], start[0] + shape[0]):
        for j in range(start[1], start[1] + shape[1]):
            for k in range(start[2], start[2] + shape[2]):
                p0, p1, p2 = _run(i, j, k, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids,
                                  faligned, fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy,
                                  fdata)
                c0, c1, c2 = _index(p0, p1, p2, f, faligned, fdt, ffo, fsp)
                if fpolicy[f] != 1:
                    if not _inside(c0, c1, c2, fn, f):
                        continue
                elif math.isnan(c0) or math.isnan(c1) or math.isnan(c2):
                    continue
                count += 1
                lo0, lo1, lo2 = min(lo0, c0), min(lo1, c1), min(lo2, c2)
                hi0, hi1, hi2 = max(hi0, c0), max(hi1, c1), max(hi2, c2)
    return lo0, lo1, lo2, hi0, hi1, hi2, count


#: What the moving-index kernels do with each point's continuous index.
STORE, NEAREST, LINEAR_FLOAT, LINEAR_INT = 0, 1, 2, 3


@njit(**_INLINE)
def _trilinear(region, z0, z1, wz, y0, y1, wy, x0, x1, wx):
    v00 = float(region[z0, y0, x0]) * (1.0 - wz) + float(region[z1, y0, x0]) * wz
    v01 = float(region[z0, y0, x1]) * (1.0 - wz) + float(region[z1, y0, x1]) * wz
    v10 = float(region[z0, y1, x0]) * (1.0 - wz) + float(region[z1, y1, x0]) * wz
    v11 = float(region[z0, y1, x1]) * (1.0 - wz) + float(region[z1, y1, x1]) * wz
    v0 = v00 * (1.0 - wy) + v10 * wy
    v1 = v01 * (1.0 - wy) + v11 * wy
    return v0 * (1.0 - wx) + v1 * wx


@njit(**_INLINE)
def _emit(q, c0, c1, c2, ok, mn, region, rlo, out, fill, mode, vmin, vmax):
    """Write the moving image's value at continuous index ``(c0, c1, c2)`` into ``out[q]``
    (``fill`` outside); ``region`` holds the voxels ``[rlo, rlo + region.shape)``. Returns
    False when the point needs a voxel the region does not hold."""
    if not ok:
        out[q] = fill
        return True
    if mode == NEAREST:  # round half up, as ITK
        i = _clampi(math.floor(c0 + 0.5), mn[0, 0]) - rlo[0]
        j = _clampi(math.floor(c1 + 0.5), mn[0, 1]) - rlo[1]
        k = _clampi(math.floor(c2 + 0.5), mn[0, 2]) - rlo[2]
        if (i < 0 or j < 0 or k < 0 or i >= region.shape[0] or j >= region.shape[1]
                or k >= region.shape[2]):
            return False
        out[q] = region[i, j, k]
        return True
    z0, z1, wz = _axis(c0, mn[0, 0], rlo[0])
    y0, y1, wy = _axis(c1, mn[0, 1], rlo[1])
    x0, x1, wx = _axis(c2, mn[0, 2], rlo[2])
    if (z0 < 0 or y0 < 0 or x0 < 0 or z1 >= region.shape[0] or y1 >= region.shape[1]
            or x1 >= region.shape[2]):
        return False
    v = _trilinear(region, z0, z1, wz, y0, y1, wy, x0, x1, wx)
    if mode == LINEAR_INT:  # round half to even and clip, as np.clip(np.rint(v))
        v = np.rint(v)
        if v < vmin:
            v = vmin
        elif v > vmax:
            v = vmax
    out[q] = v
    return True


@njit(**_OPTS)
def moving_indices(start, shape, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids, faligned,
                   fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy, fdata, maligned, mdt, mfo,
                   msp, mn, cidx, inside, region, rlo, out, fill, mode, vmin, vmax):
    """Push the chunk's points (C order) through the chain to moving continuous indices.

    ``mode`` STORE: fill ``cidx`` (m, 3) and ``inside`` (m,) (ITK's inside test). Other
    modes: interpolate at once into ``out`` (see :func:`_emit`). Returns the min and max
    (3 each) over the inside points, how many there are, and whether a point needed a
    voxel outside ``region`` (then ``out`` is incomplete)."""
    lo0 = lo1 = lo2 = np.inf
    hi0 = hi1 = hi2 = -np.inf
    count = 0
    q = 0
    for i in range(start[0], start[0] + shape[0]):
        for j in range(start[1], start[1] + shape[1]):
            for k in range(start[2], start[2] + shape[2]):
                p0, p1, p2 = _run(i, j, k, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids,
                                  faligned, fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy,
                                  fdata)
                c0, c1, c2 = _index(p0, p1, p2, 0, maligned, mdt, mfo, msp)
                ok = _inside(c0, c1, c2, mn, 0)
                if mode == STORE:
                    cidx[q, 0] = c0
                    cidx[q, 1] = c1
                    cidx[q, 2] = c2
                    inside[q] = ok
                elif not _emit(q, c0, c1, c2, ok, mn, region, rlo, out, fill, mode, vmin, vmax):
                    return lo0, lo1, lo2, hi0, hi1, hi2, count, True
                if ok:
                    count += 1
                    lo0, lo1, lo2 = min(lo0, c0), min(lo1, c1), min(lo2, c2)
                    hi0, hi1, hi2 = max(hi0, c0), max(hi1, c1), max(hi2, c2)
                q += 1
    return lo0, lo1, lo2, hi0, hi1, hi2, count, False


@njit(**_OPTS)
def face_bounds(start, shape, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids, faligned,
                fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy, fdata, maligned, mdt, mfo, msp):
    """Min and max (3 each) of the moving continuous indices of the points on the chunk's
    six faces (all of them, inside or not; NaN skipped), and how many were finite. For a
    map without folds the whole chunk's indices lie within; the interpolating kernels
    check it point by point."""
    lo0 = lo1 = lo2 = np.inf
    hi0 = hi1 = hi2 = -np.inf
    count = 0
    last0, last1, last2 = start[0] + shape[0] - 1, start[1] + shape[1] - 1, start[2] + shape[2] - 1
    for i in range(start[0], last0 + 1):
        for j in range(start[1], last1 + 1):
            face = i == start[0] or i == last0 or j == start[1] or j == last1
            step = 1 if face else max(last2 - start[2], 1)
            for k in range(start[2], last2 + 1, step):
                p0, p1, p2 = _run(i, j, k, nsteps, gfo, gsp, gd, galigned, kinds, mats, fids,
                                  faligned, fdt, ffo, fsp, fn, flo, fshape, foff, fpolicy,
                                  fdata)
                c0, c1, c2 = _index(p0, p1, p2, 0, maligned, mdt, mfo, msp)
                if math.isnan(c0) or math.isnan(c1) or math.isnan(c2):
                    continue
                count += 1
                lo0, lo1, lo2 = min(lo0, c0), min(lo1, c1), min(lo2, c2)
                hi0, hi1, hi2 = max(hi0, c0), max(hi1, c1), max(hi2, c2)
    return lo0, lo1, lo2, hi0, hi1, hi2, count


@njit(**_OPTS)
def interpolate(cidx, inside, mn, region, rlo, out, fill, mode, vmin, vmax):
    """:func:`_emit` for stored continuous indices (``mode`` not STORE); False when a
    point needed a voxel outside ``region``."""
    for q in range(cidx.shape[0]):
        if not _emit(q, cidx[q, 0], cidx[q, 1], cidx[q, 2], inside[q], mn, region, rlo, out,
                     fill, mode, vmin, vmax):
            return False
    return True


@njit(**_INLINE)
def _axis_index(g, gfo, gsp, f, ffo, fsp, axis):
    """Field ``f``'s continuous index along ``axis`` of grid node ``g`` (axis-aligned grid
    and field: the same arithmetic as :func:`_index` on the whole point)."""
    c = gfo[axis] + gsp[axis] * g - ffo[f, axis]
    if fsp[f, 3] != 0.0:
        return c * fsp[f, 4 + axis]
    return c / fsp[f, axis]


@njit(**_OPTS)
def _axis_bounds(start, shape, gfo, gsp, ffo, fsp, fn, fpolicy, a):
    lo = np.inf
    hi = -np.inf
    m = 0
    for g in range(start[a], start[a] + shape[a]):
        c = _axis_index(g, gfo, gsp, 0, ffo, fsp, a)
        if fpolicy[0] != 1 and not (c >= -0.5 and c < fn[0, a] - 0.5):
            continue
        m += 1
        lo = min(lo, c)
        hi = max(hi, c)
    return lo, hi, m


@njit(**_OPTS)
def field_bounds_first(start, shape, gfo, gsp, ffo, fsp, fn, fpolicy):
    """:func:`field_bounds` for a first step that is a field, on an axis-aligned grid and
    field: per axis (the inside points are a product of per-axis sets)."""
    lo0, hi0, m0 = _axis_bounds(start, shape, gfo, gsp, ffo, fsp, fn, fpolicy, 0)
    lo1, hi1, m1 = _axis_bounds(start, shape, gfo, gsp, ffo, fsp, fn, fpolicy, 1)
    lo2, hi2, m2 = _axis_bounds(start, shape, gfo, gsp, ffo, fsp, fn, fpolicy, 2)
    count = m0 * m1 * m2
    if count == 0:
        return np.inf, np.inf, np.inf, -np.inf, -np.inf, -np.inf, 0
    return lo0, lo1, lo2, hi0, hi1, hi2, count


@njit(**_OPTS)
def moving_indices_first(start, shape, nsteps, gfo, gsp, kinds, mats, fids, faligned, fdt,
                         ffo, fsp, fn, flo, fshape, foff, fpolicy, fdata, maligned, mdt, mfo,
                         msp, mn, cidx, inside, region, rlo, out, fill, mode, vmin, vmax, row,
                         xlo, xhi, xw, xin):
    """:func:`moving_indices` when the first step is a field and the grid and that field
    are axis-aligned: separable. Per row (i, j) the field is interpolated along z then y
    at every x node of its region (``row``, (3, rx)); per point only along x, from the
    per-column ``xlo``, ``xhi``, ``xw``, ``xin``. The same operations in the same order as
    the general kernel, so the same values."""
    lo0 = lo1 = lo2 = np.inf
    hi0 = hi1 = hi2 = -np.inf
    count = 0
    q = 0
    policy = fpolicy[0]
    nan = math.nan
    rz, ry, rx = fshape[0, 0], fshape[0, 1], fshape[0, 2]
    size = rz * ry * rx
    for kk in range(shape[2]):
        c = _axis_index(start[2] + kk, gfo, gsp, 0, ffo, fsp, 2)
        xin[kk] = policy == 1 or (c >= -0.5 and c < fn[0, 2] - 0.5)
        a, b, w = _axis(c, fn[0, 2], flo[0, 2])
        xlo[kk] = a
        xhi[kk] = b
        xw[kk] = w
    for i in range(start[0], start[0] + shape[0]):
        cz = _axis_index(i, gfo, gsp, 0, ffo, fsp, 0)
        zin = policy == 1 or (cz >= -0.5 and cz < fn[0, 0] - 0.5)
        z0, z1, wz = _axis(cz, fn[0, 0], flo[0, 0])
        p0 = gfo[0] + gsp[0] * i
        for j in range(start[1], start[1] + shape[1]):
            cy = _axis_index(j, gfo, gsp, 0, ffo, fsp, 1)
            zyin = zin and (policy == 1 or (cy >= -0.5 and cy < fn[0, 1] - 0.5))
            p1 = gfo[1] + gsp[1] * j
            if zyin:
                y0, y1, wy = _axis(cy, fn[0, 1], flo[0, 1])
                for comp in range(3):
                    base = foff[0] + comp * size
                    a = base + z0 * ry * rx
                    b = base + z1 * ry * rx
                    for x in range(rx):
                        v0 = fdata[a + y0 * rx + x] * (1.0 - wz) + fdata[b + y0 * rx + x] * wz
                        v1 = fdata[a + y1 * rx + x] * (1.0 - wz) + fdata[b + y1 * rx + x] * wz
                        row[comp, x] = v0 * (1.0 - wy) + v1 * wy
            for kk in range(shape[2]):
                p2 = gfo[2] + gsp[2] * (start[2] + kk)
                if zyin and xin[kk]:
                    x0, x1, wx = xlo[kk], xhi[kk], xw[kk]
                    r0 = p0 + (row[0, x0] * (1.0 - wx) + row[0, x1] * wx)
                    r1 = p1 + (row[1, x0] * (1.0 - wx) + row[1, x1] * wx)
                    r2 = p2 + (row[2, x0] * (1.0 - wx) + row[2, x1] * wx)
                elif policy == 2:
                    r0 = r1 = r2 = nan
                else:
                    r0, r1, r2 = p0, p1, p2
                r0, r1, r2 = _steps(r0, r1, r2, 1, nsteps, kinds, mats, fids, faligned, fdt,
                                    ffo, fsp, fn, flo, fshape, foff, fpolicy, fdata)
                c0, c1, c2 = _index(r0, r1, r2, 0, maligned, mdt, mfo, msp)
                ok = _inside(c0, c1, c2, mn, 0)
                if mode == STORE:
                    cidx[q, 0] = c0
                    cidx[q, 1] = c1
                    cidx[q, 2] = c2
                    inside[q] = ok
                elif not _emit(q, c0, c1, c2, ok, mn, region, rlo, out, fill, mode, vmin, vmax):
                    return lo0, lo1, lo2, hi0, hi1, hi2, count, True
                if ok:
                    count += 1
                    lo0, lo1, lo2 = min(lo0, c0), min(lo1, c1), min(lo2, c2)
                    hi0, hi1, hi2 = max(hi0, c0), max(hi1, c1), max(hi2, c2)
                q += 1
    return lo0, lo1, lo2, hi0, hi1, hi2, count, False
