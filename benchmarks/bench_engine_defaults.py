"""Benchmark: choosing the greedy block engine's defaults (issue 14).

The brainreg brain at full resolution (50 × 40 × 40 µm) and a copy deformed by
``ngffreg.synthetic.random_deformation(seed=1)`` (the case of ``bench_register.py``), so the
true fixed → moving map is known. Up to 8 blocks of 64³ voxels plus 16 voxels of overlap
per side (96³) at fixed places inside the brain; each configuration of
:class:`ngffreg.registration.methods.Greedy` registers every block (identity pre-warp),
one thread (``NUMBA_NUM_THREADS=1``, as on a worker), and is measured at the foreground
voxels of the block cores: TRE median and 95th percentile in voxels of 40 µm, CPU seconds
per block and per grown voxel, and how many blocks were accepted (held-out gain > 0).

Usage::

    NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/bench_engine_defaults.py \\
        --blocks 4 --configs '[{}, {"sigma_field": 0.707, "sigma_update": 1.732}]'

Appends to ``benchmarks/results/engine_defaults.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "engine_defaults.json"
CORE, OVERLAP = 64, 16
STARTS = [(z, y, x) for z in (60, 140) for y in (40, 100) for x in (60, 150)]


def _pair(data_dir: Path):
    from ngffreg.image import Grid
    from ngffreg.registration.coarse import image_levels
    from ngffreg.synthetic import random_deformation
    from ngffreg.warp import warp

    brain = image_levels(str(data_dir / "brainreg" / "brain"), voxel_size=(50, 40, 40),
                         unit="um")[0]
    fixed = brain.copy(data=np.asarray(brain.data.compute(), dtype=np.float32))
    truth = random_deformation(Grid.of(fixed), seed=1)
    moving = warp(fixed, truth, like=fixed).compute()
    return fixed, np.asarray(moving.values), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--configs", default="[{}]", help="JSON list of Greedy options")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("NGFFREG_DATA_DIR", HERE.parent.parent
                                                    / "shared" / "data")))
    args = parser.parse_args()
    from ngffreg.image import Grid, make_image
    from ngffreg.qc import otsu_threshold
    from ngffreg.registration.methods import BlockInfo, Greedy
    from ngffreg.transforms import Identity

    fixed, moving, truth = _pair(args.data_dir)
    thr = otsu_threshold(np.asarray(fixed.values))
    grid = Grid.of(fixed)
    rows = []
    for options in json.loads(args.configs):
        method = Greedy(**options)
        errors, before, cpu, statuses = [], [], [], []
        for z, y, x in STARTS[:args.blocks]:
            sl = tuple(slice(a - OVERLAP, a + CORE + OVERLAP) for a in (z, y, x))
            fb = fixed.isel(z=sl[0], y=sl[1], x=sl[2])
            mb = make_image(moving[sl], spacing=grid.spacing, origin=Grid.of(fb).origin,
                            unit=grid.unit)
            core = (slice(OVERLAP, OVERLAP + CORE),) * 3
            fg = (np.asarray(fb.values)[core] > thr).ravel()
            pts = Grid.of(fb).points(core)[fg]
            want = truth.apply_inverse(pts)
            info = BlockInfo(0, (0, 0, 0), ((OVERLAP, OVERLAP + CORE),) * 3,
                             ((0, CORE + 2 * OVERLAP),) * 3, 0, grid.unit)
            t = time.process_time()
            result = method(fb, mb, Identity(), info)
            cpu.append(time.process_time() - t)
            statuses.append(result.status)
            mapped = result.transform.apply(pts) if result.status == "ok" else pts
            errors.append(np.linalg.norm(mapped - want, axis=1) / grid.spacing.min())
            before.append(np.linalg.norm(pts - want, axis=1) / grid.spacing.min())
        e, b = np.concatenate(errors), np.concatenate(before)
        voxels = (CORE + 2 * OVERLAP) ** 3
        rows.append({"options": options, "tre_median_vox": float(np.median(e)),
                     "tre_p95_vox": float(np.percentile(e, 95)),
                     "before_median_vox": float(np.median(b)),
                     "cpu_s_per_block": float(np.mean(cpu[1:] or cpu)),
                     "us_per_voxel": float(np.mean(cpu[1:] or cpu)) / voxels * 1e6,
                     "accepted": statuses.count("ok"), "blocks": len(statuses)})
        print(json.dumps(rows[-1]), flush=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor()
              or platform.machine(), "load": os.getloadavg(), "cpus": os.cpu_count(),
              "numba_threads": os.environ.get("NUMBA_NUM_THREADS"), "rows": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*old, record], indent=1))
    print("\n| options | TRE median / p95 (voxel) | CPU s per 96³ block | µs per voxel | "
          "accepted |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| `{json.dumps(r['options'])}` | {r['tre_median_vox']:.3f} / "
              f"{r['tre_p95_vox']:.3f} | {r['cpu_s_per_block']:.2f} | "
              f"{r['us_per_voxel']:.2f} | {r['accepted']}/{r['blocks']} |")


if __name__ == "__main__":
    main()
