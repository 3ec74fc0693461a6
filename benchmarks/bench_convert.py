"""Benchmark: convert a large synthetic uint16 volume into a 5-level OME-Zarr pyramid.

Measured in one run, on the same machine and the same source:

- a plain Zarr copy of the source array (read + write, same chunks and codec): the I/O bound;
- ``ngffreg convert`` to a 5-level OME-Zarr 0.5 pyramid.

For each: wall time, throughput (source bytes / s) and the peak resident memory of the
whole process tree, sampled every 0.1 s. Goals (issue 2): peak ≤ 2 GiB, convert throughput
≥ 0.5 × the plain copy's.

Usage::

    .venv/bin/python benchmarks/bench_convert.py                 # 8 GiB (1024×2048×2048)
    .venv/bin/python benchmarks/bench_convert.py --shape 256 512 512   # quick

Results are appended to ``benchmarks/results/convert.json`` and printed as a Markdown row
for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
PY = sys.executable
NGFFREG = str(Path(PY).with_name("ngffreg"))

_MAKE_SOURCE = """
import sys, numpy as np, dask.array as da, zarr
from ngffreg.synthetic import synthetic_volume
shape = tuple(int(v) for v in sys.argv[2:5]); chunk = int(sys.argv[5])
base = synthetic_volume((2 * chunk,) * 3, spacing=1).values
def tile(block_info=None):
    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    i, j, k = block_info[None]["chunk-location"]
    b = base[(z0 % (2 * chunk)):(z0 % (2 * chunk)) + z1 - z0,
             (y0 % (2 * chunk)):(y0 % (2 * chunk)) + y1 - y0,
             (x0 % (2 * chunk)):(x0 % (2 * chunk)) + x1 - x0]
    return b + np.uint16((7 * i + 3 * j + k) % 50)
arr = da.map_blocks(tile, dtype="uint16", chunks=da.core.normalize_chunks(chunk, shape))
z = zarr.create_array(sys.argv[1], shape=shape, chunks=(chunk,) * 3, dtype="uint16", overwrite=True)
da.store(arr, z, lock=False)
"""

_COPY = """
import sys, dask.array as da, zarr
src = zarr.open_array(sys.argv[1], mode="r")
dst = zarr.create_array(sys.argv[2], shape=src.shape, chunks=src.chunks, dtype=src.dtype,
                        compressors=src.compressors, overwrite=True)
da.store(da.from_zarr(src), dst, lock=False)
"""


class TreeSampler:
    """The peak RSS (bytes) and the most threads of process ``pid`` and all its
    descendants, sampled every 0.1 s by a thread while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.threads = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                procs = [p for p in (root, *root.children(recursive=True)) if p.is_running()]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
                self.threads = max(self.threads, sum(p.num_threads() for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_sampled(cmd: list[str], label: str | None = None) -> dict:
    """Run ``cmd``; return wall time and the peak RSS of its whole process tree.

    With ``label``, the child's indented and ``TIMING`` lines are echoed live, and each
    ``key=value`` on a ``TIMING`` line is added to the result."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    with TreeSampler(proc.pid) as sampler:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if label and (line.startswith("    ") or line.startswith("TIMING")):
                print(f"  [{label}] {line.strip()}", flush=True)
        proc.wait()
        wall = time.perf_counter() - start
    peak = sampler.peak
    out = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    result = {"wall_s": round(wall, 2), "peak_rss_gib": round(peak / 2**30, 3),
              "log": out[-2000:]}
    for line in lines:
        if line.startswith("TIMING"):
            for item in line.split()[1:]:
                key, value = item.split("=")
                result[key] = round(float(value), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--shape", nargs=3, type=int, default=(1024, 2048, 2048), metavar=("Z", "Y", "X")
    )
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=HERE / "_work")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src, copy, out = work / "source.zarr", work / "copy.zarr", work / "out.ome.zarr"
    shape = tuple(args.shape)
    nbytes = 2 * shape[0] * shape[1] * shape[2]
    print(f"source {shape} uint16 = {nbytes / 2**30:.2f} GiB, chunks {args.chunk}^3", flush=True)
    if not src.exists():
        t = time.perf_counter()
        subprocess.run(
            [PY, "-c", _MAKE_SOURCE, str(src), *map(str, shape), str(args.chunk)], check=True
        )
        print(f"  made the source in {time.perf_counter() - t:.0f} s", flush=True)

    copy_r = run_sampled([PY, "-c", _COPY, str(src), str(copy)])
    print(f"  plain Zarr copy: {copy_r['wall_s']} s, peak {copy_r['peak_rss_gib']} GiB", flush=True)
    shutil.rmtree(copy, ignore_errors=True)
    conv_r = run_sampled(
        [
            NGFFREG,
            "convert",
            str(src),
            str(out),
            "--voxel-size",
            "1",
            "1",
            "1",
            "--unit",
            "um",
            "--levels",
            str(args.levels),
            "--chunks",
            str(args.chunk),
            "--overwrite",
            "--quiet",
        ]
    )
    print(f"  ngffreg convert: {conv_r['wall_s']} s, peak {conv_r['peak_rss_gib']} GiB", flush=True)
    out_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}",
        "shape": shape,
        "source_gib": round(nbytes / 2**30, 3),
        "levels": args.levels,
        "copy": {k: v for k, v in copy_r.items() if k != "log"},
        "convert": {k: v for k, v in conv_r.items() if k != "log"},
        "copy_mib_s": round(nbytes / 2**20 / copy_r["wall_s"], 1),
        "convert_mib_s": round(nbytes / 2**20 / conv_r["wall_s"], 1),
        "throughput_ratio": round(copy_r["wall_s"] / conv_r["wall_s"], 3),
        "output_gib_on_disk": round(out_bytes / 2**30, 3),
        "command": " ".join(
            [Path(PY).name, "benchmarks/bench_convert.py", "--shape", *map(str, shape)]
        ),
    }
    results = HERE / "results" / "convert.json"
    results.parent.mkdir(exist_ok=True)
    history = json.loads(results.read_text()) if results.exists() else []
    history.append(result)
    results.write_text(json.dumps(history, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"| {result['source_gib']} GiB {shape} | {args.levels} | {copy_r['wall_s']} s "
        f"({result['copy_mib_s']} MiB/s), {copy_r['peak_rss_gib']} GiB | {conv_r['wall_s']} s "
        f"({result['convert_mib_s']} MiB/s), {conv_r['peak_rss_gib']} GiB | "
        f"{result['throughput_ratio']} |"
    )
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
