"""Benchmark: registration of the brainreg brain under a known deformation.

Issue 5: wall time, peak memory of the whole process tree and target registration error
(TRE) of ngffreg against whole-volume ANTs, same cores for each. The case: the
``brainreg/brain`` volume (50 × 40 × 40 µm) at pyramid level ``--level`` (0 = full
resolution, 14 M voxels; 1 = 2× down, the quick mode) is the fixed image; the moving
image is it resampled through ``ngffreg.synthetic.random_deformation(seed=1)`` (a smooth
random field of 4 voxels with a 1-voxel fine-scale part), so the true fixed → moving map
is known. TRE is measured at up to 50,000 foreground voxels, in µm and in voxels of the
smallest spacing.

Runs, each in its own child process (wall time and peak RSS of the child's process tree,
sampled every 0.1 s; the pair is built once and saved under ``benchmarks/_work/register``):

1. ``ngffreg``: ``register(fixed, moving, downsample_factor=2, chunk_size=…,
   fine_accuracy=…, workers=2)``;
2. ``ants_syn`` (``--ants``): whole-volume ``ants.registration(fixed, moving, "SyN")``
   (ANTs' defaults: no full-resolution iterations);
3. ``ants_synrs`` (``--ants-full``): whole-volume ``antsRegistrationSyN[s]`` (rigid +
   affine + SyN with cross-correlation, 100×70×50×20; ~42 min at full resolution here).

Usage::

    .venv/bin/python benchmarks/bench_register.py --quick            # level 1, ngffreg only
    .venv/bin/python benchmarks/bench_register.py --quick --ants     # + default ANTs SyN
    .venv/bin/python benchmarks/bench_register.py --level 0 --ants --ants-full   # the issue's
    .venv/bin/python benchmarks/bench_register.py --level 0 --defaults           # issue 14

Results are appended to ``benchmarks/results/register.json``; a Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import psutil
from bench_convert import run_sampled

HERE = Path(__file__).resolve().parent
PY = sys.executable
RESULTS = HERE / "results" / "register.json"

_MAKE = """
import sys, numpy as np
from ngffreg.registration.coarse import image_levels
from ngffreg.image import Grid
from ngffreg.synthetic import random_deformation
from ngffreg.warp import warp
level, folder = int(sys.argv[1]), sys.argv[2]
brain = image_levels(sys.argv[3], voxel_size=(50, 40, 40), unit="um")[level]
fixed = brain.copy(data=np.asarray(brain.data.compute(), dtype=np.float32))
s = random_deformation(Grid.of(fixed), seed=1)
moving = warp(fixed, s, like=fixed).compute()
np.save(folder + "/fixed.npy", fixed.values)
np.save(folder + "/moving.npy", np.asarray(moving.values))
np.save(folder + "/truth_field.npy", np.asarray(s.field.values))
g, fg = Grid.of(fixed), s.grid
np.save(folder + "/grids.npy", np.array([g.spacing, g.origin, fg.spacing, fg.origin]))
"""

_LOAD = """
import sys, time, json, numpy as np
from ngffreg.image import make_image
from ngffreg.transforms import DisplacementField
folder = sys.argv[1]
sp, org, fsp, forg = np.load(folder + "/grids.npy")
fixed = make_image(np.load(folder + "/fixed.npy"), spacing=sp, origin=org, unit="um")
moving = make_image(np.load(folder + "/moving.npy"), spacing=sp, origin=org, unit="um")
truth = DisplacementField.from_array(np.load(folder + "/truth_field.npy"), spacing=fsp,
                                     origin=forg, unit="um", outside="nearest")

def report(transform, seconds):
    from ngffreg.demo import target_registration_error
    err = target_registration_error(transform, truth, fixed)
    vox = float(np.min(sp))
    print("RESULT " + json.dumps({
        "seconds": seconds, "tre_median_um": float(np.median(err)),
        "tre_p95_um": float(np.percentile(err, 95)),
        "tre_median_vox": float(np.median(err)) / vox,
        "tre_p95_vox": float(np.percentile(err, 95)) / vox}), flush=True)
"""

_NGFFREG = _LOAD + """
from ngffreg.registration.register import register
if __name__ == "__main__":
    t = time.perf_counter()
    if sys.argv[2] == "defaults":  # ngffreg at its defaults, nothing but the worker count
        r = register(fixed, moving, workers=int(sys.argv[4]))
    else:
        r = register(fixed, moving, downsample_factor=2, chunk_size=int(sys.argv[2]),
                     fine_accuracy=sys.argv[3], workers=int(sys.argv[4]))
    report(r.transform, time.perf_counter() - t)
    print("TIMING " + " ".join(f"{k}={v:.1f}" for k, v in r.timings.items()), flush=True)
"""

_ANTS = _LOAD + """
import ants
from ngffreg import itk_bridge
from ngffreg.image import Grid
from ngffreg.transforms.files import read_ants_transforms
kind = sys.argv[2]
g = Grid.of(fixed)
k = itk_bridge.ants_length_scale(g.spacing)
f = itk_bridge.to_ants(fixed.values, g.spacing, g.origin, g.direction, k)
m = itk_bridge.to_ants(moving.values, g.spacing, g.origin, g.direction, k)
t = time.perf_counter()
reg = ants.registration(f, m, kind, random_seed=1)
seconds = time.perf_counter() - t
from ngffreg.registration.ants_backend import _unscale
report(_unscale(read_ants_transforms(reg["fwdtransforms"]), k, "micrometer"), seconds)
"""


def _run(code: str, args: list[str], label: str) -> dict:
    res = run_sampled([PY, "-c", code, *args], label=label)
    out = next((json.loads(line[7:]) for line in res.get("log", "").splitlines()
                if line.startswith("RESULT ")), None)
    res.update(out or {"failed": True})
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="level 1 (2x down), ngffreg only")
    p.add_argument("--level", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--fine-accuracy", default="low")
    p.add_argument("--defaults", action="store_true",
                   help="ngffreg at its defaults (only --workers is passed)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-ngffreg", action="store_true", help="only the ANTs runs")
    p.add_argument("--ants", action="store_true", help="also whole-volume default ANTs SyN")
    p.add_argument("--ants-full", action="store_true",
                   help="also whole-volume antsRegistrationSyN[s] (~42 min at level 0)")
    args = p.parse_args()
    level = args.level if args.level is not None else (1 if args.quick else 0)
    chunk = args.chunk_size or (48 if level else 64)
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "brainreg" / "brain"
    work = HERE / "_work" / "register" / f"level{level}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "fixed.npy").is_file():
        print(f"building the pair at level {level} ...", flush=True)
        run_sampled([PY, "-c", _MAKE, str(level), str(work), str(data)])
    runs = {}
    if not args.no_ngffreg:
        runs["ngffreg"] = _run(_NGFFREG, [str(work), "defaults" if args.defaults
                                          else str(chunk), args.fine_accuracy,
                                          str(args.workers)], "ngffreg")
    if args.ants:
        runs["ants_syn"] = _run(_ANTS, [str(work), "SyN"], "ants SyN")
    if args.ants_full:
        runs["ants_synrs"] = _run(_ANTS, [str(work), "antsRegistrationSyN[s]"],
                                  "ants antsRegistrationSyN[s]")
    record = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
                         f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
              "level": level, "defaults": args.defaults,
              "chunk_size": None if args.defaults else chunk,
              "fine_accuracy": None if args.defaults else args.fine_accuracy,
              "workers": args.workers, "runs": runs}
    RESULTS.parent.mkdir(exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*old, record], indent=1))
    print("\n| run | wall s | peak RSS GiB | TRE median µm (voxel) | TRE p95 µm (voxel) |")
    print("|---|---|---|---|---|")
    for name, r in runs.items():
        if r.get("failed"):
            print(f"| {name} | failed | | | |")
            continue
        print(f"| {name} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} | "
              f"{r['tre_median_um']:.1f} ({r['tre_median_vox']:.3f}) | "
              f"{r['tre_p95_um']:.1f} ({r['tre_p95_vox']:.3f}) |")


if __name__ == "__main__":
    main()
