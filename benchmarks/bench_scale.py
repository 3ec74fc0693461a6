"""Benchmark: registration + warp of the brain scaled up to ~a billion voxels (issue 6).

The cases are built from the real ``brainreg/brain`` volume (50 × 40 × 40 µm, 270 × 193 ×
271 = 14.1 M voxels at level 0). The base case is its pyramid level ``--base-level`` (0:
full resolution; ``--quick``: level 2, 67 × 48 × 67 = 0.2 M voxels). A case of factor
``f = k³`` covers the same physical extent on a grid ``k`` times finer per axis
(``k³`` times the voxels; 64 × level 0 = 904 M voxels):

- fixed: the base brain resampled onto the finer grid by ngffreg's lazy, chunked warp
  (``warp(brain, Identity(), like=<finer grid>)``, linear, uint16) and written with
  ``to_ome_zarr`` as a pyramid (its coarse levels serve the coarse step and the error
  measurement);
- truth: ``S = random_deformation(<base grid>, seed=1)``, on the base grid, i.e. the same
  physical field whatever the factor (4 base voxels at most, plus a 1-base-voxel fine part);
- moving: the fixed image through ``S`` (``moving(p) = F(S(p))`` with ``F`` the linear
  interpolant of the brain, of which the fixed image is ``F`` sampled: warped from the base
  brain through ``S`` onto the finer grid, so interpolated once, not twice), lazy and
  chunked, written with ``to_ome_zarr``.

Case generation reads only the base level into memory (≤ 14 M voxels whatever the
factor) and streams both stores chunk by chunk; the cases are cached in
``benchmarks/_work/scale/L<level>_f<factor>/``.

Each registration is a child process (``run_sampled``: wall time and the peak RSS of its
whole process tree, workers included, sampled every 0.1 s) running
``register(fixed, moving, out, coarse_spacing=<base spacing × --coarse-factor>, fine_level=…,
chunk_size=…, fine_accuracy=…, workers=…[, memory_budget=…])``: the coarse step always
runs at the same physical spacing (so its memory does not grow with the factor) and the
blocks at ``--fine-level`` of the scaled image; the registered image is written (warp
included). The target registration error (TRE) is measured against the known truth at up to
50,000 fixed foreground voxels, without loading the scaled volume: the foreground is found
(Otsu) on the fixed pyramid level whose spacing is the base level's, random foreground
voxels of that level are picked, a random point inside each is snapped to the nearest voxel
of the scaled grid, and the registration result (read lazily from the output store) is
compared with ``S⁻¹`` there. TRE is given in µm and in voxels of the scaled grid's smallest
spacing.

Usage::

    .venv/bin/python benchmarks/bench_scale.py --quick                  # level 2, 1× and 8×
    .venv/bin/python benchmarks/bench_scale.py --quick --with-64        # + 64× (13.8 M voxels)
    .venv/bin/python benchmarks/bench_scale.py                          # the issue's: level 0,
                                                                        # 1×, 8×, 64× (904 M)
    .venv/bin/python benchmarks/bench_scale.py --factors 1 8 27 --memory-budget "6 GiB"

Results are appended to ``benchmarks/results/scale.json``; a Markdown table is printed and
``benchmarks/results/scale.png`` (peak memory and time per voxel against voxel count) is
written. Goals (issue 6): the largest case's peak within 1.25× of the smallest's and under
8 GiB; time per voxel flat or falling; TRE within the registration issue's bounds (median
≤ 0.3 voxel, 95th percentile ≤ 1 voxel).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import psutil
from bench_convert import run_sampled

HERE = Path(__file__).resolve().parent
PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
RESULTS = HERE / "results" / "scale.json"
FIGURE = HERE / "results" / "scale.png"
WORK = HERE / "_work" / "scale"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brainreg" / "brain"
VOXEL_SIZE = (50, 40, 40)
STORE_CHUNK = 128
TRE_POINTS = 50_000
#: The registration issue's bounds on the TRE, in voxels.
TRE_MEDIAN_MAX, TRE_P95_MAX = 0.3, 1.0
CASE_VERSION = 1


def cube_root(factor: int) -> int:
    """``k`` with ``k³ == factor``, or a SystemExit."""
    k = round(factor ** (1 / 3))
    if factor < 1 or k**3 != factor:
        raise SystemExit(f"--factors takes cubes of integers (1, 8, 27, 64, …); got {factor}.")
    return k


# ---------------------------------------------------------------------------------------
# child process 1: build a case (memory bounded: only the base level is in memory)
# ---------------------------------------------------------------------------------------
def make_case(data: str, level: int, k: int, folder: Path) -> None:
    import numpy as np

    from ngffreg.image import Grid, load
    from ngffreg.io.write import to_ome_zarr
    from ngffreg.registration.coarse import image_levels
    from ngffreg.synthetic import random_deformation
    from ngffreg.transforms import Identity
    from ngffreg.warp import warp

    brain = load(image_levels(data, voxel_size=VOXEL_SIZE, unit="um")[level])
    base = Grid.of(brain)
    # the same physical box (voxel faces) sampled k times finer per axis
    fine = Grid(tuple(n * k for n in base.shape), base.spacing / k,
                base.frame_origin - 0.5 * base.spacing + 0.5 * base.spacing / k,
                base.direction, base.unit)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    fixed = warp(brain, Identity(), like=fine, dtype="uint16", chunks=STORE_CHUNK)
    to_ome_zarr(fixed, folder / "fixed.ome.zarr", chunks=STORE_CHUNK, overwrite=True)
    t_fixed = time.perf_counter() - t
    s = random_deformation(base, seed=1)  # moving → fixed, on the base grid
    t = time.perf_counter()
    moving = warp(brain, s, like=fine, dtype="uint16", chunks=STORE_CHUNK)
    to_ome_zarr(moving, folder / "moving.ome.zarr", chunks=STORE_CHUNK, overwrite=True)
    t_moving = time.perf_counter() - t
    g = s.grid
    np.savez(folder / "truth.npz", field=np.asarray(s.field.values, dtype=np.float32),
             spacing=g.spacing, origin=g.origin, direction=g.direction)
    meta = {"version": CASE_VERSION, "base_level": level, "k": k, "factor": k**3,
            "base_shape": list(base.shape), "base_spacing": base.spacing.tolist(),
            "shape": list(fine.shape), "spacing": fine.spacing.tolist(),
            "origin": fine.origin.tolist(), "unit": fine.unit,
            "voxels": int(np.prod(fine.shape)), "fixed_s": round(t_fixed, 2),
            "moving_s": round(t_moving, 2)}
    (folder / "case.json").write_text(json.dumps(meta, indent=1))  # last: marks it complete
    print("    case " + json.dumps(meta), flush=True)


# ---------------------------------------------------------------------------------------
# child process 2: register, warp, measure the TRE
# ---------------------------------------------------------------------------------------
def tre_points(fixed_path: Path, meta: dict, n: int = TRE_POINTS, seed: int = 0):
    """Up to ``n`` voxel centres of the scaled fixed grid in its foreground, found on the
    pyramid level whose spacing is the base level's (never the full volume)."""
    import numpy as np

    from ngffreg.image import Grid, load, spacing
    from ngffreg.qc import otsu_threshold
    from ngffreg.registration.coarse import image_levels

    levels = image_levels(str(fixed_path))
    want = np.log(np.asarray(meta["base_spacing"], dtype=np.float64))
    j = int(np.argmin([np.abs(np.log(np.asarray(spacing(lv))) - want).sum() for lv in levels]))
    coarse = load(levels[j])
    data = np.asarray(coarse.values, dtype=np.float32)
    idx = np.argwhere(data > otsu_threshold(data))
    rng = np.random.default_rng(seed)
    if len(idx) > n:
        idx = idx[rng.choice(len(idx), n, replace=False)]
    cgrid, fgrid = Grid.of(coarse), Grid.of(levels[0])
    # a random point inside each coarse voxel, snapped to the nearest voxel of the full grid
    frame = cgrid.frame_origin + cgrid.spacing * (idx + rng.uniform(-0.5, 0.5, idx.shape))
    cidx = np.clip(np.rint(fgrid.continuous_index(frame @ cgrid.direction.T)), 0,
                   np.asarray(fgrid.shape) - 1)
    return ((fgrid.frame_origin + fgrid.spacing * cidx) @ fgrid.direction.T, j,
            list(coarse.shape))


def run_case(folder: Path, out: Path, chunk: int, accuracy: str, workers: int,
             budget: str | None, fine_level: int, coarse_factor: float,
             export_ants: bool, keep: bool, defaults: bool = False) -> None:
    import inspect

    import numpy as np

    from ngffreg.registration.register import register
    from ngffreg.transforms import DisplacementField, Sequence

    meta = json.loads((folder / "case.json").read_text())
    truth_npz = np.load(folder / "truth.npz")
    truth = DisplacementField.from_array(
        truth_npz["field"], spacing=truth_npz["spacing"], origin=truth_npz["origin"],
        direction=truth_npz["direction"], unit=meta["unit"], outside="nearest")
    if defaults:  # register() at its defaults, as `ngffreg register fix mov -o out` runs it
        kwargs = {"overwrite": True, "export_ants": export_ants}
    else:
        kwargs = {"coarse_spacing": list(np.asarray(meta["base_spacing"]) * coarse_factor),
                  "fine_level": fine_level, "chunk_size": chunk, "fine_accuracy": accuracy,
                  "workers": workers, "overwrite": True, "export_ants": export_ants}
    accepts_budget = "memory_budget" in inspect.signature(register).parameters
    if budget and accepts_budget:
        kwargs["memory_budget"] = budget
    t = time.perf_counter()
    r = register(str(folder / "fixed.ome.zarr"), str(folder / "moving.ome.zarr"), out,
                 **kwargs)
    seconds = time.perf_counter() - t
    print("TIMING " + " ".join(f"{key}={float(v):.2f}" for key, v in r.timings.items()),
          flush=True)
    t = time.perf_counter()
    pts, tre_level, tre_shape = tre_points(folder / "fixed.ome.zarr", meta)
    want = truth.apply_inverse(pts)  # S⁻¹(p): the true fixed → moving map
    vox = float(np.min(meta["spacing"]))

    def stats(mapped) -> dict:
        err = np.linalg.norm(np.asarray(mapped) - want, axis=1)
        med, p95 = float(np.median(err)), float(np.percentile(err, 95))
        return {"median_um": med, "p95_um": p95, "median_vox": med / vox, "p95_vox": p95 / vox}

    # the coarse part of the stored registration [fine field(s), coarse field, affine]:
    # ``r.coarse.transform`` may read its field from OUT.partial, gone once register()
    # returns (it then reads as zeros)
    stored = getattr(r.transform, "forward", r.transform)
    steps = stored.transforms if isinstance(stored, Sequence) else (stored,)
    coarse_t = Sequence(transforms=steps[r.n_fine:]) if r.fine is not None else stored
    before, coarse, final = stats(pts), stats(coarse_t.apply(pts)), \
        stats(r.transform.apply(pts))
    statuses: dict[str, int] = {}
    for b in r.blocks:
        statuses[b["status"]] = statuses.get(b["status"], 0) + 1
    flagged = [{"id": b["id"], "status": b["status"], "message": str(b.get("message"))[:300]}
               for b in r.blocks if b["status"] not in ("ok", "skipped", "declined")]
    result = {
        "register_s": seconds, "timings": r.timings, "tre_s": time.perf_counter() - t,
        "tre_points": len(pts), "tre_level": tre_level, "tre_level_shape": tre_shape,
        "tre_median_um": final["median_um"], "tre_p95_um": final["p95_um"],
        "tre_median_vox": final["median_vox"], "tre_p95_vox": final["p95_vox"],
        "tre_before": before, "tre_coarse": coarse,
        "coarse_level": r.coarse.fixed_level,
        "coarse_shape": r.coarse.metrics.get("fixed_shape"),
        "blocks": len(r.blocks), "block_status": statuses, "flagged_blocks": flagged,
        "plan_block_size": list(r.plan.size) if r.plan is not None else None,
        "memory_gib": getattr(r, "memory", None),  # peak per stage (process tree)
        "memory_budget_passed": bool(budget and accepts_budget),
        "register_accepts_memory_budget": accepts_budget,
    }
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    # to a file: with thousands of blocks the line outgrows the log tail the parent keeps
    (folder / "result.json").write_text(json.dumps(result, default=float))
    print("RESULT written", flush=True)


# ---------------------------------------------------------------------------------------
# the parent: cases, runs, table, figure
# ---------------------------------------------------------------------------------------
def ensure_case(data: Path, level: int, factor: int) -> tuple[Path, dict | None]:
    """The case folder; builds it (in a child process) unless cached. Returns the folder and
    the build's wall time and peak memory (``cached: true`` when built by an earlier run)."""
    k = cube_root(factor)
    folder = WORK / f"L{level}_f{factor}"
    meta_path = folder / "case.json"
    made_path = folder / "make.json"  # how long the build took and its peak memory
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == CASE_VERSION and meta.get("k") == k:
            made = json.loads(made_path.read_text()) if made_path.is_file() else None
            return folder, made and {**made, "cached": True}
    shutil.rmtree(folder, ignore_errors=True)
    print(f"building the {factor}× case from level {level} ...", flush=True)
    res = run_sampled([PY, SCRIPT, "_make", str(data), str(level), str(k), str(folder)],
                      label=f"make {factor}x")
    res.pop("log", None)
    made_path.write_text(json.dumps(res))
    print(f"  built in {res['wall_s']:.0f} s, peak {res['peak_rss_gib']:.2f} GiB", flush=True)
    return folder, res


def run_one(folder: Path, args: argparse.Namespace, chunk: int) -> dict:
    out = folder / "registered.ome.zarr"
    cmd = [PY, SCRIPT, "_run", str(folder), str(out), str(chunk), args.fine_accuracy,
           str(args.workers), args.memory_budget or "", str(args.fine_level),
           str(args.coarse_factor), "1" if args.export_ants else "0",
           "1" if args.keep_output else "0", "1" if args.defaults else "0"]
    for stale in folder.glob(out.name + "*"):  # a run's output and its .partial: start clean
        shutil.rmtree(stale, ignore_errors=True)
    (folder / "result.json").unlink(missing_ok=True)
    try:
        res = run_sampled(cmd, label=folder.name)
    except SystemExit as exc:  # the child failed: record it, go on with the other sizes
        print(f"  FAILED: {str(exc)[-1500:]}", flush=True)
        return {"failed": True, "error": str(exc)[-2000:]}
    finally:
        if not args.keep_output:
            for stale in folder.glob(out.name + "*"):
                shutil.rmtree(stale, ignore_errors=True)
    found = folder / "result.json"
    res.update(json.loads(found.read_text()) if found.is_file() else {"failed": True})
    return res


#: Settings that must match for runs of two records to be judged together.
SAME_SETTINGS = ("base_level", "defaults", "chunk_size", "fine_accuracy", "fine_level",
                 "coarse_factor", "workers", "memory_budget")


def earlier_runs(records: list[dict], record: dict) -> list[dict]:
    """The latest successful run of each factor not in ``record``, from earlier records
    at the same settings (each marked ``earlier`` with its record's date and commit)."""
    have = {r["factor"] for r in record["runs"]}
    found: dict[int, dict] = {}
    for old in reversed(records):
        if any(old.get(k) != record.get(k) for k in SAME_SETTINGS):
            continue
        for r in old.get("runs", []):
            if r["factor"] not in have and r["factor"] not in found and not r.get("failed"):
                found[r["factor"]] = {**r, "earlier": {"date": old["date"],
                                                       "code": old.get("code")}}
    return [found[f] for f in sorted(found)]


def table(runs: list[dict]) -> str:
    rows = ["| factor | shape | voxels | blocks | register s | s / M voxel | peak RSS GiB | "
            "TRE median µm (voxel) | TRE p95 µm (voxel) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        shape = " × ".join(str(n) for n in r["shape"])
        if r.get("earlier"):
            shape += f" (run {r['earlier']['date']})"
        if r.get("failed"):
            rows.append(f"| {r['factor']}× | {shape} | {r['voxels']:,} | failed | | | "
                        f"{r.get('peak_rss_gib', float('nan')):.2f} | | |")
            continue
        rows.append(
            f"| {r['factor']}× | {shape} | {r['voxels']:,} | {r['blocks']} | "
            f"{r['register_s']:.0f} | {r['s_per_mvoxel']:.1f} | {r['peak_rss_gib']:.2f} | "
            f"{r['tre_median_um']:.1f} ({r['tre_median_vox']:.3f}) | "
            f"{r['tre_p95_um']:.1f} ({r['tre_p95_vox']:.3f}) |")
    return "\n".join(rows)


def goals(runs: list[dict]) -> list[str]:
    """The real-scale issue's bars (17): the largest case's peak ≤ 1.25× the next size's and
    ≤ 6 GiB, seconds per voxel within ±20 % of their mean, the 64× case in ≤ 3 h; and the
    registration issue's TRE bounds."""
    ok = sorted((r for r in runs if not r.get("failed")), key=lambda r: r["voxels"])
    if len(ok) < 2:
        return []
    below, large = ok[-2], ok[-1]
    ratio = large["peak_rss_gib"] / below["peak_rss_gib"]
    per = [r["s_per_mvoxel"] for r in ok]
    mean = sum(per) / len(per)
    flat = all(abs(v - mean) <= 0.2 * mean for v in per)
    tre = all(r["tre_median_vox"] <= TRE_MEDIAN_MAX and r["tre_p95_vox"] <= TRE_P95_MAX
              for r in ok)
    out = [
        f"- peak memory, {large['factor']}× / {below['factor']}×: {ratio:.2f} (goal ≤ 1.25: "
        f"{'met' if ratio <= 1.25 else 'missed'}); {large['factor']}× "
        f"{large['peak_rss_gib']:.2f} GiB (goal ≤ 6: "
        f"{'met' if large['peak_rss_gib'] <= 6 else 'missed'})",
        f"- s / M voxel by size: {', '.join(f'{v:.1f}' for v in per)} (goal within ±20 % of "
        f"their mean {mean:.1f}: {'met' if flat else 'missed'})",
        f"- TRE ≤ {TRE_MEDIAN_MAX} voxel median and ≤ {TRE_P95_MAX} voxel p95 at every size: "
        f"{'met' if tre else 'missed'}",
    ]
    for r in ok:
        if r["factor"] == 64:
            out.append(f"- 64× wall {r['wall_s'] / 3600:.2f} h (goal ≤ 3 h: "
                       f"{'met' if r['wall_s'] <= 3 * 3600 else 'missed'})")
    return out


def figure(runs: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in runs if not r.get("failed")), key=lambda r: r["voxels"])
    if not ok:
        return
    x = [r["voxels"] for r in ok]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax1.plot(x, [r["peak_rss_gib"] for r in ok], "o-", label="register + warp")
    made = [(r["voxels"], r["make"]["peak_rss_gib"]) for r in ok if r.get("make")]
    if made:
        ax1.plot(*zip(*made, strict=True), "s--", label="case generation")
    ax1.axhline(6, color="grey", lw=0.8, ls=":", label="goal: 6 GiB")
    ax1.set(xscale="log", xlabel="voxels", ylabel="peak RSS of the process tree (GiB)",
            title="memory")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax2.plot(x, [r["s_per_mvoxel"] for r in ok], "o-", label="register() (incl. warp)")
    ax2.plot(x, [r["wall_s"] / (r["voxels"] / 1e6) for r in ok], "^:",
             label="whole child process")
    ax2.set(xscale="log", xlabel="voxels", ylabel="seconds per million voxels",
            title="time per voxel")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    for r in ok:
        ax1.annotate(f"{r['factor']}×", (r["voxels"], r["peak_rss_gib"]),
                     textcoords="offset points", xytext=(4, 4), fontsize=8)
    fig.suptitle(title, fontsize=9)
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    plt.close(fig)


def code_version() -> dict:
    """Which ngffreg ran: where it was imported from, the commit, and whether ``src/`` had
    uncommitted changes (read-only git calls)."""
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("ngffreg")
    out = {"ngffreg_path": str(Path(spec.origin).parent) if spec and spec.origin else None}
    try:
        root = HERE.parent
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                                       capture_output=True, text=True).stdout.strip()
        out["src_modified"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
            text=True).stdout.strip())
    except OSError:
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="base level 2 and factors 1, 8 (+64 with --with-64); ~15 min on 2 cores")
    p.add_argument("--with-64", action="store_true", help="with --quick: add the 64x case")
    p.add_argument("--base-level", type=int, default=None,
                   help="brain pyramid level of the 1x case (default 0; --quick: 2)")
    p.add_argument("--factors", type=int, nargs="+", default=None,
                   help="voxel-count multiples, cubes of integers (default 1 8 64)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="block core size in voxels (default 64; --quick: 48)")
    p.add_argument("--fine-accuracy", default="low")
    p.add_argument("--fine-level", type=int, default=0, help="level the blocks register at")
    p.add_argument("--coarse-factor", type=float, default=2.0,
                   help="coarse step at the base spacing times this (default 2)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-budget", default=None,
                   help="passed to register(memory_budget=...) when it takes it")
    p.add_argument("--export-ants", action="store_true",
                   help="also write transforms/ for ANTs (ITK holds the fine field whole)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--cases-only", action="store_true", help="build the cases, run nothing")
    p.add_argument("--keep-output", action="store_true", help="keep the registered stores")
    p.add_argument("--with-earlier", action="store_true",
                   help="judge the goals, table and figure with the latest earlier runs of "
                        "the other factors at the same settings (from results/scale.json), "
                        "e.g. a long 64x run made on its own after 1x and 8x")
    p.add_argument("--defaults", action="store_true",
                   help="register at ngffreg's defaults (issue 17); --chunk-size, "
                        "--fine-accuracy, --fine-level, --coarse-factor and --workers unused")
    args = p.parse_args()
    level = args.base_level if args.base_level is not None else (2 if args.quick else 0)
    factors = args.factors or ([1, 8, 64] if not args.quick or args.with_64 else [1, 8])
    for f in factors:
        cube_root(f)
    chunk = args.chunk_size or (48 if args.quick else 64)
    WORK.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cases = {f: ensure_case(args.data, level, f) for f in sorted(set(factors))}
    if args.cases_only:
        return
    runs = []
    for f, (folder, made) in cases.items():
        meta = json.loads((folder / "case.json").read_text())
        print(f"registering the {f}× case {tuple(meta['shape'])} "
              f"({meta['voxels'] / 1e6:.1f} M voxels) ...", flush=True)
        res = run_one(folder, args, chunk)
        res.pop("log", None)
        res.update(factor=f, shape=meta["shape"], voxels=meta["voxels"],
                   spacing=meta["spacing"], make=made)
        if not res.get("failed"):
            res["s_per_mvoxel"] = res["register_s"] / (meta["voxels"] / 1e6)
            print(f"  {res['register_s']:.0f} s in register(), peak "
                  f"{res['peak_rss_gib']:.2f} GiB, TRE median {res['tre_median_vox']:.3f} "
                  f"voxel", flush=True)
        runs.append(res)
    command = " ".join(["benchmarks/bench_scale.py", *sys.argv[1:]])
    record = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                         f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
              "command": command, "code": code_version(), "base_level": level, "factors": factors,
              "chunk_size": chunk, "fine_accuracy": args.fine_accuracy,
              "fine_level": args.fine_level, "coarse_factor": args.coarse_factor,
              "workers": args.workers, "memory_budget": args.memory_budget,
              "export_ants": args.export_ants, "defaults": args.defaults,
              "total_s": round(time.perf_counter() - t_start, 1), "runs": runs}
    RESULTS.parent.mkdir(exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*old, record], indent=1, default=float) + "\n")
    if args.with_earlier:
        runs = sorted(earlier_runs(old, record) + runs, key=lambda r: r["voxels"])
    figure(runs, f"bench_scale: brain level {level} × {factors}, "
                 + ("ngffreg at its defaults" if args.defaults else
                    f"blocks of {chunk}, fine_accuracy={args.fine_accuracy}, "
                    f"{args.workers} workers"))
    print()
    print(table(runs))
    print("\n".join(["", *goals(runs)]))
    if args.memory_budget and runs and not runs[0].get("memory_budget_passed", True):
        print("- note: register() does not take memory_budget= yet; it was not passed")
    print(f"\ntotal {record['total_s']:.0f} s; results appended to {RESULTS}, figure {FIGURE}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_make":
        make_case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_run":
        a = sys.argv[2:]
        run_case(Path(a[0]), Path(a[1]), int(a[2]), a[3], int(a[4]), a[5] or None,
                 int(a[6]), float(a[7]), a[8] == "1", a[9] == "1", a[10] == "1")
    else:
        main()
