"""bigstream's own example on the EASI-FISH pair, run by ``bench_easifish.py`` under
``.venv-bigstream`` (``make bigstream-env``; bigstream 5.0.3 needs zarr < 3). No ngffreg
import here.

    .venv-bigstream/bin/python benchmarks/bigstream_easifish.py INPUTS.zarr OUT_DIR [--cores 2]
    .venv-bigstream/bin/python benchmarks/bigstream_easifish.py --convention-check DIR

``INPUTS.zarr`` is the Zarr v2 group ``bench_easifish.py`` exports (``fix/highres``,
``mov/highres``, ``fix/lowres``, ``mov/lowres``, like the example's ``resources/*.n5``)
with ``pair.json`` (z, y, x spacings in µm).

The calls and settings are those of bigstream's tutorial for this data,
``notebooks/tutorials_out_of_date_but_still_maybe_helpful/bigstream_intro_tutorial.ipynb``
(JaneliaSciComp/bigstream): ``GLOBAL_STEPS`` by ``alignment_pipeline`` on the ``lowres``
arrays in memory, then ``LOCAL_STEPS`` by ``distributed_piecewise_alignment_pipeline`` on
``highres`` (blocks of ``BLOCKSIZE``, the global affine as static transform, written to
``deform.zarr``), then ``distributed_apply_transform`` of the moving ``highres`` through
``[affine, deform]`` (written to ``deformed.zarr``). The tutorial's TIFF and lowres
previews are left out (viewing aids, not registration).

Changes from the tutorial, all outside the algorithm:

- the cluster: the tutorial passes ``cluster_kwargs={}`` (ClusterWrap's ``local_cluster``, a
  default ``dask.distributed.LocalCluster``: on 2 cores, 2 workers × 1 thread); here a
  ``local_cluster`` of ``--cores`` single-threaded workers, built once for both distributed
  steps, without a dashboard. SimpleITK gets ``ITK_THREADS=--cores`` everywhere, which is
  what bigstream does by itself on a machine with that many physical cores (it takes the
  smaller of the physical cores and ``ITK_THREADS``), and keeps it so when the process is
  pinned to ``--cores`` CPUs of a larger machine;
- ``--no-global-safeguard`` (``bench_easifish.py`` passes it for crops only): the global
  ransac gets ``safeguard_exceptions=False``, so that on a small crop, where it finds fewer
  spots than its threshold (100), it returns the identity instead of raising, as the
  per-block ransac steps always do.

Writes, in OUT_DIR: ``affine.mat`` (the global affine, ``np.savetxt`` as in the tutorial),
``deform.zarr`` (the displacement field, fixed highres grid × 3, z, y, x µm),
``deformed.zarr`` (the moving image resampled) and ``bigstream.json``: seconds per phase
(the cluster start-up apart) and versions. Prints a ``TIMING`` line. bigstream's log (INFO,
main process and workers: spots found, seconds per block) goes to standard error.

``--stop-after SECONDS`` (a run too long for one sitting; ``bench_easifish.py
--bigstream-segment``): the run goes in segments that add up to the same result. No block
starts later than SECONDS after the segment began (blocks already running finish and are
written); every finished block leaves ``blocks/I_J_K.json`` (its seconds); the next
segment reuses ``affine.mat`` (``global.json`` holds its seconds) and gives bigstream only
the blocks without a record. bigstream's own code does all the work: only the list of
blocks its ``distributed_piecewise_alignment_pipeline`` hands to ``client.map`` is
filtered, and each call is timed. Its output accumulates in ``deform.zarr`` (opened with
mode ``a``, blocks added under its own locks), so a block written once is never written
again. A segment refuses to start if bigstream's log shows a block whose write began and
did not end. The resampling runs in the segment that finds every block done;
``bigstream.json`` then sums the segments.

``--convention-check DIR``: reads ``DIR/check_in.npz`` (a moving image, a fixed shape,
both spacings, an affine and a displacement field made by ``bench_easifish.py``) and writes
``DIR/check_out.npz``: the moving image resampled by bigstream's ``apply_transform(...,
transform_list=[affine, field])`` and the fixed grid points mapped by
``apply_transform_to_coordinates`` with the same list, so that ``bench_easifish.py`` can
check its reading of bigstream's transforms against bigstream itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"

#: The tutorial's global steps (on lowres): feature points + ransac, then an affine.
GLOBAL_STEPS = [
    ("ransac", {"blob_sizes": [6, 20]}),
    ("affine", {"shrink_factors": (2,), "smooth_sigmas": (2.5,),
                "optimizer_args": {"learningRate": 0.25, "minStep": 0.0,
                                   "numberOfIterations": 400}}),
]
#: The tutorial's local steps (per block, on highres): ransac, then a B-spline deform.
LOCAL_STEPS = [
    ("ransac", {"blob_sizes": [6, 20], "nspots": 1000}),
    ("deform", {"smooth_sigmas": (0.25,), "control_point_spacing": 128.0,
                "control_point_levels": (1,),
                "optimizer_args": {"learningRate": 0.25, "minStep": 0.0,
                                   "numberOfIterations": 10}}),
]
BLOCKSIZE = [128] * 3
#: bigstream's log line for a block whose write began / ended (``piecewise_align``).
WRITE_BEGIN, WRITE_END = "Writing block ", "Finished writing block "


class _Resumable:
    """A stand-in for ClusterWrap's cluster object that hands bigstream's block function
    only the blocks without a record in ``done`` and records each one it finishes; the
    rest (``client.gather``, the scheduler, the locks) is the real cluster's."""

    def __init__(self, cluster, done: Path, deadline: float):
        self._cluster, self._done, self._deadline = cluster, done, deadline

    def __getattr__(self, name):
        return getattr(self._cluster, name)

    @property
    def client(self):
        return _ResumableClient(self._cluster.client, self._done, self._deadline)


class _ResumableClient:
    def __init__(self, client, done: Path, deadline: float):
        self._client, self._done, self._deadline = client, done, deadline

    def __getattr__(self, name):
        return getattr(self._client, name)

    def map(self, func, items, **kwargs):
        import functools

        todo = [it for it in items if not block_record(self._done, it[0]).exists()]
        return self._client.map(functools.partial(_timed_block, func, self._done,
                                                  self._deadline), todo, **kwargs)


def block_record(done: Path, index) -> Path:
    return done / ("_".join(str(int(i)) for i in index) + ".json")


def _timed_block(func, done: Path, deadline: float, item, **kwargs):
    """bigstream's block function, unless the segment's deadline has passed; a record of
    the block once it is computed and written."""
    if time.time() > deadline:
        return False
    start = time.time()
    result = func(item, **kwargs)
    block_record(done, item[0]).write_text(json.dumps(
        {"index": [int(i) for i in item[0]], "seconds": round(time.time() - start, 2),
         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}))
    return result


def unfinished_writes(log: Path) -> list[str]:
    """Blocks whose write began in bigstream's log and never ended (a segment killed in
    the middle of a write leaves ``deform.zarr`` half-added there)."""
    if not log.exists():
        return []
    begun: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        for tag, step in ((WRITE_BEGIN, 1), (WRITE_END, -1)):
            if tag in line:
                key = line.split(tag, 1)[1].split(" at ", 1)[0]
                begun[key] = begun.get(key, 0) + step
    return [k for k, n in begun.items() if n > 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs", nargs="?")
    p.add_argument("out", nargs="?")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--no-global-safeguard", action="store_true",
                   help="crops only: the global ransac returns the identity instead of "
                        "raising when it finds too few spots (as the per-block ones do)")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="run in segments: no block starts later than this after the start; "
                        "finished blocks are kept and the next run does the rest")
    p.add_argument("--log", type=Path, default=None,
                   help="with --stop-after: bigstream's log, checked for a write that began "
                        "and did not end before a segment starts")
    p.add_argument("--convention-check", metavar="DIR")
    args = p.parse_args()
    if args.convention_check:
        return convention_check(Path(args.convention_check))
    if not (args.inputs and args.out):
        p.error("INPUTS and OUT are required")
    inputs, out = Path(args.inputs).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    segment_start = time.time()
    done = out / "blocks"
    if args.stop_after is not None:
        broken = unfinished_writes(args.log) if args.log else []
        if broken:
            raise SystemExit(f"bigstream's log shows writes that began and did not end "
                             f"({', '.join(broken)}): deform.zarr is half-added there; "
                             f"start the run again from nothing")
        done.mkdir(exist_ok=True)
    os.environ["ITK_THREADS"] = str(args.cores)
    os.chdir(out)  # bigstream writes its temporary zarr copies into the working directory

    import bigstream
    import dask
    import numpy as np
    import SimpleITK
    import zarr
    from bigstream.align import alignment_pipeline
    from bigstream.piecewise_align import distributed_piecewise_alignment_pipeline
    from bigstream.piecewise_transform import distributed_apply_transform
    from ClusterWrap.clusters import local_cluster

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    meta = json.loads((inputs / "pair.json").read_text())
    root = zarr.open_group(str(inputs), mode="r")
    sp = {k: np.asarray(meta[k], dtype=np.float64) for k in (
        "fix_lowres_spacing", "fix_highres_spacing", "mov_lowres_spacing",
        "mov_highres_spacing")}
    global_steps = copy.deepcopy(GLOBAL_STEPS)
    changed = {}
    if args.no_global_safeguard:
        global_steps[0][1]["safeguard_exceptions"] = False
        changed["global ransac"] = {"safeguard_exceptions": False}
    phases: dict[str, float] = {}

    t = time.perf_counter()
    segmented = args.stop_after is not None
    if segmented and (out / "global.json").exists():  # an earlier segment's
        affine = np.loadtxt(out / "affine.mat")
        print("    global: an earlier segment's affine", flush=True)
    else:
        # the global alignment: lowres arrays in memory
        fix_lowres_data, mov_lowres_data = root["fix/lowres"][...], root["mov/lowres"][...]
        affine = alignment_pipeline(fix_lowres_data, mov_lowres_data,
                                    sp["fix_lowres_spacing"], sp["mov_lowres_spacing"],
                                    global_steps)
        np.savetxt(out / "affine.mat", affine)
        phases["global_s"] = round(time.perf_counter() - t, 2)
        print(f"    global_s {phases['global_s']:.1f}", flush=True)
        if segmented:
            (out / "global.json").write_text(json.dumps({"global_s": phases["global_s"]}))

    t0 = time.perf_counter()
    with local_cluster(n_workers=args.cores, threads_per_worker=1, dashboard_address=None,
                       env={"ITK_THREADS": str(args.cores)}) as cluster:
        phases["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        cluster.client.run(logging.basicConfig, level=logging.INFO, format=LOG_FORMAT)
        fix_highres, mov_highres = root["fix/highres"], root["mov/highres"]
        t = time.perf_counter()
        deform = distributed_piecewise_alignment_pipeline(
            fix_highres, mov_highres,
            sp["fix_highres_spacing"], sp["mov_highres_spacing"],
            copy.deepcopy(LOCAL_STEPS),
            blocksize=BLOCKSIZE,
            write_path=str(out / "deform.zarr"),
            static_transform_list=[affine],
            cluster=(_Resumable(cluster, done, segment_start + args.stop_after)
                     if segmented else cluster),
        )
        phases["local_s"] = round(time.perf_counter() - t, 2)
        print(f"    local_s {phases['local_s']:.1f}", flush=True)
        if segmented:
            n_blocks = int(np.prod(np.ceil(np.array(fix_highres.shape)
                                           / np.array(BLOCKSIZE))))
            finished = len(list(done.glob("*.json")))
            segment = {"started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                time.localtime(segment_start)),
                       **phases, "blocks_done": finished, "blocks": n_blocks}
            with open(out / "segments.jsonl", "a") as f:
                f.write(json.dumps(segment) + "\n")
            if finished < n_blocks:
                print(f"SEGMENT blocks {finished}/{n_blocks}: run again to go on", flush=True)
                return
            segments = [json.loads(ln) for ln in
                        (out / "segments.jsonl").read_text().splitlines()]
            phases["global_s"] = json.loads((out / "global.json").read_text())["global_s"]
            phases["local_s"] = round(sum(g["local_s"] for g in segments), 2)
            phases["cluster_start_s"] = round(sum(g["cluster_start_s"] for g in segments), 2)
            phases["segments"] = len(segments)
        t = time.perf_counter()
        distributed_apply_transform(
            fix_highres, mov_highres,
            sp["fix_highres_spacing"], sp["mov_highres_spacing"],
            transform_list=[affine, deform],
            blocksize=BLOCKSIZE,
            write_path=str(out / "deformed.zarr"),
            cluster=cluster,
        )
        phases["resample_s"] = round(time.perf_counter() - t, 2)
        print(f"    resample_s {phases['resample_s']:.1f}", flush=True)
    if segmented:
        changed["run in segments"] = (f"{phases['segments']} segments (--stop-after): the "
                                      "block list split between runs, bigstream's code as is")
    register_s = phases["global_s"] + phases["local_s"] + phases["resample_s"]
    result = {
        "register_s": round(register_s, 2), **phases, "changed_from_example": changed,
        "affine": np.asarray(affine).tolist(),
        "versions": {"python": sys.version.split()[0], "bigstream": _version("bigstream"),
                     "SimpleITK": SimpleITK.__version__, "dask": dask.__version__,
                     "zarr": zarr.__version__, "numpy": np.__version__,
                     "ClusterWrap": _version("ClusterWrap")},
        "bigstream_file": bigstream.__file__,
    }
    (out / "bigstream.json").write_text(json.dumps(result, indent=1))
    print(f"TIMING register_s={register_s:.2f} cluster_start_s={phases['cluster_start_s']:.2f}",
          flush=True)


def convention_check(folder: Path) -> None:
    import numpy as np
    from bigstream.transform import apply_transform, apply_transform_to_coordinates

    z = np.load(folder / "check_in.npz")
    fix_shape, fs, ms = tuple(z["fix_shape"]), z["fix_spacing"], z["mov_spacing"]
    transforms = [z["affine"], z["field"]]
    image = apply_transform(np.zeros(fix_shape, np.float32), z["moving"], fs, ms,
                            transform_list=transforms)
    points = apply_transform_to_coordinates(z["points"].copy(), transforms,
                                            transform_spacing=fs)
    np.savez(folder / "check_out.npz", image=image, points=points)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
