"""Benchmark: 10⁷ points through a sequence [affine, displacement field] whose field is
larger than this machine's memory.

The field is lazy (dask, chunks 128³, float32) and generated chunk by chunk, smooth
(a few millimetres of displacement), so nothing but the chunks the points touch is ever
materialised. The points are uniformly scattered over the whole field (the worst case:
every chunk is needed). Measured in a child process: wall time, points per second and
the peak resident memory of the whole process tree (sampled every 0.1 s). The answer is
checked against the analytic field on a sample of points.

Usage::

    .venv/bin/python benchmarks/bench_points.py                  # 10⁷ points, 40.5 GiB field
    .venv/bin/python benchmarks/bench_points.py --points 1000000 --size 512   # quick

Results are appended to ``benchmarks/results/points.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench_convert import run_sampled

HERE = Path(__file__).resolve().parent

_CHILD = """
import sys, time, json, numpy as np, dask.array as da
from ngffreg.transforms import Affine, DisplacementField, Sequence
n_points, size, chunk = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
K = 2 * np.pi / 97.0

def analytic(p):  # displacement (z, y, x) at physical points (N, 3), 1 mm spacing
    return np.stack([2.0 * np.sin(K * p[:, 2]), 1.5 * np.cos(K * p[:, 0]),
                     np.sin(K * p[:, 1])], axis=1)

def block(block_info=None):
    (_, _), (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    z = np.arange(z0, z1, dtype=np.float32)[:, None, None]
    y = np.arange(y0, y1, dtype=np.float32)[None, :, None]
    x = np.arange(x0, x1, dtype=np.float32)[None, None, :]
    shape = (z1 - z0, y1 - y0, x1 - x0)
    out = np.empty((3, *shape), dtype=np.float32)
    out[0] = np.broadcast_to(2.0 * np.sin(K * x), shape)
    out[1] = np.broadcast_to(1.5 * np.cos(K * z), shape)
    out[2] = np.broadcast_to(np.sin(K * y), shape)
    return out

chunks = da.core.normalize_chunks((3, chunk, chunk, chunk), (3, size, size, size))
data = da.map_blocks(block, chunks=chunks, dtype=np.float32)
field = DisplacementField.from_array(data, spacing=1.0, unit="mm")
shift = Affine.from_matrix_offset(np.eye(3), [0.5, -0.25, 0.75])
seq = Sequence(transforms=(shift, field))
rng = np.random.default_rng(0)
pts = rng.uniform(2, size - 3, size=(n_points, 3))
start = time.perf_counter()
out = seq.apply(pts)
elapsed = time.perf_counter() - start
check = rng.choice(n_points, 10000, replace=False)
moved = pts[check] + [0.5, -0.25, 0.75]
err = np.abs(out[check] - (moved + analytic(moved))).max()
print(json.dumps({"seconds": elapsed, "max_error_mm": float(err),
                  "field_gib": data.nbytes / 2**30, "chunks": int(np.prod(data.numblocks))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--size", type=int, default=1536, help="field edge in voxels (cube)")
    ap.add_argument("--chunk", type=int, default=128)
    args = ap.parse_args()
    run = run_sampled([sys.executable, "-c", _CHILD, str(args.points), str(args.size),
                       str(args.chunk)])
    child = json.loads(run["log"].strip().splitlines()[-1])
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
        "points": args.points, "field_shape": [3, args.size, args.size, args.size],
        "field_gib": round(child["field_gib"], 2), "field_chunks": child["chunks"],
        "apply_seconds": round(child["seconds"], 2),
        "points_per_second": round(args.points / child["seconds"]),
        "process_seconds": run["wall_s"],
        "peak_rss_gib": run["peak_rss_gib"],
        "max_error_mm": child["max_error_mm"],
    }
    print(json.dumps(result, indent=2))
    out = HERE / "results" / "points.json"
    out.parent.mkdir(exist_ok=True)
    history = json.loads(out.read_text()) if out.is_file() else []
    history.append(result)
    out.write_text(json.dumps(history, indent=2) + "\n")


if __name__ == "__main__":
    main()
