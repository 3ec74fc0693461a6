"""Block benchmark (issue 14): block registration engines on the same block pairs, one core each.

The case: the ``brainreg/brain`` volume (50 × 40 × 40 µm) at full resolution (level 0)
is the fixed image; the moving image is it resampled through
``ngffreg.synthetic.random_deformation(seed=1)``, exactly as in ``bench_register.py``
(whose saved pair under ``benchmarks/_work/register/level0`` is reused, or built the same
way), so the true fixed → moving map ``S⁻¹`` is known everywhere.

Blocks: ngffreg's own planner (``ngffreg.blocks.plan_blocks``, core ``--core`` voxels,
``--overlap-fraction`` per side, foreground fractions from the fixed image) cuts the fixed
image; the ``--n-blocks`` blocks with the most foreground (ties by block id) are kept. A
block pair is the grown region of the fixed image and the *same* region of the moving
image: the pre-warp is the identity (the deformation is small, ≤ 5 voxels, so the coarse
step of a real run would be close to the identity here).

Engines (``--engines``, comma separated), each run on exactly the same block pairs, all
blocks of one engine in one child process pinned to one thread
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, ``OMP``/``OPENBLAS``/``MKL``/``NUMBA_NUM_THREADS``
= 1), so the CPU seconds of a block are core-seconds:

- any ngffreg block method name (``ngffreg.registration.methods.BLOCK_METHODS``:
  ``ants-syn``, ``ants-affine``, ``elastix-bspline``, ``greedy`` once it exists), built with
  ``block_method(name, **options)`` (``--engine-options NAME='{"key": value}'``) and called
  as ``method(fixed, moving, Identity(), info)``; a name that is not registered is skipped.
  ``NAME@LABEL`` runs the method ``NAME`` again under another label, with the options given
  for ``NAME@LABEL``. A block that answers ``"declined"`` keeps its pre-warp (the identity)
  and is scored as such;
- ``picsl-greedy`` / ``picsl-greedy-sv``: the reference greedy implementation (PyPI
  ``picsl-greedy``, its Python API ``picsl_greedy.Greedy3D().execute(cmdline, **images)``
  with SimpleITK images in memory) in an environment of its own given by
  ``--greedy-python`` (it is never imported here, nor a dependency of ngffreg). Command:
  ``-d 3 -i fix mov <--greedy-args> [-sv] -threads 1 -o warp``; ``--greedy-args`` defaults to
  greedy's own deformable defaults with NCC 2×2×2 and three levels (``-m NCC 2x2x2 -n
  100x50x10 -s 1.732vox 0.707vox``) plus ``-wp 0`` (no 0.1-voxel quantisation of the output
  warp) and ``-seed 1``. Make the environment with ``make greedy-env``.

Per block: CPU seconds of the registration call (the child's user + system time, its own
children included), wall seconds, peak RSS of the child during the call (its high-water
mark is reset before each block through ``/proc/self/clear_refs``; it includes the
child's baseline: Python and the engine's libraries) and the target registration error
(TRE) at the foreground voxels of the block's *core* (Otsu threshold of the whole fixed
image): ``|estimated map(x) − S⁻¹(x)|`` in µm and in voxels of the smallest spacing
(40 µm), with the identity's error (before registration) for reference. Each engine's
result is sampled on the block grid (``transform.apply`` at the voxel centres; greedy's
warp image lies on that grid already) and evaluated here, the same way for every engine.
A warm-up registration on a 32³ crop of the first block runs first in each child
(untimed: library loading, JIT compilation).

Usage (``nice -n 19``: the machine is shared)::

    make greedy-env        # benchmarks/_envs/greedy, once
    nice -n 19 .venv/bin/python benchmarks/bench_blocks.py \\
        --engines greedy,ants-syn,picsl-greedy \\
        --greedy-python benchmarks/_envs/greedy/bin/python

Results are appended to ``benchmarks/results/blocks.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_convert import TreeSampler

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
RESULTS = HERE / "results" / "blocks.json"
WORK = HERE / "_work" / "blocks"
PAIR = HERE / "_work" / "register" / "level0"
PICSL = ("picsl-greedy", "picsl-greedy-sv")
GREEDY_ARGS = "-m NCC 2x2x2 -n 100x50x10 -s 1.732vox 0.707vox -wp 0 -seed 1"
ONE_THREAD = {k: "1" for k in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS",
                               "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}

# Both children: per-block CPU time (self + waited-for children) and peak RSS (the kernel's
# high-water mark, reset before each block: writing 5 to /proc/self/clear_refs).
_MEASURE = r'''
import json, resource, sys, time
import numpy as np

def _cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0

def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

def measured(call):
    reset = _reset_peak()
    rss0, c0, w0 = _status("VmRSS"), _cpu(), time.perf_counter()
    out = call()
    rec = {"cpu_s": _cpu() - c0, "wall_s": time.perf_counter() - w0, "rss_before": rss0,
           "peak_rss": _status("VmHWM") if reset else
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_reset": reset}
    return out, rec

folder, out = sys.argv[1], sys.argv[2]
man = json.load(open(folder + "/manifest.json"))

def arrays(b, crop=False):
    f = np.load(f"{folder}/{b['id']:04d}_fixed.npy")
    m = np.load(f"{folder}/{b['id']:04d}_moving.npy")
    origin = np.asarray(b["origin"], dtype=np.float64)
    if crop:  # the warm-up: a 32^3 crop from the block's centre
        lo = [max(0, (n - 32) // 2) for n in f.shape]
        sl = tuple(slice(a, a + 32) for a in lo)
        f, m = f[sl], m[sl]
        origin = origin + np.asarray(man["spacing"]) * lo
    return f, m, origin

def report(kind, rec):
    print(kind + " " + json.dumps(rec), flush=True)
'''

# An ngffreg block method (main venv): argv = folder, out, name, options (JSON), warm-up.
_NGFFREG = _MEASURE + r'''
from ngffreg.image import make_image, Grid
from ngffreg.registration.methods import BlockInfo, block_method
from ngffreg.transforms import Identity

name, options, warmup = sys.argv[3], json.loads(sys.argv[4]), sys.argv[5] == "1"
method = block_method(name, **options)

def run(b, crop=False):
    f, m, origin = arrays(b, crop)
    def image(a):
        return make_image(a, spacing=man["spacing"], origin=origin, unit=man["unit"]).compute()
    fixed, moving = image(f), image(m)
    info = BlockInfo(id=b["id"], index=tuple(b["index"]), core=tuple(map(tuple, b["core"])),
                     region=tuple(map(tuple, b["region"])), level=0, unit=man["unit"])
    result, rec = measured(lambda: method(fixed, moving, Identity(), info))
    metrics = {k: v for k, v in (getattr(result, "metrics", None) or {}).items()
               if isinstance(v, (int, float, str, bool))}
    rec.update(id=b["id"], status=result.status, message=result.message, metrics=metrics)
    if result.status == "ok" and result.transform is not None:
        g = Grid.of(fixed)
        pts = g.points()
        disp = (result.transform.apply(pts) - pts).T.reshape(3, *g.shape)
        if not crop:
            np.save(f"{out}/{b['id']:04d}_disp.npy", disp.astype(np.float32))
    return rec

if warmup:
    report("WARMUP", run(man["blocks"][0], crop=True))
for b in man["blocks"]:
    try:
        rec = run(b)
    except Exception as exc:  # a failed block is reported, the others still run
        rec = {"id": b["id"], "status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    report("BLOCK", rec)
'''

# picsl-greedy (its own environment, no ngffreg): argv = folder, out, greedy args, warm-up,
# verify (also write the first block's warp as NIfTI). Images go in as SimpleITK images in
# mm (NIfTI's unit); ngffreg's z, y, x order is reversed into ITK's x, y, z (same LPS space,
# identity direction, checked by the parent). The warp comes back as an ITK displacement
# field on the fixed block's grid: components x, y, z in mm, fixed point p -> p + d(p).
_PICSL = _MEASURE + r'''
import io
import SimpleITK as sitk
from picsl_greedy import Greedy3D

gargs, warmup, verify = sys.argv[3], sys.argv[4] == "1", sys.argv[5] == "1"

def sitk_image(a, origin):
    im = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
    im.SetSpacing([float(v) / 1000 for v in man["spacing"][::-1]])
    im.SetOrigin([float(v) / 1000 for v in origin[::-1]])
    return im

def register(f, m):
    g = Greedy3D()
    log = io.StringIO()
    g.execute(f"-d 3 -i fix mov {gargs} -threads 1 -V 0 -o warp", out=log, err=log,
              fix=f, mov=m, warp=None)
    return g["warp"]

def run(b, crop=False, nifti=False):
    fa, ma, origin = arrays(b, crop)
    f, m = sitk_image(fa, origin), sitk_image(ma, origin)
    w, rec = measured(lambda: register(f, m))
    rec.update(id=b["id"], status="ok", message="",
               same_grid=bool(w.GetSize() == f.GetSize() and w.GetSpacing() == f.GetSpacing()
                              and w.GetOrigin() == f.GetOrigin()
                              and w.GetDirection() == f.GetDirection()),
               pixel=w.GetPixelIDTypeAsString())
    if not crop:
        np.save(f"{out}/{b['id']:04d}_warp_xyz_mm.npy",
                sitk.GetArrayFromImage(w).astype(np.float32))  # (z, y, x, 3): x, y, z in mm
        if nifti:  # as greedy returns it (double vectors) and as float vectors
            sitk.WriteImage(w, f"{out}/{b['id']:04d}_warp.nii.gz")
            sitk.WriteImage(sitk.Cast(w, sitk.sitkVectorFloat32),
                            f"{out}/{b['id']:04d}_warp_f32.nii.gz")
    return rec

if warmup:
    report("WARMUP", run(man["blocks"][0], crop=True))
for i, b in enumerate(man["blocks"]):
    try:
        rec = run(b, nifti=verify and i == 0)
    except Exception as exc:
        rec = {"id": b["id"], "status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    report("BLOCK", rec)
'''


# ---------------------------------------------------------------------------------------
# the case and its blocks
# ---------------------------------------------------------------------------------------
def ensure_pair() -> None:
    """The deformed-brain pair of ``bench_register.py`` (level 0), built when missing."""
    if (PAIR / "truth_field.npy").is_file():
        return
    from bench_register import _MAKE

    os.environ.setdefault("NGFFREG_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    from ngffreg.catalog import fetch

    path = fetch("brainreg/brain", download=False)
    PAIR.mkdir(parents=True, exist_ok=True)
    print(f"building the pair at level 0 from {path} ...", flush=True)
    subprocess.run([PY, "-c", _MAKE, "0", str(PAIR), str(path)], check=True)


def prepare_blocks(core: int, overlap: float, n_blocks: int) -> Path:
    """Plan, choose and save the block pairs and their truth; cached in ``_work/blocks``."""
    folder = WORK / f"core{core}_ov{overlap:g}_n{n_blocks}"
    if (folder / "manifest.json").is_file():
        return folder
    from ngffreg.blocks import plan_blocks, subgrid
    from ngffreg.image import make_image
    from ngffreg.qc import otsu_threshold
    from ngffreg.transforms import DisplacementField

    ensure_pair()
    sp, org, fsp, forg = np.load(PAIR / "grids.npy")
    fixed_a, moving_a = np.load(PAIR / "fixed.npy"), np.load(PAIR / "moving.npy")
    fixed = make_image(fixed_a, spacing=sp, origin=org, unit="um")
    from ngffreg.image import Grid

    grid = Grid.of(fixed)
    if not np.allclose(grid.direction, np.eye(3)):
        raise SystemExit("bench_blocks assumes an identity direction (the brain has one).")
    truth = DisplacementField.from_array(np.load(PAIR / "truth_field.npy"), spacing=fsp,
                                         origin=forg, unit="um", outside="nearest").compute()
    threshold = otsu_threshold(fixed_a)
    plan = plan_blocks(grid, chunk_size=core, overlap_fraction=overlap, foreground=fixed)
    order = sorted(plan.blocks, key=lambda b: (-b.foreground, b.id))
    chosen = sorted(order[:n_blocks], key=lambda b: b.id)
    folder.mkdir(parents=True, exist_ok=True)
    blocks = []
    for b in chosen:
        g = subgrid(grid, b.slices)
        np.save(folder / f"{b.id:04d}_fixed.npy", np.ascontiguousarray(fixed_a[b.slices]))
        np.save(folder / f"{b.id:04d}_moving.npy", np.ascontiguousarray(moving_a[b.slices]))
        # Core foreground voxels: flat indices into the grown block, and S^-1 there.
        local = tuple(slice(c0 - r0, c1 - r0) for (c0, c1), (r0, _) in
                      zip(b.core, b.region, strict=True))
        mask = np.zeros(g.shape, dtype=bool)
        mask[local] = fixed_a[b.slices][local] > threshold
        idx = np.flatnonzero(mask)
        pts = g.points()[idx]
        true_map = truth.apply_inverse(pts)
        np.savez(folder / f"{b.id:04d}_truth.npz", index=idx,
                 disp=(true_map - pts).astype(np.float32))
        blocks.append({"id": b.id, "index": list(b.index), "core": [list(c) for c in b.core],
                       "region": [list(r) for r in b.region], "shape": list(g.shape),
                       "origin": g.origin.tolist(), "foreground": b.foreground,
                       "core_fg_voxels": int(idx.size)})
        print(f"  block {b.id}: shape {g.shape}, foreground {b.foreground:.2f}, "
              f"{idx.size} core foreground voxels", flush=True)
    manifest = {"spacing": grid.spacing.tolist(), "unit": grid.unit, "core": core,
                "overlap_fraction": overlap, "plan_blocks": len(plan.blocks),
                "plan_size": list(plan.size), "plan_overlap": list(plan.overlap),
                "otsu_threshold": float(threshold), "blocks": blocks}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


# ---------------------------------------------------------------------------------------
# running one engine
# ---------------------------------------------------------------------------------------
def run_child(cmd: list[str], label: str) -> dict[str, Any]:
    """Run ``cmd`` with one thread per library; its BLOCK/WARMUP lines, wall time, peak RSS
    and thread count of the whole process tree (sampled every 0.1 s)."""
    env = {**os.environ, **ONE_THREAD}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    blocks, warmup, log = [], None, []
    with TreeSampler(proc.pid) as sampler:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if line.startswith(("BLOCK ", "WARMUP ")):
                rec = json.loads(line.split(" ", 1)[1])
                if line.startswith("WARMUP"):
                    warmup = rec
                else:
                    blocks.append(rec)
                what = "warm-up" if line.startswith("WARMUP") else f"block {rec['id']}"
                extra = (f"{rec['cpu_s']:.1f} CPU s, {rec['wall_s']:.1f} s, "
                         f"{rec['peak_rss'] / 2**30:.2f} GiB" if "cpu_s" in rec
                         else rec["message"])
                print(f"  [{label}] {what}: {rec['status']}, {extra}", flush=True)
        proc.wait()
    peak, threads = sampler.peak, sampler.threads
    return {"returncode": proc.returncode, "child_wall_s": round(time.perf_counter() - start, 2),
            "child_peak_rss_gib": round(peak / 2**30, 3), "child_max_threads": threads,
            "warmup": warmup, "blocks": blocks, "log_tail": "".join(log)[-3000:]}


def greedy_disp(out: Path, bid: int) -> np.ndarray | None:
    """picsl-greedy's warp of block ``bid`` as a (3, z, y, x) displacement in µm, z, y, x."""
    p = out / f"{bid:04d}_warp_xyz_mm.npy"
    if not p.is_file():
        return None
    xyz = np.load(p)  # (z, y, x, 3), components x, y, z (ITK LPS), mm
    return np.moveaxis(xyz[..., ::-1], -1, 0) * 1000.0


def verify_greedy(folder: Path, out: Path, block: dict) -> dict[str, Any]:
    """Read picsl-greedy's NIfTI warp of ``block`` with ngffreg's own transform reader and
    compare its map with the direct array conversion at the core foreground voxels."""
    from ngffreg.blocks import index_points
    from ngffreg.image import Grid
    from ngffreg.transforms.files import load_transform_files

    truth = np.load(folder / f"{block['id']:04d}_truth.npz")
    g = Grid.from_origin(block["shape"], json.loads((folder / "manifest.json").read_text())
                         ["spacing"], block["origin"])
    pts = index_points(g, np.stack(np.unravel_index(truth["index"], g.shape), axis=1))
    res: dict[str, Any] = {"checked": False}
    for suffix in ("warp", "warp_f32"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ITK lists its wrapped types
                t = load_transform_files([str(out / f"{block['id']:04d}_{suffix}.nii.gz")])
                t.apply(pts[:1] / 1000.0)
            res["read"] = suffix
            break
        except Exception as exc:  # ngffreg's ITK wrapping has no Vector[double, 3] image
            res[f"{suffix}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    else:
        return res
    by_reader = t.apply(pts / 1000.0) * 1000.0  # the NIfTI is in mm
    direct = pts + greedy_disp(out, block["id"]).reshape(3, -1)[:, truth["index"]].T
    true_map = pts + truth["disp"]
    return {**res, "checked": True, "block": block["id"],
            "reader_vs_direct_max_um": float(np.abs(by_reader - direct).max()),
            "tre_before_median_um": float(np.median(np.linalg.norm(truth["disp"], axis=1))),
            "tre_after_median_um": float(np.median(np.linalg.norm(direct - true_map, axis=1))),
            "tre_after_reader_median_um": float(
                np.median(np.linalg.norm(by_reader - true_map, axis=1)))}


def run_engine(engine: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    manifest = json.loads((folder / "manifest.json").read_text())
    out = WORK / "runs" / f"{folder.name}_{engine}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    warm = "0" if args.no_warmup else "1"
    if engine in PICSL:
        gargs = args.greedy_args + (" -sv" if engine == "picsl-greedy-sv" else "")
        cmd = [args.greedy_python, "-c", _PICSL, str(folder), str(out), gargs, warm, "1"]
        settings: dict[str, Any] = {"greedy_command": f"-d 3 -i fix mov {gargs} -threads 1 "
                                                      "-V 0 -o warp"}
    else:
        options = json.loads(args.engine_options.get(engine, "{}"))
        cmd = [PY, "-c", _NGFFREG, str(folder), str(out), engine.split("@")[0],
               json.dumps(options), warm]
        settings = {"options": options}
    res = run_child(cmd, engine)
    res.update(settings)
    by_id = {r["id"]: r for r in res["blocks"]}
    pooled, before = [], []
    spacing = np.asarray(manifest["spacing"])
    vox = float(spacing.min())
    for b in manifest["blocks"]:
        rec = by_id.setdefault(b["id"], {"id": b["id"], "status": "missing"})
        rec["voxels"] = int(np.prod(b["shape"]))
        truth = np.load(folder / f"{b['id']:04d}_truth.npz")
        before.append(np.linalg.norm(truth["disp"], axis=1))
        disp = (greedy_disp(out, b["id"]) if engine in PICSL else
                (np.load(out / f"{b['id']:04d}_disp.npy")
                 if (out / f"{b['id']:04d}_disp.npy").is_file() else None))
        if rec.get("status") == "declined":  # the block keeps its pre-warp: the identity
            est = np.zeros_like(truth["disp"])
        elif rec.get("status") != "ok" or disp is None:
            continue
        else:
            est = disp.reshape(3, -1)[:, truth["index"]].T
        err = np.linalg.norm(est - truth["disp"], axis=1)
        pooled.append(err)
        rec.update(tre_median_um=float(np.median(err)),
                   tre_p95_um=float(np.percentile(err, 95)),
                   tre_before_median_um=float(np.median(before[-1])), points=int(err.size))
    if engine in PICSL:
        res["verify"] = verify_greedy(folder, out, manifest["blocks"][0])
        print(f"  [{engine}] conversion check: {res['verify']}", flush=True)
    res["blocks"] = [by_id[b["id"]] for b in manifest["blocks"]]
    ok = [r for r in res["blocks"] if "tre_median_um" in r]
    if ok:
        err = np.concatenate(pooled)
        cpu = sum(r["cpu_s"] for r in ok)
        res["summary"] = {
            "blocks_ok": len(ok), "blocks": len(res["blocks"]), "points": int(err.size),
            "blocks_declined": sum(r.get("status") == "declined" for r in ok),
            "tre_median_um": float(np.median(err)), "tre_p95_um": float(np.percentile(err, 95)),
            "tre_median_vox": float(np.median(err)) / vox,
            "tre_p95_vox": float(np.percentile(err, 95)) / vox,
            "cpu_s_total": cpu, "wall_s_total": sum(r["wall_s"] for r in ok),
            "core_s_per_mvox": cpu / sum(r["voxels"] for r in ok) * 1e6,
            "cpu_s_median_block": float(np.median([r["cpu_s"] for r in ok])),
            "peak_rss_gib_max_block": max(r["peak_rss"] for r in ok) / 2**30,
            "peak_rss_gib_median_block": float(np.median([r["peak_rss"] for r in ok])) / 2**30,
            "rss_increase_gib_max_block": max(r["peak_rss"] - r["rss_before"] for r in ok)
            / 2**30}
    if not args.keep_fields:
        for p in out.glob("*.npy"):
            p.unlink()
    res["identity"] = identity_summary(before, vox)
    return res


def identity_summary(before: list[np.ndarray], vox: float) -> dict[str, float]:
    err = np.concatenate(before)
    return {"tre_median_um": float(np.median(err)), "tre_p95_um": float(np.percentile(err, 95)),
            "tre_median_vox": float(np.median(err)) / vox,
            "tre_p95_vox": float(np.percentile(err, 95)) / vox, "points": int(err.size)}


# ---------------------------------------------------------------------------------------
# bookkeeping
# ---------------------------------------------------------------------------------------
def machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{platform.machine()}, {model}, {psutil.cpu_count()} logical cores, "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}")


def versions(greedy_python: str | None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                           capture_output=True, text=True).stdout.strip()
    out = {"python": platform.python_version(),
           "commit": git + (" + uncommitted changes in src" if dirty else "")}
    for pkg in ("ngffreg", "antspyx", "itk", "numpy", "numba", "itk-elastix"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if greedy_python:
        code = ("import json, platform; from importlib.metadata import version; "
                "print(json.dumps({'picsl-greedy': version('picsl-greedy'), "
                "'SimpleITK': version('SimpleITK'), 'numpy': version('numpy'), "
                "'python': platform.python_version()}))")
        p = subprocess.run([greedy_python, "-c", code], capture_output=True, text=True)
        out["greedy_env"] = p.stdout.strip() or p.stderr.strip()[-300:]
    return out


def table(runs: dict[str, dict], identity: dict[str, float]) -> str:
    rows = ["| engine | blocks | TRE median µm (vox) | TRE p95 µm (vox) | core-s / Mvox | "
            "CPU s / block (median) | peak RSS / block GiB, max (+ over the child's baseline) |",
            "|---|---|---|---|---|---|---|",
            f"| identity (before) | | {identity['tre_median_um']:.1f} "
            f"({identity['tre_median_vox']:.3f}) | {identity['tre_p95_um']:.1f} "
            f"({identity['tre_p95_vox']:.3f}) | | | |"]
    for name, r in runs.items():
        s = r.get("summary")
        if not s:
            rows.append(f"| {name} | {r.get('skipped') or 'failed'} | | | | | |")
            continue
        declined = f" ({s['blocks_declined']} declined)" if s.get("blocks_declined") else ""
        rows.append(
            f"| {name} | {s['blocks_ok']}/{s['blocks']}{declined} | {s['tre_median_um']:.1f} "
            f"({s['tre_median_vox']:.3f}) | {s['tre_p95_um']:.1f} ({s['tre_p95_vox']:.3f}) | "
            f"{s['core_s_per_mvox']:.1f} | {s['cpu_s_median_block']:.1f} | "
            f"{s['peak_rss_gib_max_block']:.2f} (+{s['rss_increase_gib_max_block']:.2f}) |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--engines", default="greedy,ants-syn,picsl-greedy",
                   help="comma-separated: ngffreg block method names (NAME or NAME@LABEL), "
                        "picsl-greedy, picsl-greedy-sv")
    p.add_argument("--n-blocks", type=int, default=24)
    p.add_argument("--core", type=int, default=64, help="block core, voxels per axis")
    p.add_argument("--overlap-fraction", type=float, default=0.25)
    p.add_argument("--greedy-python", default=None,
                   help="a Python interpreter that can import picsl_greedy (make greedy-env)")
    p.add_argument("--greedy-args", default=GREEDY_ARGS)
    p.add_argument("--engine-options", action="append", default=[], metavar="NAME=JSON",
                   help="options for block_method(NAME, **options) (NAME as in --engines, "
                        "NAME@LABEL included); repeatable")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--keep-fields", action="store_true",
                   help="keep each block's displacement under benchmarks/_work/blocks/runs")
    p.add_argument("--no-save", action="store_true", help="do not append to blocks.json")
    args = p.parse_args()
    args.engine_options = dict(item.split("=", 1) for item in args.engine_options)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    from ngffreg.registration.methods import BLOCK_METHODS

    load_start, t0 = os.getloadavg(), time.perf_counter()
    folder = prepare_blocks(args.core, args.overlap_fraction, args.n_blocks)
    manifest = json.loads((folder / "manifest.json").read_text())
    print(f"{len(manifest['blocks'])} blocks of {manifest['plan_blocks']} "
          f"(core {manifest['plan_size']}, overlap {manifest['plan_overlap']}) in {folder}",
          flush=True)
    runs: dict[str, dict] = {}
    identity: dict[str, float] = {}
    for engine in engines:
        if engine in PICSL and not args.greedy_python:
            runs[engine] = {"skipped": "no --greedy-python"}
        elif engine not in PICSL and engine.split("@")[0] not in BLOCK_METHODS:
            runs[engine] = {"skipped": "not in BLOCK_METHODS"}
        if engine in runs:
            print(f"{engine}: skipped ({runs[engine]['skipped']})", flush=True)
            continue
        print(f"{engine}: {len(manifest['blocks'])} blocks, one thread, load average "
              f"{os.getloadavg()[0]:.1f} ...", flush=True)
        runs[engine] = run_engine(engine, folder, args)
        runs[engine]["load_after"] = os.getloadavg()
        identity = runs[engine].pop("identity")
    if not identity:
        vox = float(np.min(manifest["spacing"]))
        identity = identity_summary(
            [np.linalg.norm(np.load(folder / f"{b['id']:04d}_truth.npz")["disp"], axis=1)
             for b in manifest["blocks"]], vox)
    record = {"command": " ".join([Path(PY).name, *sys.argv]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "load_average": {"start": load_start, "end": os.getloadavg()},
              "minutes": round((time.perf_counter() - t0) / 60, 1),
              "versions": versions(args.greedy_python),
              "case": {"pair": "brainreg/brain level 0, random_deformation(seed=1)",
                       "folder": folder.name, "pre_warp": "identity",
                       **{k: v for k, v in manifest.items() if k != "blocks"},
                       "blocks": [{k: b[k] for k in ("id", "shape", "foreground",
                                                     "core_fg_voxels")}
                                  for b in manifest["blocks"]]},
              "identity": identity, "runs": runs}
    if not args.no_save:
        RESULTS.parent.mkdir(exist_ok=True)
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
        RESULTS.write_text(json.dumps([*old, record], indent=1))
    print()
    print(table(runs, identity))


if __name__ == "__main__":
    main()
