"""Benchmark: interpolation kernels for the chunked ``warp`` (one output chunk's worth).

One output chunk (128³ = 2,097,152 points by default) of a fixed grid is mapped through a
smooth, realistic transform (a small rotation + scaling about the chunk's centre, then a
few-voxel sinusoidal displacement field sampled trilinearly from an 8-voxel control grid)
into a moving volume; the moving *region* read for it is the points' bounding box plus
the interpolation footprint (about 140³). On that region and those points, in one run:

- ``scipy.ndimage.map_coordinates`` (order 0 / 1 / 3, ``mode="nearest"``; order 3 with
  ``prefilter=True``, with ``prefilter=False`` on precomputed coefficients, and
  ``spline_filter`` alone), (3, N) float64 continuous indices;
- ITK ``ResampleImageFilter`` (NearestNeighbor / Linear / BSpline-3 interpolators) with a
  ``DisplacementFieldTransform`` defined on the output grid that reproduces exactly the
  same sample positions (and, for scale, with the affine part only), with ITK's own
  threads (all cores) and with ``SetGlobalDefaultNumberOfThreads(1)``; plus the per-point
  ``LinearInterpolateImageFunction`` called from Python;
- numba nearest / trilinear kernels (edge clamping), ``parallel=False`` and ``prange``;
- context: computing the chunk's physical points and pushing them through the affine +
  trilinear field sample (numpy), and reading + decompressing the region from a local
  Zarr v3 array (default codecs; just written, so the page cache is warm).

uint16 and float32 regions hold the same values. Every kernel's output is checked against
scipy's on the same points (max |difference|). Timings are the median of ``--repeats``
runs after a warm-up (numba's compile time is reported separately); ``CPU/wall`` is the
process CPU time over wall time (≈ threads really used).

Usage::

    .venv/bin/python benchmarks/bench_interpolation.py            # ~3-4 min on 2 cores
    .venv/bin/python benchmarks/bench_interpolation.py --chunk 64 --repeats 3   # quick

Results go to ``benchmarks/results/interpolation.json``; a Markdown table is printed.
numba is a dependency of ngffreg now (its kernels in ``ngffreg.kernels`` grew out of
these); the rows are skipped where it does not import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import scipy
from scipy import ndimage

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "interpolation.json"
VOLUME = 256  # moving (and fixed) volume edge, voxels, spacing 1 mm, origin 0
FIELD_STEP = 8.0  # displacement control-grid spacing, mm
MARGIN_LO, MARGIN_HI = 2, 3  # region = floor(bbox) - 2 ... floor(bbox) + 2 (cubic footprint)
INTERIOR = 6  # "interior" points: at least this many voxels from the region's faces


# --------------------------------------------------------------------------- geometry


def make_transform(chunk: int) -> dict:
    """Affine (3° + 2° rotation, 0.97 scaling about the chunk centre) + sinusoidal field."""
    a, b = np.deg2rad(3.0), np.deg2rad(2.0)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    matrix = 0.97 * rz @ ry
    start = (VOLUME - chunk) // 2
    centre = np.full(3, start + (chunk - 1) / 2)
    offset = centre - matrix @ centre + np.array([1.3, -0.7, 2.1])
    nodes = int(np.ceil((VOLUME - 1) / FIELD_STEP)) + 1
    g = np.arange(nodes) * FIELD_STEP
    gz, gy, gx = np.meshgrid(g, g, g, indexing="ij")
    k = 2 * np.pi
    field = np.stack([3.0 * np.sin(k * gx / 97.0),  # (nodes, nodes, nodes, 3) mm: dz, dy, dx
                      2.5 * np.cos(k * gz / 83.0),
                      2.0 * np.sin(k * gy / 71.0 + 0.5)], axis=-1).astype(np.float32)
    return {"start": start, "matrix": matrix, "offset": offset, "field": field, "nodes": nodes,
            "field_flat": np.ascontiguousarray(np.moveaxis(field, -1, 0).reshape(3, -1))}


def chunk_points(tf: dict, chunk: int) -> np.ndarray:
    """The chunk's physical points, (3, N) float64 (fixed grid: spacing 1 mm, origin 0)."""
    axis = np.arange(tf["start"], tf["start"] + chunk, dtype=np.float64)
    p = np.empty((3, chunk, chunk, chunk))
    p[0], p[1], p[2] = axis[:, None, None], axis[None, :, None], axis[None, None, :]
    return p.reshape(3, -1)


def affine(tf: dict, p: np.ndarray) -> np.ndarray:
    """M p + t on (3, N), written out (``M @ p`` calls BLAS, whose threads spin-wait and
    slow down 10x on a busy machine unless OPENBLAS_NUM_THREADS=1)."""
    m, t = tf["matrix"], tf["offset"]
    q = np.empty_like(p)
    for i in range(3):
        q[i] = m[i, 0] * p[0]
        q[i] += m[i, 1] * p[1]
        q[i] += m[i, 2] * p[2]
        q[i] += t[i]
    return q


def trilinear_field(tf: dict, q: np.ndarray) -> np.ndarray:
    """numpy gathers: the field (on its 8 mm grid) at (3, N) points q, edge-clamped."""
    nodes, field = tf["nodes"], tf["field_flat"]
    u = np.clip(q / FIELD_STEP, 0.0, nodes - 1.0)
    i0 = np.minimum(u.astype(np.intp), nodes - 2)
    f = u - i0
    base = (i0[0] * nodes + i0[1]) * nodes + i0[2]
    out = np.zeros_like(q)
    for dz in (0, 1):
        wz = f[0] if dz else 1.0 - f[0]
        for dy in (0, 1):
            wzy = wz * (f[1] if dy else 1.0 - f[1])
            for dx in (0, 1):
                w = wzy * (f[2] if dx else 1.0 - f[2])
                idx = base + (dz * nodes + dy) * nodes + dx
                for c in range(3):
                    out[c] += w * field[c].take(idx)
    return out


def chunk_to_moving(tf: dict, chunk: int) -> np.ndarray:
    """The chunk's points → affine → + field → (3, N) moving continuous indices (numpy)."""
    q = affine(tf, chunk_points(tf, chunk))
    q += trilinear_field(tf, q)
    return q  # moving grid: spacing 1 mm, origin 0, so index == point


def chunk_to_moving_scipy(tf: dict, chunk: int) -> np.ndarray:
    """As :func:`chunk_to_moving`, the field sampled by ``map_coordinates(order=1)`` × 3."""
    q = affine(tf, chunk_points(tf, chunk))
    u = q / FIELD_STEP
    for c in range(3):
        q[c] += ndimage.map_coordinates(tf["field"][..., c], u, order=1, mode="nearest")
    return q


def make_volume(seed: int = 0) -> np.ndarray:
    """256³ uint16 'microscopy-like' volume: smooth texture + a few blobs + noise."""
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.standard_normal((VOLUME,) * 3, dtype=np.float32), 2.5)
    tex *= 700.0 / tex.std()
    tex += 1200.0
    tex += rng.normal(0.0, 40.0, size=tex.shape).astype(np.float32)
    return np.clip(np.rint(tex), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- timing


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    busy0 = _busy_seconds()
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    busy1 = _busy_seconds()
    others = None if busy0 is None or busy1 is None else max(
        0.0, (busy1 - busy0 - sum(cpus)) / sum(walls))
    wall = statistics.median(walls)
    return {"median_s": wall, "min_s": min(walls), "max_s": max(walls),
            "cpu_over_wall": statistics.median(cpus) / wall if wall else None,
            "other_processes_cores": others}


def diff(out: np.ndarray, ref: np.ndarray, interior: np.ndarray | None = None) -> dict:
    """max |out - ref|; for integer outputs ref is first clipped to the dtype's range."""
    out = np.asarray(out)
    if out.dtype.kind in "ui":
        ref = np.clip(ref, np.iinfo(out.dtype).min, np.iinfo(out.dtype).max)
    d = np.abs(out.astype(np.float64).ravel() - ref.ravel())
    res = {"max_abs_diff": float(d.max()), "mismatches": int(np.count_nonzero(d > 1e-3))}
    if interior is not None:
        res["max_abs_diff_interior"] = float(d[interior].max())
    return res


# --------------------------------------------------------------------------- numba kernels


def numba_kernels() -> dict | None:
    try:
        import numba
    except ImportError:
        return None

    def nearest(img, c, out, rnd):
        nz, ny, nx = img.shape
        for i in numba.prange(c.shape[1]):
            z = min(max(c[0, i], 0.0), nz - 1.0)
            y = min(max(c[1, i], 0.0), ny - 1.0)
            x = min(max(c[2, i], 0.0), nx - 1.0)
            out[i] = img[int(z + 0.5), int(y + 0.5), int(x + 0.5)]  # round half up, as scipy

    def linear(img, c, out, rnd):
        nz, ny, nx = img.shape
        for i in numba.prange(c.shape[1]):
            z = min(max(c[0, i], 0.0), nz - 1.0)
            y = min(max(c[1, i], 0.0), ny - 1.0)
            x = min(max(c[2, i], 0.0), nx - 1.0)
            z0, y0, x0 = min(int(z), nz - 2), min(int(y), ny - 2), min(int(x), nx - 2)
            fz, fy, fx = z - z0, y - y0, x - x0
            c00 = img[z0, y0, x0] * (1.0 - fx) + img[z0, y0, x0 + 1] * fx
            c01 = img[z0, y0 + 1, x0] * (1.0 - fx) + img[z0, y0 + 1, x0 + 1] * fx
            c10 = img[z0 + 1, y0, x0] * (1.0 - fx) + img[z0 + 1, y0, x0 + 1] * fx
            c11 = img[z0 + 1, y0 + 1, x0] * (1.0 - fx) + img[z0 + 1, y0 + 1, x0 + 1] * fx
            v = (c00 * (1.0 - fy) + c01 * fy) * (1.0 - fz) + (c10 * (1.0 - fy) + c11 * fy) * fz
            out[i] = v + rnd  # rnd = 0.5 for integer output: round half up, as scipy

    def fused(start, chunk, m, t, field, step, out):  # points → affine → + field, in one pass
        nodes = field.shape[0]
        for i in numba.prange(chunk * chunk * chunk):
            pz = start + i // (chunk * chunk)
            py = start + (i // chunk) % chunk
            px = start + i % chunk
            q0 = m[0, 0] * pz + m[0, 1] * py + m[0, 2] * px + t[0]
            q1 = m[1, 0] * pz + m[1, 1] * py + m[1, 2] * px + t[1]
            q2 = m[2, 0] * pz + m[2, 1] * py + m[2, 2] * px + t[2]
            z = min(max(q0 / step, 0.0), nodes - 1.0)
            y = min(max(q1 / step, 0.0), nodes - 1.0)
            x = min(max(q2 / step, 0.0), nodes - 1.0)
            z0, y0, x0 = min(int(z), nodes - 2), min(int(y), nodes - 2), min(int(x), nodes - 2)
            fz, fy, fx = z - z0, y - y0, x - x0
            d0 = d1 = d2 = 0.0
            for a in range(2):
                wz = fz if a else 1.0 - fz
                for b in range(2):
                    wzy = wz * (fy if b else 1.0 - fy)
                    for c in range(2):
                        w = wzy * (fx if c else 1.0 - fx)
                        d0 += w * field[z0 + a, y0 + b, x0 + c, 0]
                        d1 += w * field[z0 + a, y0 + b, x0 + c, 1]
                        d2 += w * field[z0 + a, y0 + b, x0 + c, 2]
            out[0, i], out[1, i], out[2, i] = q0 + d0, q1 + d1, q2 + d2

    kernels = {("fused_transform", False): numba.njit(parallel=False, nogil=True)(fused),
               ("fused_transform", True): numba.njit(parallel=True, nogil=True)(fused)}
    for name, fn in (("nearest", nearest), ("linear", linear)):
        kernels[name, False] = numba.njit(parallel=False, nogil=True)(fn)
        kernels[name, True] = numba.njit(parallel=True, nogil=True)(fn)
    return {"numba": numba, "kernels": kernels}


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=128, help="output chunk edge (cube)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--itk-points", type=int, default=5000,
                    help="points for the per-point LinearInterpolateImageFunction loop")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    reps, chunk = args.repeats, args.chunk
    n = chunk**3
    rows: list[dict] = []
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    def add(stage, kernel, order, dtype, threads, t, check=None, note=""):
        row = {"stage": stage, "kernel": kernel, "order": order, "dtype": dtype,
               "threads": threads, **t, "mpoints_per_s": n / t["median_s"] / 1e6,
               "check": check, "note": note}
        rows.append(row)
        print(f"  {stage:<8} {kernel:<44} {order!s:<4} {dtype:<8} {threads!s:<3} "
              f"{t['median_s'] * 1e3:9.1f} ms {row['mpoints_per_s']:7.2f} Mpt/s "
              f"cpu/wall {t['cpu_over_wall']:.2f}  {check or ''}", flush=True)

    # ---- data, geometry, context (a): the transform
    print(f"# {n:,} points ({chunk}³ chunk), repeats {reps}, load average "
          f"{load_start[0]:.2f}", flush=True)
    vol16 = make_volume()
    tf = make_transform(chunk)
    t = timed(lambda: chunk_to_moving(tf, chunk), reps)
    coords_abs = chunk_to_moving(tf, chunk)
    lo = np.floor(coords_abs.min(axis=1)).astype(int) - MARGIN_LO
    hi = np.floor(coords_abs.max(axis=1)).astype(int) + MARGIN_HI + 1
    assert (lo >= 0).all() and (hi <= VOLUME).all(), (lo, hi)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    coords = coords_abs - lo[:, None]
    shape = tuple(int(v) for v in hi - lo)
    regions = {"uint16": np.ascontiguousarray(vol16[box])}
    regions["float32"] = regions["uint16"].astype(np.float32)
    inner = np.all((coords >= INTERIOR) & (coords <= (np.array(shape) - 1 - INTERIOR)[:, None]),
                   axis=0)
    print(f"# region {shape} ({np.prod(shape) / 1e6:.2f} Mvoxels), origin {lo.tolist()}, "
          f"interior points {inner.mean():.1%}", flush=True)
    add("context", "numpy: chunk points → affine → trilinear field (gathers)", "-",
        "float64", 1, t, note="(3, N) float64 continuous indices, the kernels' input")
    t = timed(lambda: chunk_to_moving_scipy(tf, chunk), reps)
    add("context", "numpy affine + field by scipy map_coordinates(order=1)×3", "-", "float64",
        1, t, diff(chunk_to_moving_scipy(tf, chunk), coords_abs))

    # ---- context (b): Zarr v3 read of the region
    import zarr

    (HERE / "_work").mkdir(exist_ok=True)
    zarr_info = {}
    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        for dtype in ("uint16", "float32"):
            arr = zarr.create_array(store=str(Path(tmp) / f"{dtype}.zarr"), shape=vol16.shape,
                                    chunks=(128, 128, 128), dtype=dtype)
            arr[...] = vol16.astype(dtype)
            stored = sum(p.stat().st_size for p in Path(tmp, f"{dtype}.zarr").rglob("*")
                         if p.is_file())
            chunks_hit = int(np.prod([(b - 1) // 128 - a // 128 + 1 for a, b in zip(lo, hi,
                                                                                   strict=True)]))
            t = timed(lambda arr=arr: arr[box], reps)
            check = diff(arr[box], regions["uint16"].astype(np.float64))
            zarr_info[dtype] = {"codecs": [type(c).__name__ for c in arr.metadata.codecs],
                                "compression_ratio": vol16.size * np.dtype(dtype).itemsize
                                / stored, "chunks_touched": chunks_hit}
            add("context", f"zarr {zarr.__version__}: read+decompress region "
                f"({chunks_hit} chunks of 128³)", "-", dtype, "auto", t, check,
                note=f"ratio {zarr_info[dtype]['compression_ratio']:.2f}, warm page cache")

    # ---- scipy (single-threaded); references in float64 on the same region values
    ref = {o: ndimage.map_coordinates(regions["float32"], coords, order=o, mode="nearest",
                                      output=np.float64) for o in (0, 1, 3)}
    ref_mirror3 = ndimage.map_coordinates(regions["float32"], coords, order=3, mode="mirror",
                                          output=np.float64)
    for dtype, reg in regions.items():
        for order in (0, 1, 3):
            t = timed(lambda reg=reg, order=order: ndimage.map_coordinates(
                reg, coords, order=order, mode="nearest"), reps)
            out = ndimage.map_coordinates(reg, coords, order=order, mode="nearest")
            add("interp", "scipy map_coordinates" + (" prefilter=True" if order == 3 else ""),
                order, dtype, 1, t, diff(out, ref[order], inner),
                note="output dtype = input dtype (integers rounded half up)")
        t = timed(lambda reg=reg: ndimage.spline_filter(reg, 3, output=np.float64,
                                                        mode="nearest"), reps)
        add("prefilt", "scipy spline_filter(order=3) alone", 3, dtype, 1, t,
            note=f"on the {shape} region, float64 out; per chunk, not per point")

        def padded_filter(reg=reg):  # what map_coordinates(prefilter=True) does first
            return ndimage.spline_filter(np.pad(reg, 12, mode="edge"), 3, output=np.float64,
                                         mode="nearest")

        t = timed(padded_filter, reps)
        add("prefilt", "scipy np.pad(12, edge) + spline_filter", 3, dtype, 1, t,
            note="exactly map_coordinates' prefilter for mode=nearest; per chunk")
        coef, c12 = padded_filter(), coords + 12.0
        t = timed(lambda coef=coef, reg=reg, c12=c12: ndimage.map_coordinates(
            coef, c12, order=3, mode="nearest", prefilter=False, output=reg.dtype), reps)
        add("interp", "scipy map_coordinates prefilter=False (coefs)", 3, dtype, 1, t,
            diff(ndimage.map_coordinates(coef, c12, order=3, mode="nearest", prefilter=False,
                                         output=reg.dtype), ref[3], inner),
            note="interpolation only, on the precomputed float64 coefficients")

    # ---- numba
    nb = numba_kernels()
    numba_info: dict = {"installed": nb is not None}
    if nb is not None:
        numba = nb["numba"]
        numba.set_num_threads(2)
        numba_info.update(version=numba.__version__, compile_s={})
        for par in (False, True):
            kern, out3 = nb["kernels"]["fused_transform", par], np.empty((3, n))
            fargs = (tf["start"], chunk, tf["matrix"], tf["offset"], tf["field"], FIELD_STEP,
                     out3)
            t0 = time.perf_counter()
            kern(*fargs)
            first = time.perf_counter() - t0
            t = timed(lambda k=kern, a=fargs: k(*a), reps)
            numba_info["compile_s"][f"fused_transform/parallel={par}"] = first - t["median_s"]
            add("context", "numba fused: points → affine → trilinear field " +
                ("parallel=True" if par else "parallel=False"), "-", "float64", 2 if par else 1,
                t, diff(out3, coords_abs), note=f"JIT {first - t['median_s']:.2f} s (excluded)")
        for dtype, reg in regions.items():
            rnd = 0.5 if dtype == "uint16" else 0.0
            for (name, par), kern in nb["kernels"].items():
                if name == "fused_transform":
                    continue
                order = 0 if name == "nearest" else 1
                out = np.empty(n, dtype=reg.dtype)
                t0 = time.perf_counter()
                kern(reg, coords, out, rnd)
                first = time.perf_counter() - t0
                t = timed(lambda k=kern, r=reg, o=out, rnd=rnd: k(r, coords, o, rnd), reps)
                compile_s = first - t["median_s"]
                numba_info["compile_s"][f"{name}/{dtype}/parallel={par}"] = compile_s
                add("interp", f"numba {name} " + ("parallel=True (prange)" if par else
                                                   "parallel=False"),
                    order, dtype, 2 if par else 1, t, diff(out, ref[order], inner),
                    note=f"JIT {compile_s:.2f} s (excluded)")
        numba_info["threading_layer"] = numba.threading_layer()

    # ---- ITK
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import itk

    itk_default_threads = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    grid = np.stack(np.meshgrid(*(np.arange(chunk, dtype=np.float64),) * 3, indexing="ij"))
    # ITK is (x, y, z): displacement (dx, dy, dz) = target index - output index, output grid
    disp = np.ascontiguousarray(np.moveaxis((coords - grid.reshape(3, -1)).reshape(
        3, chunk, chunk, chunk)[::-1], 0, -1))
    del grid
    field_img = itk.image_view_from_array(disp, ttype=itk.Image[itk.Vector[itk.D, 3], 3])
    dft = itk.DisplacementFieldTransform[itk.D, 3].New()
    dft.SetDisplacementField(field_img)
    aff = itk.AffineTransform[itk.D, 3].New()  # the affine part only, in region indices (x,y,z)
    m = tf["matrix"][::-1, ::-1]
    start = np.full(3, tf["start"], dtype=np.float64)
    aff.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(m)))
    aff.SetTranslation([float(v) for v in (m @ start + tf["offset"][::-1] - lo[::-1])])

    def itk_interp(name, image_type):
        if name == "nearest":
            return itk.NearestNeighborInterpolateImageFunction[image_type, itk.D].New()
        if name == "linear":
            return itk.LinearInterpolateImageFunction[image_type, itk.D].New()
        pixel = itk.template(image_type)[1][0]
        f = itk.BSplineInterpolateImageFunction[image_type, itk.D, pixel].New()
        f.SetSplineOrder(3)
        return f

    def itk_resample(img, image_type, name, transform):
        f = itk.ResampleImageFilter[image_type, image_type].New()
        f.SetInput(img)
        f.SetTransform(transform)
        f.SetInterpolator(itk_interp(name, image_type))
        f.SetSize([chunk] * 3)
        f.SetOutputSpacing([1.0] * 3)
        f.SetOutputOrigin([0.0] * 3)
        f.SetDefaultPixelValue(0)
        f.Update()
        return itk.array_from_image(f.GetOutput())  # a copy: the filter owns the buffer

    orders = {"nearest": 0, "linear": 1, "bspline": 3}
    itk_cases = [(d, nm) for d in regions for nm in orders] + [("uint16→float32", "bspline")]
    for threads in (itk_default_threads, 1):
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
        for dtype, name in itk_cases:
            if dtype == "uint16→float32":  # cast first: ITK's uint16 B-spline keeps uint16 coefs
                reg16 = regions["uint16"]
                ptype = itk.Image[itk.F, 3]

                def run(reg16=reg16, ptype=ptype, name=name, tr=dft):
                    img = itk.image_view_from_array(reg16.astype(np.float32))
                    return itk_resample(img, ptype, name, tr)
            else:
                reg = regions[dtype]
                ptype = itk.Image[itk.F if dtype == "float32" else itk.US, 3]
                img = itk.image_view_from_array(reg)

                def run(img=img, ptype=ptype, name=name, tr=dft):
                    return itk_resample(img, ptype, name, tr)
            t = timed(run, reps)
            out = np.asarray(run()).ravel()
            chk = diff(out, ref[orders[name]], inner)
            if name == "bspline":
                chk["vs_scipy_mirror"] = diff(out, ref_mirror3, inner)
            add("interp", f"ITK Resample {name}, DisplacementFieldTransform", orders[name],
                dtype, threads, t, chk, note="includes the per-point field evaluation")
            if dtype == "float32":  # the same resampling with the (cheap) affine part only
                t = timed(lambda img=img, ptype=ptype, name=name: itk_resample(
                    img, ptype, name, aff), reps)
                add("interp", f"ITK Resample {name}, AffineTransform only", orders[name],
                    dtype, threads, t, None, note="other positions (no field): scale only")
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(itk_default_threads)

    # per-point LinearInterpolateImageFunction from Python (the way not to do it)
    k = min(args.itk_points, n)
    ptype = itk.Image[itk.F, 3]
    img = itk.image_view_from_array(regions["float32"])
    lin = itk.LinearInterpolateImageFunction[ptype, itk.D].New()
    lin.SetInputImage(img)
    xyz = coords[::-1, :k].T.tolist()

    def per_point():
        return [lin.EvaluateAtContinuousIndex(p) for p in xyz]

    t = timed(per_point, reps)
    scale = n / k
    t = {**t, "median_s": t["median_s"] * scale, "min_s": t["min_s"] * scale,
         "max_s": t["max_s"] * scale}
    add("interp", "ITK LinearInterpolateImageFunction per point (Py)", 1, "float32", 1, t,
        diff(np.array(per_point()), ref[1][:k]),
        note=f"timed on {k} points (Python lists of x, y, z), scaled to the chunk")

    total = time.perf_counter() - t_start
    result = {
        "benchmark": "interpolation", "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "cpus": os.cpu_count(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__,
                     "itk": itk.Version.GetITKVersion(), "zarr": zarr.__version__,
                     "numba": numba_info.get("version")},
        "setup": {"points": n, "chunk": chunk, "region_shape": shape, "region_origin":
                  lo.tolist(), "interior_margin_voxels": INTERIOR,
                  "interior_fraction": float(inner.mean()), "repeats": reps,
                  "itk_default_threads": itk_default_threads,
                  "value_range": [int(regions["uint16"].min()), int(regions["uint16"].max())],
                  "transform": "0.97 x rot(3° about z-axis-0, 2° about axis-1) about the chunk "
                  "centre + shift; + field (3 sin, 2.5 cos, 2 sin; periods 97/83/71 mm) on an "
                  "8 mm grid, trilinear"},
        "zarr": zarr_info, "numba": numba_info, "total_seconds": total, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print()
    print(markdown(result))
    print(f"\nwritten {args.out} ({total:.0f} s)")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(result: dict) -> str:
    m, s = result["machine"], result["setup"]
    lines = [f"{s['points']:,} points ({s['chunk']}³ chunk), region {tuple(s['region_shape'])}; "
             f"{m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} → "
             f"{m['loadavg_end'][0]:.2f}; {result['versions']}. CPU/wall: this process's CPU time "
             "over wall time; others: cores kept busy by other processes meanwhile.", "",
             "| stage | kernel | order | dtype | threads | median ms | M points/s | CPU/wall "
             "| others | max abs Δ vs scipy (all / interior) |", "|---" * 10 + "|"]
    for r in result["rows"]:
        c = r["check"]
        if c is None:
            cs = "-"
        else:
            cs = f"{c['max_abs_diff']:.3g}"
            if "max_abs_diff_interior" in c:
                cs += f" / {c['max_abs_diff_interior']:.3g}"
            if r["order"] == 0:
                cs += f" ({c['mismatches']} differ)"
            if "vs_scipy_mirror" in c:
                m = c["vs_scipy_mirror"]
                cs += (f"; vs mode=mirror {m['max_abs_diff']:.3g} / "
                       f"{m['max_abs_diff_interior']:.3g}")
        lines.append(f"| {r['stage']} | {r['kernel']} | {r['order']} | {r['dtype']} | "
                     f"{r['threads']} | {r['median_s'] * 1e3:.1f} | {r['mpoints_per_s']:.2f} | "
                     f"{r['cpu_over_wall']:.2f} | {_fmt(r['other_processes_cores'])} | {cs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
