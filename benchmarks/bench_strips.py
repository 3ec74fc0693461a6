"""A known map where the moving round did not image strips of the fixed one: TRE where the
moving image has data and where it has none (issue 17).

The real EASI-FISH pair's second round misses strips of the first (about 15 % of its
foreground: the rounds are offset by about −10, −36, −84 voxels). The foreground NCC
rewards a fit that fills such strips with tissue pulled from the edge of the data, so this
benchmark measures against a truth instead:

- fixed: a 96×256×320 crop of the pair's fixed round (z 100:196, y 100:356, x 200:520,
  0.84×0.92×0.92 µm);
- a smooth random map ``S`` (``ngffreg.synthetic.random_deformation``, seed 3, coarse part
  up to 4 voxels, fine part up to 1 voxel);
- moving: ``fixed(S(x))`` sampled (cubic B-spline) from a crop 16 voxels larger on every
  side, so that it holds real tissue wherever ``S`` leads, then cut: its first 8 z, 24 y
  and 48 x slices are dropped (its origin moves with them), as a round that did not image
  them;
- ``ngffreg.register(fixed, moving, workers=2)`` at its defaults, once per block method
  named on the command line (``default``: ``Greedy()``; ``fill``:
  ``Greedy(data_only=False)``, which also fits where the moving block has no data);
- TRE ``|T(p) − S⁻¹(p)|`` at 20,000 random foreground points (smoothed fixed above Otsu's
  threshold, seed 0), median and p95 in µm, apart for the points whose true match lies in
  the moving image (``covered``) and those in the dropped strips (``strip``); "before" is
  the identity.

Usage::

    NGFFREG_DATA_DIR=../shared/data .venv/bin/python benchmarks/bench_strips.py default fill

Prints one line per method and adds a record (command, load, versions, results) to
``benchmarks/results/strips.json``. The coarse step's greedy stage follows the block
method's ``data_only`` only through the code's default (``Greedy().data_only``), so
``fill`` here changes the blocks alone.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CROP = (slice(100, 196), slice(100, 356), slice(200, 520))
GROW = 16
CUT = (8, 24, 48)
POINTS = 20_000


def data_dir() -> Path:
    return Path(os.environ.get("NGFFREG_DATA_DIR", HERE.parent.parent / "shared" / "data"))


def case() -> tuple:
    import ngffreg
    from ngffreg.image import Grid, load
    from ngffreg.synthetic import random_deformation

    fix = ngffreg.open_image(data_dir() / "easifish" / "fix.ome.zarr")
    fixed = load(fix.isel(z=CROP[0], y=CROP[1], x=CROP[2]))
    big = load(fix.isel(**{d: slice(s.start - GROW, s.stop + GROW)
                           for d, s in zip("zyx", CROP, strict=True)}))
    truth = random_deformation(Grid.of(fixed), seed=3, coarse_amplitude=4.0,
                               fine_amplitude=1.0)
    full = load(ngffreg.warp(big, truth, like=fixed, interpolator="bSpline"))
    if float((np.asarray(full.values) == 0).mean()) > 1e-3:
        raise SystemExit("the synthetic moving image has zero bands: grow the source crop")
    moving = full.isel(z=slice(CUT[0], None), y=slice(CUT[1], None), x=slice(CUT[2], None))
    return fixed, moving, truth


def points(fixed, truth) -> tuple:
    from scipy import ndimage

    from ngffreg.image import Grid
    from ngffreg.qc import otsu_threshold

    g = Grid.of(fixed)
    smooth = ndimage.gaussian_filter(np.asarray(fixed.values, np.float32), 1.0)
    idx = np.argwhere(smooth > otsu_threshold(smooth))
    rng = np.random.default_rng(0)
    idx = idx[rng.choice(len(idx), min(POINTS, len(idx)), replace=False)]
    pts = g.frame_origin + g.spacing * (idx + rng.uniform(-0.5, 0.5, idx.shape))
    match = truth.apply_inverse(pts)
    covered = np.all((match - g.frame_origin) / g.spacing >= np.array(CUT) - 0.5, axis=1)
    return pts, match, covered


def code_version(package: Path) -> str:
    """The commit of the ngffreg that runs (``PYTHONPATH`` may point at another tree)."""
    import subprocess

    p = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "."],
                           capture_output=True, text=True).stdout.strip()
    return (p.stdout.strip() or "unknown") + (" (modified)" if dirty else "")


def main() -> None:
    import ngffreg
    from ngffreg.registration.methods import Greedy

    methods = sys.argv[1:] or ["default"]
    methods_known = {"default": Greedy, "fill": lambda: Greedy(data_only=False)}
    for m in methods:
        if m not in methods_known:
            raise SystemExit(f"unknown method {m!r}; use {', '.join(methods_known)}")
    load_start = os.getloadavg()
    fixed, moving, truth = case()
    pts, match, covered = points(fixed, truth)
    before = np.linalg.norm(pts - match, axis=1)
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "load_at_start": [round(v, 2) for v in load_start],
              "versions": {"ngffreg": ngffreg.__version__, "numpy": np.__version__},
              "code": code_version(Path(ngffreg.__file__).parent),
              "points": len(pts), "covered_fraction": round(float(covered.mean()), 3),
              "before": {part: [round(float(np.median(before[m])), 3),
                                round(float(np.percentile(before[m], 95)), 3)]
                         for part, m in (("covered", covered), ("strip", ~covered))},
              "results": {}}
    print(f"points {len(pts)}, {covered.mean():.0%} where the moving image has data; "
          f"before (median, p95 µm): {record['before']}", flush=True)
    for name in methods:
        t = time.perf_counter()
        result = ngffreg.register(fixed, moving, method=methods_known[name](), workers=2)
        err = np.linalg.norm(result.transform.apply(pts) - match, axis=1)
        res = {"seconds": round(time.perf_counter() - t, 1),
               "blocks": {s: sum(1 for b in result.blocks if b["status"] == s)
                          for s in ("ok", "rejected", "declined", "skipped", "failed")}}
        for part, m in (("covered", covered), ("strip", ~covered)):
            res[part] = [round(float(np.median(err[m])), 3),
                         round(float(np.percentile(err[m], 95)), 3)]
        record["results"][name] = res
        print(name, json.dumps(res), flush=True)
    record["load_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = HERE / "results" / "strips.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps([*runs, record], indent=1) + "\n")


if __name__ == "__main__":
    main()
