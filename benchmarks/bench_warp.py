"""Benchmark: warping a volume through an affine + displacement-field transform.

Issue: output voxels per second of ``ngffreg.warp.warp`` as a ratio to a plain Zarr copy
of an array of the same size in the same run (goal ≥ 0.5), side by side with
``ants.apply_transforms`` and ``itk.resample_image_filter`` on the same data; peak memory
while warping a ≥ 4 GiB volume (goal ≤ 2 GiB).

Setup (under ``benchmarks/_work/warp``, which git ignores):

- moving = fixed grid: a uint16 Zarr v3 array (chunks 128³) tiled from
  ``ngffreg.synthetic.synthetic_volume``, spacing 1 µm, origin 0, opened lazily with
  ``ngffreg.open_image``;
- transform (fixed → moving): ``Sequence([field, affine])``: a displacement field on an
  8 µm grid (a 3 / 2.5 / 2 µm sinusoid, periods 97 / 83 / 71 µm; float32 Zarr array,
  read lazily), then an affine (0.97 scale, 3° and 2° rotations about the volume centre,
  a shift of (1.3, -0.7, 2.1) µm).

Runs, each in its own child process; wall time and the peak RSS of the child's process
tree (sampled every 0.1 s) are recorded:

1. ``copy``: a plain Zarr copy (``da.store(da.from_zarr(src), dst)``) of the source;
2. ``ngffreg``: ``warp(moving, transform, like=grid, interpolator="linear", chunks=128,
   dtype=uint16)`` stored with ``da.store`` into a uint16 Zarr v3 array (chunks 128³; same
   bytes as the copy) with dask's threaded scheduler;
3. ``ngffreg_pyramid`` (small size only): the same warp written by ``to_ome_zarr``
   (OME-Zarr 0.5, 3 levels);
4. ``ants`` / ``itk`` (small size only; they hold whole volumes in memory): the source read
   into memory, ``ants.apply_transforms`` (files from ``write_ants_transforms``) /
   ``itk.resample_image_filter`` (the ITK composite transform from
   ``write_itk_transform``), linear, float32, then written as uint16 Zarr like run 2.
   The warp call alone is timed inside the child too (``warp_s``).

A correctness check (not timed) warps the small volume with ngffreg to float32 and
compares with ANTs' and ITK's float32 outputs: max |difference| over the voxels at least
8 voxels from the faces, relative to the moving intensity range.

``--per-chunk`` instead times single 128³ output chunks in this process (one thread,
synchronous scheduler): a row of neighbouring chunks along x in the middle of the volume,
for the compiled path (``ngffreg.kernels``) and the reference path
(``ngffreg.warp.warp(..., kernels=False)``), linear and nearest neighbour, uint16 output. The
first chunk of each row starts with an empty chunk cache (and pays any numba compile);
the median is over the others, which reuse the source chunks their neighbours decoded.

Usage::

    .venv/bin/python benchmarks/bench_warp.py --quick   # small size only, ~1-2 min
    .venv/bin/python benchmarks/bench_warp.py           # + 1024x1536x1536 (4.5 GiB), ~10 min
    .venv/bin/python benchmarks/bench_warp.py --per-chunk [--per-chunk-size full]

Results are appended to ``benchmarks/results/warp.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from bench_convert import _MAKE_SOURCE, run_sampled

HERE = Path(__file__).resolve().parent
PY = sys.executable
RESULTS = HERE / "results" / "warp.json"
SMALL = (256, 384, 384)
FULL = (1024, 1536, 1536)
CHUNK = 128
FIELD_SPACING = 8.0

_COPY = """
import sys, time, dask.array as da, zarr
t = time.perf_counter()
src = zarr.open_array(sys.argv[1], mode="r")
dst = zarr.create_array(sys.argv[2], shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                        compressors=src.compressors, overwrite=True)
da.store(da.from_zarr(src), dst, lock=False)
print(f"TIMING work_s={time.perf_counter() - t:.3f}")
"""

# Shared by the ngffreg children: the image, the transform and the lazy warp.
_NGFFREG_SETUP = """
import json, sys, time
import dask, dask.array as da, numpy as np, zarr
from dask.callbacks import Callback
import ngffreg
from ngffreg.image import Grid
from ngffreg.transforms import Affine, DisplacementField, Sequence
from ngffreg.warp import warp
cfg = json.loads(open(sys.argv[1]).read())
t0 = time.perf_counter()
moving = ngffreg.open_image(cfg["source"], voxel_size=(1, 1, 1), unit="um")
field = DisplacementField.from_array(da.from_zarr(cfg["field"]), spacing=cfg["field_spacing"],
                                     unit="um")
transform = Sequence(transforms=(field, Affine(matrix=cfg["matrix"])))
grid = Grid.of(moving)

class Progress(Callback):
    def _start_state(self, dsk, state):
        self.total = sum(len(state[k]) for k in ("ready", "waiting", "running"))
        self.done, self.step, self.t = 0, 0.1, time.perf_counter()
    def _posttask(self, key, result, dsk, state, worker_id):
        self.done += 1
        if self.total > 200 and self.done >= self.step * self.total:
            self.step += 0.1
            print(f"    {self.done}/{self.total} tasks, {time.perf_counter() - self.t:.0f} s",
                  flush=True)
"""

_NGFFREG_STORE = _NGFFREG_SETUP + """
out = warp(moving, transform, like=grid, interpolator="linear", chunks=cfg["chunk"],
           dtype=sys.argv[3])
dst = zarr.create_array(sys.argv[2], shape=out.shape, chunks=(cfg["chunk"],) * 3,
                        dtype=out.dtype, overwrite=True)
with Progress():
    da.store(out.data, dst, lock=False)
print(f"TIMING work_s={time.perf_counter() - t0:.3f}")
"""

_NGFFREG_PYRAMID = _NGFFREG_SETUP + """
out = warp(moving, transform, like=grid, interpolator="linear", chunks=cfg["chunk"],
           dtype=sys.argv[3])
with Progress():
    ngffreg.to_ome_zarr(out, sys.argv[2], chunks=cfg["chunk"], n_levels=int(sys.argv[4]),
                        overwrite=True)
print(f"TIMING work_s={time.perf_counter() - t0:.3f}")
"""

_NGFFREG_FLOAT = _NGFFREG_SETUP + """
out = warp(moving, transform, like=grid, interpolator="linear", chunks=cfg["chunk"],
           dtype="float32")
np.save(sys.argv[2], out.data.compute())
"""

# The end of the ANTs and ITK children: save the float32 result (for the correctness
# check), write it as uint16 Zarr like the ngffreg run, report the timings.
_FINISH = """
del warped, img
if len(sys.argv) > 3:
    np.save(sys.argv[3], out)
dst = zarr.create_array(sys.argv[2], shape=out.shape, chunks=(cfg["chunk"],) * 3,
                        dtype="uint16", overwrite=True)
dst[...] = np.clip(np.rint(out), 0, 65535).astype(np.uint16)
t4 = time.perf_counter()
print(f"TIMING import_s={t1 - t0:.3f} read_s={t2 - t1:.3f} warp_s={t3 - t2:.3f} "
      f"write_s={t4 - t3:.3f} work_s={t4 - t1:.3f}")
"""

_ANTS = """
import json, sys, time
import numpy as np, zarr
t0 = time.perf_counter()
import ants
cfg = json.loads(open(sys.argv[1]).read())
t1 = time.perf_counter()
src = zarr.open_array(cfg["source"], mode="r")[...]
img = ants.from_numpy(np.ascontiguousarray(src.T, dtype=np.float32), origin=(0.0, 0.0, 0.0),
                      spacing=(1.0, 1.0, 1.0))
del src
t2 = time.perf_counter()
warped = ants.apply_transforms(fixed=img, moving=img, transformlist=cfg["ants_transforms"],
                               interpolator="linear", defaultvalue=0)
t3 = time.perf_counter()
out = np.ascontiguousarray(warped.numpy().T)
""" + _FINISH

_ITK = """
import json, sys, time
import numpy as np, zarr
t0 = time.perf_counter()
import itk
cfg = json.loads(open(sys.argv[1]).read())
transform = itk.transformread(cfg["itk_transform"])[0]
t1 = time.perf_counter()
src = zarr.open_array(cfg["source"], mode="r")[...]
img = itk.image_from_array(src.astype(np.float32))  # spacing 1, origin 0, identity
del src
t2 = time.perf_counter()
warped = itk.resample_image_filter(img, transform=transform, use_reference_image=True,
                                   reference_image=img, default_pixel_value=0.0)
t3 = time.perf_counter()
out = itk.array_from_image(warped)
""" + _FINISH


def make_source(path: Path, shape: tuple[int, ...]) -> None:
    if path.exists():
        import zarr

        if tuple(zarr.open_array(path, mode="r").shape) == shape:
            return
        shutil.rmtree(path)
    t = time.perf_counter()
    subprocess.run([PY, "-c", _MAKE_SOURCE, str(path), *map(str, shape), str(CHUNK)],
                   check=True)
    print(f"  made the source {shape} in {time.perf_counter() - t:.0f} s", flush=True)


def affine_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """0.97 × rot(3°, 2°) about the volume centre, plus a small shift (z, y, x, µm)."""
    a, b = np.deg2rad(3.0), np.deg2rad(2.0)
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    linear = 0.97 * rz @ ry
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = centre - linear @ centre + np.array([1.3, -0.7, 2.1])
    return m


def make_field(path: Path, shape: tuple[int, ...]) -> None:
    """A smooth sinusoidal displacement field (3, z, y, x) on an 8 µm grid covering the
    volume, as a float32 Zarr v3 array."""
    import zarr

    nodes = [int(np.ceil((n - 1) / FIELD_SPACING)) + 2 for n in shape]
    gz, gy, gx = (np.arange(n) * FIELD_SPACING for n in nodes)
    k = 2 * np.pi
    field = np.empty((3, *nodes), dtype=np.float32)
    field[0] = 3.0 * np.sin(k * gx / 97.0)[None, None, :] * np.ones(nodes[:2])[..., None]
    field[1] = 2.5 * np.cos(k * gz / 83.0)[:, None, None] * np.ones(nodes[1:])[None]
    field[2] = 2.0 * np.sin(k * gy / 71.0)[None, :, None] * np.ones((nodes[0], 1, nodes[2]))
    z = zarr.create_array(path, shape=field.shape, chunks=(3, 64, 64, 64), dtype="float32",
                          overwrite=True)
    z[...] = field


def write_config(work: Path, shape: tuple[int, ...]) -> Path:
    """Source, field, transform files for ANTs / ITK, and the config the children read."""
    import dask.array as da

    from ngffreg.transforms import Affine, DisplacementField, Sequence
    from ngffreg.transforms.files import write_ants_transforms, write_itk_transform

    tag = "x".join(map(str, shape))
    source, field_path = work / f"source_{tag}.zarr", work / f"field_{tag}.zarr"
    make_source(source, shape)
    make_field(field_path, shape)
    matrix = affine_matrix(shape)
    cfg = {"source": str(source), "field": str(field_path), "field_spacing": FIELD_SPACING,
           "matrix": matrix.tolist(), "chunk": CHUNK, "shape": list(shape)}
    if max(shape) <= 512:  # ANTs / ITK run on small sizes only
        import zarr

        field = DisplacementField.from_array(
            da.from_array(zarr.open_array(field_path, mode="r")[...]),
            spacing=FIELD_SPACING, unit="um")
        transform = Sequence(transforms=(field, Affine(matrix=matrix)))
        cfg["ants_transforms"] = write_ants_transforms(transform, work / f"ants_{tag}_")
        cfg["itk_transform"] = str(write_itk_transform(transform, work / f"itk_{tag}.h5"))
    path = work / f"config_{tag}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


def correctness(work: Path, cfg_path: Path, ants_npy: Path, itk_npy: Path) -> dict:
    """Max |ngffreg − ANTs| and |ngffreg − ITK| (float32 outputs) on interior voxels."""
    ours_npy = work / "ngffreg_float.npy"
    subprocess.run([PY, "-c", _NGFFREG_FLOAT, str(cfg_path), str(ours_npy)], check=True)
    ours = np.load(ours_npy)
    cfg = json.loads(cfg_path.read_text())
    import zarr

    src = zarr.open_array(cfg["source"], mode="r")
    rng = float(np.max(src[...])) - float(np.min(src[...]))
    inner = (slice(8, -8),) * 3
    out: dict = {"intensity_range": rng, "interior_margin_voxels": 8}
    for name, npy in (("ants", ants_npy), ("itk", itk_npy)):
        theirs = np.load(npy)
        diff = np.abs(ours.astype(np.float64) - theirs)
        out[f"{name}_max_abs_diff_interior"] = round(float(diff[inner].max()), 4)
        out[f"{name}_max_rel_diff_interior"] = float(diff[inner].max() / rng)
        out[f"{name}_max_abs_diff_all"] = round(float(diff.max()), 4)
        out[f"{name}_mean_abs_diff_interior"] = round(float(diff[inner].mean()), 6)
    for p in (ours_npy, ants_npy, itk_npy):
        p.unlink(missing_ok=True)
    return out


def bench_size(work: Path, shape: tuple[int, ...], *, others: bool, levels: int) -> dict:
    voxels = int(np.prod(shape))
    print(f"\n== {shape} uint16 = {2 * voxels / 2**30:.2f} GiB, chunks {CHUNK}^3 ==", flush=True)
    cfg = write_config(work, shape)
    source = json.loads(cfg.read_text())["source"]
    dst = work / "out.zarr"
    rows: dict[str, dict] = {}

    def record(name: str, r: dict) -> None:
        r.pop("log", None)
        r["mvoxels_per_s"] = round(voxels / r["wall_s"] / 1e6, 2)
        rows[name] = r
        print(f"  {name}: {r['wall_s']} s ({r['mvoxels_per_s']} Mvoxel/s), "
              f"peak RSS {r['peak_rss_gib']} GiB", flush=True)
        shutil.rmtree(dst, ignore_errors=True)

    record("copy", run_sampled([PY, "-c", _COPY, source, str(dst)], "copy"))
    record("ngffreg", run_sampled(
        [PY, "-c", _NGFFREG_STORE, str(cfg), str(dst), "uint16"], "ngffreg"))
    if levels:
        record("ngffreg_pyramid", run_sampled(
            [PY, "-c", _NGFFREG_PYRAMID, str(cfg), str(dst), "uint16", str(levels)],
            "ngffreg_pyramid"))
    result: dict = {"shape": list(shape), "gib": round(2 * voxels / 2**30, 3), "rows": rows}
    if others:
        ants_npy, itk_npy = work / "ants.npy", work / "itk.npy"
        record("ants", run_sampled([PY, "-c", _ANTS, str(cfg), str(dst), str(ants_npy)], "ants"))
        record("itk", run_sampled([PY, "-c", _ITK, str(cfg), str(dst), str(itk_npy)], "itk"))
        print("  correctness check (ngffreg float32 vs ANTs / ITK) ...", flush=True)
        result["correctness"] = correctness(work, cfg, ants_npy, itk_npy)
        print(f"  {result['correctness']}", flush=True)
    copy_rate = rows["copy"]["mvoxels_per_s"]
    for r in rows.values():
        r["ratio_to_copy"] = round(r["mvoxels_per_s"] / copy_rate, 3)
    return result


def per_chunk(work: Path, shape: tuple[int, ...]) -> dict:
    """Seconds per 128³ output chunk (one thread), compiled and reference paths."""
    import importlib
    import statistics

    import dask
    import dask.array as da

    import ngffreg
    from ngffreg.image import Grid
    from ngffreg.sampling import CHUNK_CACHE
    from ngffreg.transforms import Affine, DisplacementField, Sequence

    warp_module = importlib.import_module("ngffreg.warp")
    cfg = json.loads(write_config(work, shape).read_text())
    moving = ngffreg.open_image(cfg["source"], voxel_size=(1, 1, 1), unit="um")
    field = DisplacementField.from_array(da.from_zarr(cfg["field"]),
                                         spacing=cfg["field_spacing"], unit="um")
    transform = Sequence(transforms=(field, Affine(matrix=cfg["matrix"])))
    grid = Grid.of(moving)
    nz, ny, nx = (-(-n // CHUNK) for n in shape)
    blocks = [(nz // 2, ny // 2, k) for k in range(min(nx, 7))]
    rows = {}
    for path in ("compiled", "reference"):
        for interpolator in ("linear", "nearestNeighbor"):
            CHUNK_CACHE.clear()
            out = warp_module.warp(moving, transform, like=grid, interpolator=interpolator,
                                   chunks=CHUNK, dtype="uint16", kernels=path == "compiled")
            times = []
            with dask.config.set(scheduler="synchronous"):
                for b in blocks:
                    t = time.perf_counter()
                    out.data.blocks[b].compute()
                    times.append(round(time.perf_counter() - t, 3))
            rows[f"{path} {interpolator}"] = {"first_s": times[0],
                                              "median_s": statistics.median(times[1:]),
                                              "times_s": times}
            print(f"  {path} {interpolator}: {times} s per chunk", flush=True)
    return {"shape": list(shape), "blocks": [list(b) for b in blocks], "rows": rows}


def table(results: list[dict]) -> str:
    lines = ["| size | run | wall s | Mvoxel/s | peak RSS GiB | ratio to copy | note |",
             "|---|---|---|---|---|---|---|"]
    notes = {"copy": "da.store(from_zarr) → zarr",
             "ngffreg": "warp → da.store, uint16",
             "ngffreg_pyramid": "warp → to_ome_zarr (3 levels)",
             "ants": "read + apply_transforms + write",
             "itk": "read + resample_image_filter + write"}
    for res in results:
        size = f"{'×'.join(map(str, res['shape']))} ({res['gib']} GiB)"
        for name, r in res["rows"].items():
            note = notes[name]
            if "warp_s" in r:
                note += f"; warp alone {r['warp_s']} s"
            lines.append(f"| {size} | {name} | {r['wall_s']} | {r['mvoxels_per_s']} | "
                         f"{r['peak_rss_gib']} | {r['ratio_to_copy']} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small size only")
    parser.add_argument("--full-shape", nargs=3, type=int, default=FULL,
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--levels", type=int, default=3,
                        help="pyramid levels of the to_ome_zarr run (small size; 0: skip)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work" / "warp")
    parser.add_argument("--clean", action="store_true", help="remove the work folder after")
    parser.add_argument("--per-chunk", action="store_true",
                        help="time single output chunks instead (one thread)")
    parser.add_argument("--per-chunk-size", choices=("small", "full"), default="small")
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.per_chunk:
        shape = SMALL if args.per_chunk_size == "small" else tuple(args.full_shape)
        result = per_chunk(work, shape)
        print("\n| path | median s per chunk | first chunk s |\n|---|---|---|")
        for name, r in result["rows"].items():
            print(f"| {name} | {r['median_s']} | {r['first_s']} |")
        return
    results = [bench_size(work, SMALL, others=True, levels=args.levels)]
    if not args.quick:
        results.append(bench_size(work, tuple(args.full_shape), others=False, levels=0))
    import dask
    import zarr

    import ngffreg

    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
        "versions": {"ngffreg": ngffreg.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__, "numpy": np.__version__},
        "transform": "Sequence([DisplacementField (8 µm grid; 3/2.5/2 µm sinusoid, float32 "
                     "Zarr), Affine (0.97 scale, 3° + 2° rotation about the centre, shift)])",
        "command": " ".join([Path(PY).name, "benchmarks/bench_warp.py",
                             *(["--quick"] if args.quick else [])]),
        "total_s": round(time.perf_counter() - t0, 1),
        "sizes": results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    history = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    history.append(record)
    RESULTS.write_text(json.dumps(history, indent=2) + "\n")
    print()
    print(table(results))
    print(f"\ntotal {record['total_s']} s; results appended to {RESULTS}")
    if args.clean:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
