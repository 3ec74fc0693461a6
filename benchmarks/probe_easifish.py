"""Issue 17 probe: ``ngffreg register`` at its defaults on the real EASI-FISH pair
(``$NGFFREG_DATA_DIR/easifish``, 131 M voxels each), with the wall time and the peak RSS of
the whole process tree (sampled every 0.1 s, benchmarks/bench_convert.TreeSampler).

    python benchmarks/probe_easifish.py [OUT_DIR]

Writes OUT_DIR/out.ome.zarr (default benchmarks/_work/easifish) and prints, and writes
OUT_DIR/result.json: command, exit status, wall seconds, peak GiB, most threads. Not the
issue's full benchmark: no bigstream side by side and no known deformation yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_convert import TreeSampler  # noqa: E402


def main() -> None:
    data = Path(os.environ.get("NGFFREG_DATA_DIR", HERE.parent.parent / "shared" / "data"))
    out = Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "_work" / "easifish")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).with_name("ngffreg")), "register",
           str(data / "easifish" / "fix.ome.zarr"), str(data / "easifish" / "mov.ome.zarr"),
           "-o", str(out / "out.ome.zarr"), "--overwrite"]
    start = time.time()
    with open(out / "stdout.log", "w") as so, open(out / "stderr.log", "w") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        with TreeSampler(proc.pid) as sampler:
            rc = proc.wait()
    result = {"cmd": cmd, "rc": rc, "wall_s": round(time.time() - start, 1),
              "peak_rss_gib": round(sampler.peak / 2**30, 3), "threads": sampler.threads,
              "load_avg_at_end": os.getloadavg()}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
