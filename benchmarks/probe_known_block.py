"""Re-run single blocks of a `bench_easifish.py --known` run against the truth (issue 17).

For each block index given, the block is rebuilt as the run built it (fixed region, the
run's coarse transform, the pre-warp with where it read moving data) and fitted by
``Greedy`` variants with the judge turned off (``min_gain=-9``); printed per variant: the
held-out correlation before → after and the error against the known map (median / p95 µm)
at the fixed foreground voxels (above the block's 60th percentile) of the block's core,
beside the coarse transform's.

Usage::

    .venv/bin/python benchmarks/probe_known_block.py [--out OUT.ome.zarr] '[[0,1,11],[1,7,1]]'

``--out`` defaults to the known case's ngffreg output; the known case's folder is
``benchmarks/_work/easifish_bench/known``. Run it with another ``PYTHONPATH=<tree>/src``
to compare code versions on the same blocks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_easifish import known_truth  # benchmarks/, the script's own folder

from ngffreg.blocks import core_slices, moving_region
from ngffreg.image import Grid, load
from ngffreg.io.read import open_image
from ngffreg.registration.blockwise import PREWARP_INTERPOLATOR
from ngffreg.registration.methods import BlockInfo, Greedy
from ngffreg.transforms import Sequence
from ngffreg.transforms.ngff.decode import read_registration
from ngffreg.warp import warp_covered

CASE = Path(__file__).parent / "_work" / "easifish_bench" / "known"
VARIANTS = {"data_only": Greedy(min_gain=-9), "fill": Greedy(data_only=False, min_gain=-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("blocks", help="JSON list of block indices, e.g. '[[0,1,11]]'")
    ap.add_argument("--out", default=str(CASE / "ngffreg" / "out.ome.zarr"))
    args = ap.parse_args()
    want = [list(b) for b in json.loads(args.blocks)]
    out = Path(args.out)
    case = json.loads((CASE / "case.json").read_text())
    fwd = read_registration(out)
    fwd = getattr(fwd, "forward", fwd)
    initial = Sequence(transforms=fwd.transforms[1:])  # the run's transform less its fine field
    fixed, moving = open_image(case["fixed"]), open_image(case["moving"])
    truth_map = known_truth(case, CASE)
    for path in sorted((out / "blocks").glob("b*/zarr.json")):
        rec = json.loads(path.read_text())["attributes"]["ngffreg_block"]
        if rec["index"] not in want:
            continue
        sl = tuple(slice(a, b) for a, b in rec["region"])
        fixed_block = load(fixed.isel(z=sl[0], y=sl[1], x=sl[2]))
        grid = Grid.of(fixed_block)
        region = moving_region(grid, initial, Grid.of(moving))
        part = load(moving.isel(z=region[0], y=region[1], x=region[2]))
        pre, covered = warp_covered(part, initial, like=grid, interpolator=PREWARP_INTERPOLATOR)
        core = core_slices([tuple(c) for c in rec["core"]], [tuple(r) for r in rec["region"]])
        info = BlockInfo(rec["id"] if "id" in rec else 0, tuple(rec["index"]),
                         tuple(map(tuple, rec["core"])), tuple(map(tuple, rec["region"])), 0,
                         "micrometer", None if covered.all() else covered)
        axes = [np.arange(s.start or 0, s.stop if s.stop is not None else n)
                for s, n in zip(core, grid.shape, strict=True)]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)[::5]
        values = np.asarray(fixed_block.values)
        idx = idx[values[tuple(idx.T)] > np.percentile(values, 60)]
        pts = grid.frame_origin + grid.spacing * idx
        truth = truth_map.apply_inverse(pts)

        def tre(transform, pts=pts, truth=truth):
            e = np.linalg.norm(transform.apply(pts) - truth, axis=1)
            return f"TRE {np.median(e):.3f} / {np.percentile(e, 95):.3f} µm"

        print(rec["index"], f"coverage {covered.mean():.3f}", "coarse", tre(initial), flush=True)
        for name, method in VARIANTS.items():
            res = method(fixed_block, pre, initial, info)
            m = res.metrics or {}
            print(f"   {name}: held-out {m.get('held_out_before', float('nan')):.4f} → "
                  f"{m.get('held_out_after', float('nan')):.4f}",
                  tre(Sequence(transforms=[res.transform, initial])), flush=True)


if __name__ == "__main__":
    main()
