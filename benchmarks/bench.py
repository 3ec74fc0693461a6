"""Benchmarks side by side (issue 8): ngffreg against the tools users would pick instead.

One command runs, on the same cases, with the same cores, in the same run:

- ``ngffreg``: ``register(fixed, moving, out, workers=<cores>)``, every other option at its
  default (coarse Affine + SyN at 4× down, SyNOnly blocks of 128 voxels at ``medium``,
  blended, registered image written);
- ``ants_synrs``: whole-volume ``ants.registration(..., "antsRegistrationSyN[s]")`` (rigid +
  affine + SyN with cross-correlation, full schedule down to full resolution);
- ``ants_syn``: whole-volume ``ants.registration(..., "SyN")`` (ANTs' defaults: no
  full-resolution SyN iterations);
- ``ants_4x``: ``antsRegistrationSyN[s]`` on both images downsampled 4× per axis (block
  mean), its transform applied at the case's resolution (what many pipelines do);
- ``bigstream`` when ``--bigstream-python`` names an interpreter that can ``import bigstream``
  (it needs ``zarr<3``, so a separate environment); otherwise recorded as not installed.

ANTs runs get ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=<cores>``, ngffreg ``workers=<cores>``
(its block workers are single-threaded; its coarse step uses ``<cores>`` ITK threads).

Cases (``--quick``: small levels chosen to finish in ~15 min on 2 quiet cores; ``--full``:
full resolution):

- ``ch2_mni``: ``ants/ch2`` → ``ants/mni`` (real, no truth; quick: 2 mm). Normalised
  cross-correlation on brain voxels (mni above Otsu's threshold) of the moving image warped
  onto the fixed grid, and a label round trip: the ``mnia`` labels (on the mni = fixed
  grid) warped to ch2 space with the tool's inverse transform, back with its forward
  transform (nearest neighbour both ways), Dice against the original, mean over labels.
  ANTs' inverse is its own (inverse affine + ``InverseWarp``); ngffreg's is
  ``transform.inverse()`` (its fields inverted by ``invert_field``). Quick: 4 mm (not 2 mm:
  the time budget), measured on that grid.
- ``phantom``: greedy ``phantom01`` (known rigid; quick: 2 mm). Error of the recovered
  fixed → moving map against the truth at every voxel of ``phantom01_mask`` (1 mm grid):
  max and median, mm. Also run: ngffreg with its documented option for a rigid pair
  (``linear_type="Rigid"``, no deformable steps), shown beside the defaults.
- ``brain``: the ``brainreg/brain`` volume at a pyramid level under the known smooth
  deformation of ``bench_register.py`` (its case builder; quick: level 2). Target
  registration error (TRE) at up to 50,000 foreground voxels, µm and voxels.
- ``scale``: ``bench_scale.py``'s scaled-up brain cases (quick: level 3 × 1 and 8, i.e.
  52 k and 418 k voxels; full: level 0 × 1, 8, 64, up to 904 M voxels). ngffreg runs as
  ``bench_scale.py`` runs it (coarse step at a fixed physical spacing, blocks at full
  resolution, ``fine_accuracy="low"``); the ANTs tools run on the same stores where their
  predicted memory fits. Memory and time against voxels.

Each run is a child process: wall time, the peak RSS of its whole process tree (sampled
every 0.1 s, workers included) and its CPU time (children's rusage); the error is measured
afterwards in a separate process, with ngffreg's warp and transform model for every tool.

Warp and convert throughput (ratio to a plain Zarr copy) come from the latest entries of
``results/warp.json`` and ``results/convert.json`` (``--throughput json``, quick default) or
from running ``bench_warp.py --quick`` and ``bench_convert.py`` first (``--throughput run``,
full default).

Usage::

    .venv/bin/python benchmarks/bench.py --quick     # make bench       (~15 min on 2 cores)
    .venv/bin/python benchmarks/bench.py --full      # make bench-full  (days on 2 cores)
    .venv/bin/python benchmarks/bench.py --quick --cases phantom --tools ngffreg ants_syn

Outputs: ``benchmarks/results/bench_<mode>.json``, ``benchmarks/results/bench_<mode>_*.png``
and the section of ``benchmarks/RESULTS.md`` between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` (replaced; ``--no-results-md`` leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_register
import bench_scale
import psutil
from bench_convert import run_sampled

HERE = Path(__file__).resolve().parent
PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
DATA = Path(os.environ.get("NGFFREG_DATA_DIR") or HERE.parents[1] / "shared" / "data")
WORK = HERE / "_work" / "bench"
RESULTS_MD = HERE / "RESULTS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

TOOLS = ("ngffreg", "ants_synrs", "ants_syn", "ants_4x", "bigstream")
PEERS = TOOLS[1:]
NAMES = {"none": "no registration", "ngffreg": "ngffreg (defaults)",
         "ngffreg_scale": "ngffreg (bench_scale settings)",
         "ngffreg_rigid": "ngffreg (rigid only, documented option)",
         "ants_synrs": "ANTs antsRegistrationSyN[s]", "ants_syn": 'ANTs "SyN" (defaults)',
         "ants_4x": "ANTs SyN[s] at 4× down", "bigstream": "bigstream"}
SHORT = {"ngffreg": "ngffreg", "ngffreg_rigid": "ngffreg\nrigid only",
         "ants_synrs": "ANTs\nSyN[s]", "ants_syn": 'ANTs\n"SyN"', "ants_4x": "ANTs SyN[s]\n4× down",
         "bigstream": "bigstream"}
WARP_NAMES = {"ngffreg": "ngffreg\nwarp", "ngffreg_pyramid": "ngffreg warp\n→ pyramid",
              "ants": "ANTs apply_\ntransforms", "itk": "ITK\nresample"}
ANTS_KIND = {"ants_synrs": "antsRegistrationSyN[s]", "ants_syn": "SyN",
             "ants_4x": "antsRegistrationSyN[s]"}
CASES = ("ch2_mni", "phantom", "brain", "scale")
TITLES = {"ch2_mni": "ch2 → mni (real MRI, no truth)",
          "phantom": "greedy phantom01 (known rigid)",
          "brain": "brainreg brain under a known smooth deformation",
          "scale": "scaled-up brain (memory and time against voxels)"}
#: Per case: (key, label, higher is better) of the error measures, the first is the headline.
METRICS = {
    "ch2_mni": [("ncc", "NCC on brain voxels", True),
                ("dice_mean", "label round-trip Dice (mean)", True)],
    "phantom": [("max_mm", "max error over the mask (mm)", False),
                ("median_mm", "median error (mm)", False)],
    "brain": [("tre_median_um", "TRE median (µm)", False),
              ("tre_p95_um", "TRE p95 (µm)", False)],
    "scale": [("tre_median_um", "TRE median (µm)", False),
              ("tre_p95_um", "TRE p95 (µm)", False)],
}
MODES = {
    # levels: 0 = full resolution, each level 2× coarser per axis
    "quick": {"ch2_mni": 2, "phantom": 1, "brain": 2, "scale_level": 3, "factors": [1, 8],
              "scale_chunk": 48, "scale_synrs_max_voxels": 300_000, "throughput": "json"},
    "full": {"ch2_mni": 0, "phantom": 0, "brain": 0, "scale_level": 0, "factors": [1, 8, 64],
             "scale_chunk": 64, "scale_synrs_max_voxels": None, "throughput": "run"},
}
#: A peer is skipped on a scale case when its peak memory, extrapolated linearly in voxels
#: from the largest smaller case it ran on, exceeds this fraction of the machine's memory.
MEMORY_FRACTION = 0.8
#: ngffreg's documented options for a pair known to differ by a rigid motion.
RIGID = {"linear_type": "Rigid", "nonlinear_type_coarse": None, "nonlinear_type_fine": None}
#: Differences smaller than this (relative) are called ties in the generated text.
TIE = 0.02


# ---------------------------------------------------------------------------------------
# children: load a case, run a tool, measure
# ---------------------------------------------------------------------------------------
def load_case(case: dict) -> tuple[Any, Any]:
    """The fixed and moving images of a case, in memory (float32), at the case's level."""
    import numpy as np

    from ngffreg.image import load
    from ngffreg.registration.coarse import image_levels

    if case["kind"] == "brain":
        ns = _brain_namespace(case)
        return ns["fixed"], ns["moving"]
    if case["kind"] == "scale":
        folder = Path(case["folder"])
        pair = [image_levels(str(folder / f"{n}.ome.zarr"))[0] for n in ("fixed", "moving")]
    else:
        pair = [image_levels(case[n])[case["level"]] for n in ("fixed", "moving")]
    return tuple(load(p).astype(np.float32) for p in pair)


def _brain_namespace(case: dict) -> dict:
    """``bench_register``'s loader run on the case folder: ``fixed``, ``moving``, ``truth``
    and ``report(transform, seconds)`` (prints its TRE line)."""
    argv, sys.argv = sys.argv, [sys.argv[0], case["folder"]]
    try:
        ns: dict = {"__name__": "bench_case"}
        exec(bench_register._LOAD, ns)
    finally:
        sys.argv = argv
    return ns


def downsample4(image: Any) -> Any:
    """``image`` 4× coarser per axis (block mean), in memory."""
    from ngffreg.image import load
    from ngffreg.pyramid import downsample

    return load(downsample(image, (4, 4, 4), method="mean"))


def tool_child(case_path: str, tool: str, outdir: str, cores: int) -> None:
    """Run one tool on one case; write what :func:`load_transform` reads into ``outdir``."""
    import numpy as np

    case = json.loads(Path(case_path).read_text())
    out = Path(outdir)
    fixed, moving = load_case(case)
    manifest: dict[str, Any] = {"tool": tool, "shape": list(fixed.shape)}
    if tool.startswith("ngffreg"):
        from ngffreg.registration.register import register

        store = out / "ngffreg.ome.zarr"
        options = case.get("variants", {}).get(tool, {})
        t = time.perf_counter()
        r = register(fixed, moving, store, workers=cores, overwrite=True, **options)
        seconds = time.perf_counter() - t
        statuses: dict[str, int] = {}
        for b in r.blocks:
            statuses[b["status"]] = statuses.get(b["status"], 0) + 1
        manifest.update(store=str(store), blocks=len(r.blocks), block_status=statuses,
                        options=options, coarse_level=r.coarse.fixed_level,
                        timings={k: round(v, 2) for k, v in r.timings.items()})
    elif tool in ANTS_KIND:
        import ants

        from ngffreg import itk_bridge
        from ngffreg.image import Grid, units

        if tool == "ants_4x":
            fixed, moving = downsample4(fixed), downsample4(moving)
            manifest["registered_shape"] = list(fixed.shape)
        gf, gm = Grid.of(fixed), Grid.of(moving)
        k = itk_bridge.ants_length_scale(np.minimum(gf.spacing, gm.spacing))
        f = itk_bridge.to_ants(fixed.values, gf.spacing, gf.origin, gf.direction, k)
        m = itk_bridge.to_ants(moving.values, gm.spacing, gm.origin, gm.direction, k)
        t = time.perf_counter()
        reg = ants.registration(f, m, ANTS_KIND[tool], random_seed=1)
        seconds = time.perf_counter() - t
        names = {}
        for i, p in enumerate([*reg["fwdtransforms"], *reg["invtransforms"]]):
            if p not in names:
                names[p] = f"t{i}_{Path(p).name}"
                shutil.copy(p, out / names[p])
        manifest.update(kind=ANTS_KIND[tool], k=k, unit=units(fixed),
                        fwd=[names[p] for p in reg["fwdtransforms"]],
                        inv=[names[p] for p in reg["invtransforms"]],
                        inv_invert=[p.endswith(".mat") for p in reg["invtransforms"]])
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"TIMING register_s={seconds:.2f}", flush=True)
    print("RESULT " + json.dumps(manifest), flush=True)


def export_child(case_path: str, outdir: str) -> None:
    """The case as plain ``.npy`` arrays for a tool outside this environment (bigstream)."""
    import numpy as np

    from ngffreg.image import Grid

    case = json.loads(Path(case_path).read_text())
    fixed, moving = load_case(case)
    out = Path(outdir)
    np.save(out / "fixed.npy", fixed.values)
    np.save(out / "moving.npy", moving.values)
    gf, gm = Grid.of(fixed), Grid.of(moving)
    (out / "pair.json").write_text(json.dumps({
        "fixed_spacing": gf.spacing.tolist(), "fixed_origin": gf.origin.tolist(),
        "moving_spacing": gm.spacing.tolist(), "moving_origin": gm.origin.tolist(),
        "unit": gf.unit}))


#: Runs under ``--bigstream-python`` (no ngffreg there): in-memory whole-volume alignment
#: (affine, then a B-spline deformation), arrays in and out. Not exercised here: bigstream
#: was not installed where this benchmark was written.
_BIGSTREAM = r"""
import json, sys, time
import numpy as np
from bigstream.align import alignment_pipeline
folder = sys.argv[1]
meta = json.load(open(folder + "/pair.json"))
fix, mov = np.load(folder + "/fixed.npy"), np.load(folder + "/moving.npy")
fs, ms = np.array(meta["fixed_spacing"]), np.array(meta["moving_spacing"])
s = float(fs.min())
steps = [("affine", {"shrink_factors": (4, 2), "smooth_sigmas": (4 * s, 2 * s),
                     "optimizer_args": {"learningRate": 0.25, "minStep": 0.0,
                                        "numberOfIterations": 400}}),
         ("deform", {"shrink_factors": (2, 1), "smooth_sigmas": (2 * s, s),
                     "control_point_spacing": 8 * s, "control_point_levels": (2, 1),
                     "optimizer_args": {"learningRate": 0.25, "minStep": 0.0,
                                        "numberOfIterations": 25}})]
t = time.perf_counter()
out = alignment_pipeline(fix, mov, fs, ms, steps, return_format="independent")
seconds = time.perf_counter() - t
affine, field = (np.asarray(x) for x in out)
np.save(folder + "/affine.npy", affine)
np.save(folder + "/field.npy", field.astype(np.float32))
json.dump({"tool": "bigstream"}, open(folder + "/manifest.json", "w"))
print(f"TIMING register_s={seconds:.2f}", flush=True)
print("RESULT {}", flush=True)
"""


def load_transform(tool: str, outdir: Path) -> tuple[Any, Any]:
    """The tool's fixed → moving transform and its inverse, in ngffreg's model."""
    import numpy as np

    from ngffreg.transforms import Affine, DisplacementField, Identity, Sequence

    if tool == "none":
        return Identity(), Identity()
    manifest = json.loads((outdir / "manifest.json").read_text())
    if tool.startswith("ngffreg"):
        from ngffreg.transforms.ngff import read_registration

        forward = read_registration(manifest["store"])
        return forward, forward.inverse()
    if tool in ANTS_KIND:
        from ngffreg.registration.ants_backend import _unscale
        from ngffreg.transforms.files import read_ants_transforms

        k, unit = manifest["k"], manifest["unit"]
        forward = _unscale(read_ants_transforms([outdir / n for n in manifest["fwd"]]), k, unit)
        inverse = _unscale(read_ants_transforms([outdir / n for n in manifest["inv"]],
                                                invert=manifest["inv_invert"]), k, unit)
        return forward, inverse
    if tool == "bigstream":
        # bigstream works in array (z, y, x) coordinates from a zero origin:
        # x_moving = A (x_fixed + d(x_fixed)); ours add the images' origins
        pair = json.loads((outdir / "pair.json").read_text())
        of, om = np.asarray(pair["fixed_origin"]), np.asarray(pair["moving_origin"])
        field = np.load(outdir / "field.npy")
        if field.shape[-1] == 3 and field.shape[0] != 3:
            field = np.moveaxis(field, -1, 0)
        d = DisplacementField.from_array(field, spacing=pair["fixed_spacing"], origin=of,
                                         unit=pair["unit"])
        a = np.asarray(np.load(outdir / "affine.npy"), dtype=np.float64)
        shift_in, shift_out = np.eye(4), np.eye(4)
        shift_in[:3, 3], shift_out[:3, 3] = -of, om
        forward = Sequence(transforms=(d, Affine(matrix=shift_out @ a @ shift_in)))
        return forward, forward.inverse()
    raise SystemExit(f"unknown tool {tool!r}")


def measure_child(case_path: str, tool: str, outdir: str) -> None:
    """Print the case's error measures for the tool's transform (one ``RESULT`` line)."""
    import numpy as np

    case = json.loads(Path(case_path).read_text())
    forward, inverse = load_transform(tool, Path(outdir))
    t = time.perf_counter()
    kind = case["kind"]
    if kind == "brain":
        _brain_namespace(case)["report"](forward, None)  # prints the RESULT line
        return
    if kind == "ch2_mni":
        out = _measure_ch2_mni(case, forward, inverse)
    elif kind == "phantom":
        from ngffreg.image import Grid
        from ngffreg.io.read import open_image
        from ngffreg.transforms.files import read_c3d_matrix

        mask = open_image(case["mask"]).compute()
        pts = Grid.of(mask).points()[mask.values.ravel() > 0]
        truth = read_c3d_matrix(case["truth"], maps="moving_to_fixed")
        err = np.linalg.norm(forward.apply(pts) - truth.apply(pts), axis=1)
        out = {"max_mm": float(err.max()), "median_mm": float(np.median(err)),
               "points": len(pts)}
    elif kind == "scale":
        out = _measure_scale(case, forward)
    else:
        raise SystemExit(f"unknown case kind {kind!r}")
    out["measure_s"] = round(time.perf_counter() - t, 2)
    print("RESULT " + json.dumps(out), flush=True)


def _measure_ch2_mni(case: dict, forward: Any, inverse: Any) -> dict:
    import numpy as np

    from ngffreg.image import load
    from ngffreg.qc import ncc, otsu_threshold
    from ngffreg.registration.coarse import image_levels
    from ngffreg.transforms import Identity
    from ngffreg.warp import warp

    fixed, moving = load_case(case)
    brain = fixed.values > otsu_threshold(fixed.values)
    warped = warp(moving, forward, like=fixed).values
    out = {"ncc": ncc(fixed.values, warped, brain)}
    # labels: the atlas (mni grid, 1 mm) onto the case's fixed grid, to ch2 and back
    atlas = load(image_levels(case["labels"])[0])
    labels = warp(atlas, Identity(), like=fixed, interpolator="nearestNeighbor").compute()
    there = warp(labels, inverse, like=moving, interpolator="nearestNeighbor").compute()
    back = warp(there, forward, like=fixed, interpolator="nearestNeighbor").values
    a, b = np.rint(labels.values).astype(np.int32), np.rint(back).astype(np.int32)
    ids = [int(i) for i in np.unique(a) if i != 0]
    dice = []
    for i in ids:
        x, y = a == i, b == i
        dice.append(2.0 * np.count_nonzero(x & y) / (np.count_nonzero(x) + np.count_nonzero(y)))
    out.update(dice_mean=float(np.mean(dice)), dice_median=float(np.median(dice)),
               dice_min=float(np.min(dice)), labels=len(ids))
    return out


def _measure_scale(case: dict, forward: Any) -> dict:
    """TRE as ``bench_scale.py`` measures it (its points, its truth)."""
    import numpy as np

    from ngffreg.transforms import DisplacementField

    folder = Path(case["folder"])
    meta = json.loads((folder / "case.json").read_text())
    npz = np.load(folder / "truth.npz")
    truth = DisplacementField.from_array(npz["field"], spacing=npz["spacing"],
                                         origin=npz["origin"], direction=npz["direction"],
                                         unit=meta["unit"], outside="nearest")
    pts, _, _ = bench_scale.tre_points(folder / "fixed.ome.zarr", meta)
    err = np.linalg.norm(forward.apply(pts) - truth.apply_inverse(pts), axis=1)
    vox = float(np.min(meta["spacing"]))
    med, p95 = float(np.median(err)), float(np.percentile(err, 95))
    return {"tre_median_um": med, "tre_p95_um": p95, "tre_median_vox": med / vox,
            "tre_p95_vox": p95 / vox}


# ---------------------------------------------------------------------------------------
# the parent: cases, runs, JSON, figures, RESULTS.md
# ---------------------------------------------------------------------------------------
def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _result_line(log: str) -> dict | None:
    return next((json.loads(line[7:]) for line in log.splitlines()
                 if line.startswith("RESULT ")), None)


def sampled(cmd: list[str], label: str) -> dict:
    """``run_sampled`` plus the CPU seconds of the child's process tree and the load
    average when it started; a failure is recorded, not raised."""
    load = os.getloadavg()[0]
    cpu = _children_cpu()
    try:
        res = run_sampled(cmd, label=label)
    except SystemExit as exc:
        return {"failed": True, "error": str(exc)[-1500:], "load_1min_at_start": load}
    res["cpu_s"] = round(_children_cpu() - cpu, 1)
    res["load_1min_at_start"] = load
    return res


def measure(case_path: Path, tool: str, outdir: Path) -> dict:
    p = subprocess.run([PY, SCRIPT, "_measure", str(case_path), tool, str(outdir)],
                       capture_output=True, text=True)
    out = _result_line(p.stdout)
    if p.returncode != 0 or out is None:
        return {"measure_failed": True, "measure_error": (p.stdout + p.stderr)[-1500:]}
    out.pop("seconds", None)
    return out


def bigstream_status(python: str | None) -> str:
    if not python:
        return "not installed (no --bigstream-python given)"
    try:
        p = subprocess.run([python, "-c", "import bigstream, zarr; print(zarr.__version__)"],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not installed ({python}: {exc})"
    if p.returncode != 0:
        return f"not installed ({python} cannot import bigstream)"
    return "ok"


def run_tool(case: dict, tool: str, work: Path, cores: int, bigstream_python: str | None
             ) -> dict:
    """One tool on one case: the sampled run, then the measurement."""
    outdir = work / tool
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    case_path = work / "case.json"
    case_path.write_text(json.dumps(case))
    label = f"{case['name']} {tool}"
    print(f"  {label} ...", flush=True)
    if tool == "none":
        res: dict[str, Any] = {}
    elif tool == "bigstream":
        subprocess.run([PY, SCRIPT, "_export", str(case_path), str(outdir)], check=True)
        res = sampled([bigstream_python or "python", "-c", _BIGSTREAM, str(outdir)], label)
    else:
        res = sampled([PY, SCRIPT, "_tool", str(case_path), tool, str(outdir), str(cores)],
                      label)
    if res.get("failed"):
        print(f"    FAILED: {res['error'][-300:]}", flush=True)
        return res
    log = res.pop("log", "")
    res.update(_result_line(log) or {})
    res.update(measure(case_path, tool, outdir))
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()
             if k in ("wall_s", "register_s", "peak_rss_gib", "cpu_s")
             or k in [m[0] for m in METRICS[case["kind"]]]}
    print(f"    {shown}", flush=True)
    if tool.startswith("ngffreg"):
        shutil.rmtree(outdir / "ngffreg.ome.zarr", ignore_errors=True)
    return res


def case_specs(mode: dict, levels: dict) -> dict[str, dict]:
    d = DATA
    return {
        "ch2_mni": {"name": "ch2_mni", "kind": "ch2_mni", "level": levels["ch2_mni"],
                    "fixed": str(d / "ants" / "mni.nii.gz"),
                    "moving": str(d / "ants" / "ch2.nii.gz"),
                    "labels": str(d / "ants" / "mnia.nii.gz")},
        "phantom": {"name": "phantom", "kind": "phantom", "level": levels["phantom"],
                    "fixed": str(d / "greedy" / "phantom01_fixed.nii.gz"),
                    "moving": str(d / "greedy" / "phantom01_moving.nii.gz"),
                    "mask": str(d / "greedy" / "phantom01_mask.nii.gz"),
                    "truth": str(d / "greedy" / "phantom01_rigid.mat"),
                    # the documented option for a rigid pair (tests/test_register.py), run
                    # beside the defaults; "where ngffreg loses" compares the defaults
                    "variants": {"ngffreg_rigid": RIGID}},
        "brain": {"name": "brain", "kind": "brain", "level": levels["brain"]},
    }


def ensure_brain_case(level: int) -> str:
    """``bench_register.py``'s pair at ``level`` (built by its own code, cached where it
    caches it)."""
    work = HERE / "_work" / "register" / f"level{level}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "fixed.npy").is_file():
        print(f"  building bench_register's brain pair at level {level} ...", flush=True)
        run_sampled([PY, "-c", bench_register._MAKE, str(level), str(work),
                     str(DATA / "brainreg" / "brain")])
    return str(work)


def case_info(case: dict) -> dict:
    """Shape, spacing and unit of the case's images (from a child process)."""
    p = subprocess.run([PY, SCRIPT, "_info", json.dumps(case)], capture_output=True, text=True)
    return _result_line(p.stdout) or {"error": p.stderr[-500:]}


def info_child(case_json: str) -> None:
    from ngffreg.image import Grid

    fixed, moving = load_case(json.loads(case_json))
    g = Grid.of(fixed)
    print("RESULT " + json.dumps({"shape": list(fixed.shape), "moving_shape": list(moving.shape),
                                  "spacing": g.spacing.tolist(), "unit": g.unit}))


def run_scale(mode: dict, tools: list[str], cores: int, bigstream_python: str | None,
              factors: list[int], level: int) -> dict:
    runs: list[dict] = []
    total = psutil.virtual_memory().total / 2**30
    ns = argparse.Namespace(fine_accuracy="low", workers=cores, memory_budget=None,
                            fine_level=0, coarse_factor=2.0, export_ants=False,
                            keep_output=False)
    for f in factors:
        folder, _ = bench_scale.ensure_case(DATA / "brainreg" / "brain", level, f)
        meta = json.loads((folder / "case.json").read_text())
        voxels = meta["voxels"]
        base = {"factor": f, "voxels": voxels, "shape": meta["shape"],
                "spacing": meta["spacing"]}
        print(f"  scale {f}× {tuple(meta['shape'])} ({voxels / 1e6:.2f} M voxels)", flush=True)
        if "ngffreg" in tools:
            cpu, load = _children_cpu(), os.getloadavg()[0]
            res = bench_scale.run_one(folder, ns, mode["scale_chunk"])
            res.pop("log", None)
            res.update(cpu_s=round(_children_cpu() - cpu, 1), load_1min_at_start=load)
            runs.append({**base, "tool": "ngffreg", **res})
            print(f"    ngffreg: { {k: res.get(k) for k in ('wall_s', 'peak_rss_gib')} }",
                  flush=True)
        for tool in [t for t in tools if t != "ngffreg"]:
            why = None
            if tool == "ants_synrs" and mode["scale_synrs_max_voxels"] and \
                    voxels > mode["scale_synrs_max_voxels"]:
                why = (f"skipped in this mode (more than {mode['scale_synrs_max_voxels']:,} "
                       "voxels; time)")
            done = [r for r in runs if r["tool"] == tool and not r.get("failed")
                    and not r.get("skipped") and r.get("peak_rss_gib")]
            if done and why is None:
                last = max(done, key=lambda r: r["voxels"])
                need = last["peak_rss_gib"] * voxels / last["voxels"]
                if need > MEMORY_FRACTION * total:
                    why = (f"skipped: would need ~{need:.0f} GiB (linear in voxels from "
                           f"{last['factor']}×), more than {MEMORY_FRACTION:.0%} of "
                           f"{total:.0f} GiB")
            if why:
                runs.append({**base, "tool": tool, "skipped": why})
                print(f"    {tool}: {why}", flush=True)
                continue
            case = {"name": f"scale{f}", "kind": "scale", "folder": str(folder)}
            res = run_tool(case, tool, WORK / "scale" / f"f{f}", cores, bigstream_python)
            runs.append({**base, "tool": tool, **res})
    return {"level": level, "factors": factors, "chunk_size": mode["scale_chunk"],
            "ngffreg_settings": {"coarse_spacing": "2 × the base level's spacing",
                                 "fine_level": 0, "chunk_size": mode["scale_chunk"],
                                 "fine_accuracy": "low", "workers": cores},
            "runs": runs}


def throughput(how: str, mode_name: str) -> dict:
    """Warp and convert throughput as ratios to a plain Zarr copy: from the latest entries
    of their results files, after running their benchmarks first when ``how == "run"``
    (quick: ``bench_warp.py --quick`` and a 128 MiB convert; full: their full sizes)."""
    out: dict[str, Any] = {"source": how, "commands": []}
    if how == "run":
        quick = mode_name == "quick"
        work = WORK / "convert"  # not bench_convert's default folder: its source is kept
        for cmd in ([PY, str(HERE / "bench_warp.py"), *(["--quick"] if quick else [])],
                    [PY, str(HERE / "bench_convert.py"), "--workdir", str(work),
                     *(["--shape", "256", "512", "512"] if quick else [])]):
            shown = " ".join(["benchmarks/" + Path(cmd[1]).name,
                              *[c if not c.startswith("/") else Path(c).name
                                for c in cmd[2:]]])
            print(f"  {shown} ...", flush=True)
            p = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
            out["commands"].append({"command": shown, "returncode": p.returncode})
    warp_file, conv_file = HERE / "results" / "warp.json", HERE / "results" / "convert.json"
    if warp_file.is_file():
        last = json.loads(warp_file.read_text())[-1]
        out["warp"] = {"date": last["date"], "command": last.get("command"), "sizes": [
            {"shape": s["shape"], "gib": s["gib"],
             "ratios": {k: r["ratio_to_copy"] for k, r in s["rows"].items()},
             "peak_rss_gib": {k: r["peak_rss_gib"] for k, r in s["rows"].items()}}
            for s in last["sizes"]]}
    if conv_file.is_file():
        last = json.loads(conv_file.read_text())[-1]
        out["convert"] = {"date": last["date"], "command": last.get("command"),
                          "shape": last["shape"], "gib": last["source_gib"],
                          "ratio": last["throughput_ratio"],
                          "peak_rss_gib": last["convert"]["peak_rss_gib"]}
    return out


def versions() -> dict:
    code = ("import json, platform, ants, itk, dask, zarr, numpy, ngffreg; "
            "print('RESULT ' + json.dumps({'python': platform.python_version(), "
            "'ngffreg': ngffreg.__version__, 'antspyx': ants.__version__, "
            "'itk': itk.Version.GetITKVersion(), 'dask': dask.__version__, "
            "'zarr': zarr.__version__, 'numpy': numpy.__version__}))")
    p = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    return _result_line(p.stdout) or {"error": p.stderr[-500:]}


def machine(cores: int) -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "cpu": model, "logical_cores": psutil.cpu_count(),
            "cores_used": cores, "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "system": f"{platform.system()} {platform.release()}"}


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def case_figure(name: str, case: dict, path: Path) -> None:
    plt = _plt()
    runs = {t: r for t, r in case["runs"].items() if t != "none" and not r.get("failed")
            and not r.get("skipped")}
    if not runs:
        return
    panels = [("wall_s", "wall time of the run (s)", False),
              ("peak_rss_gib", "peak RSS, whole process tree (GiB)", False),
              *METRICS[name]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6),
                             constrained_layout=True)
    tools = list(runs)
    colors = {"ngffreg": "C0", "ngffreg_rigid": "#9ecae1"}
    for ax, (key, label, higher) in zip(axes, panels, strict=True):
        values = [runs[t].get(key, float("nan")) for t in tools]
        ax.bar(range(len(tools)), values, color=[colors.get(t, "C7") for t in tools])
        ax.set_xticks(range(len(tools)), [SHORT[t] for t in tools], fontsize=7)
        ref = case["runs"].get("none", {}).get(key)
        ax.set_title(label + (" ↑" if higher else " ↓") +
                     (f"\n(no registration: {ref:.3g})" if ref is not None else ""),
                     fontsize=9)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"{TITLES[name]}: {case.get('description', '')}", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_figure(scale: dict, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    tools = list(dict.fromkeys(r["tool"] for r in scale["runs"]))
    for i, tool in enumerate(tools):
        ok = sorted((r for r in scale["runs"] if r["tool"] == tool and not r.get("failed")
                     and not r.get("skipped")), key=lambda r: r["voxels"])
        if not ok:
            continue
        x = [r["voxels"] for r in ok]
        style = dict(marker="o", color="C0" if tool == "ngffreg" else f"C{i + 1}",
                     label=NAMES["ngffreg_scale" if tool == "ngffreg" else tool])
        axes[0].plot(x, [r["peak_rss_gib"] for r in ok], **style)
        axes[1].plot(x, [r["wall_s"] for r in ok], **style)
        axes[2].plot(x, [r.get("tre_median_um", float("nan")) for r in ok], **style)
    for ax, label in zip(axes, ("peak RSS, whole process tree (GiB)", "wall time (s)",
                                "TRE median (µm)"), strict=True):
        ax.set(xscale="log", xlabel="voxels", title=label)
    axes[0].set_ylim(bottom=0)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")  # a failed run sits orders of magnitude above the others
    axes[0].legend(fontsize=7)
    fig.suptitle(f"scaled-up brain (base level {scale['level']}, factors "
                 f"{scale['factors']})", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput_figure(tp: dict, path: Path) -> None:
    plt = _plt()
    bars: list[tuple[str, float]] = []
    for s in tp.get("warp", {}).get("sizes", []):
        size = f"{s['gib']} GiB"
        for k, v in s["ratios"].items():
            if k != "copy":
                bars.append((f"{WARP_NAMES.get(k, k)}\n{size}", v))
    if "convert" in tp:
        bars.append((f"ngffreg\nconvert\n{tp['convert']['gib']} GiB", tp["convert"]["ratio"]))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars)), 3.6), constrained_layout=True)
    ax.bar(range(len(bars)), [v for _, v in bars],
           color=["C0" if "ngffreg" in n else "C7" for n, _ in bars])
    for i, (_, v) in enumerate(bars):
        ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=7)
    ax.axhline(1, color="k", lw=0.8, label="plain Zarr copy")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="goal 0.5")
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=7)
    ax.set_ylabel("throughput / plain Zarr copy")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _worse(ours: float, theirs: float, higher: bool) -> bool:
    """Is ``ours`` worse than ``theirs`` by more than :data:`TIE` (relative)?"""
    if ours is None or theirs is None:
        return False
    scale = max(abs(ours), abs(theirs), 1e-12)
    diff = (theirs - ours) if higher else (ours - theirs)
    return diff / scale > TIE


def _diverged(name: str, run: dict, context: dict) -> bool:
    """Is the run's headline error worse than no registration at all (a failed run)?
    ``context``: the case (its ``none`` run) or, for ``scale``, the scale record (the
    ngffreg run's ``tre_before`` at the same factor)."""
    key, _, higher = METRICS[name][0]
    if name == "scale":
        ref = next((r.get("tre_before", {}).get("median_um") for r in context["runs"]
                    if r["tool"] == "ngffreg" and r["factor"] == run.get("factor")), None)
    else:
        ref = context["runs"].get("none", {}).get(key)
    value = run.get(key)
    if ref is None or value is None:
        return False
    return value < ref if higher else value > ref


def compare(record: dict, want: str = "loses") -> list[str]:
    """One line per case and peer that beats ngffreg (``want="loses"``) or that ngffreg
    beats (``"wins"``) on some measure, with the numbers (computed, not written by hand)."""
    common = [("wall_s", "wall time", False, " s"), ("peak_rss_gib", "peak memory", False,
                                                      " GiB")]
    pairs: list[tuple[str, dict, str, dict, list, bool]] = []
    for name, case in record["cases"].items():
        metrics = [(*m, "") for m in METRICS[name]] + common
        for tool, r in case["runs"].items():
            if tool in PEERS:
                pairs.append((f"**{name}**", case["runs"].get("ngffreg") or {}, tool, r,
                              metrics, _diverged(name, r, case)))
    scale = record.get("scale")
    if scale:
        by = {(r["tool"], r["factor"]): r for r in scale["runs"]}
        for f in scale["factors"]:
            for tool in PEERS:
                if (tool, f) in by:
                    pairs.append((f"**scale {f}×**", by.get(("ngffreg", f)) or {}, tool,
                                  by[(tool, f)], [(*m, "") for m in METRICS["scale"]] + common,
                                  _diverged("scale", by[(tool, f)], scale)))
    if not any(ours for _, ours, *_ in pairs):
        return ["- ngffreg was not run."]
    lines = []
    for where, ours, tool, r, metrics, failed in pairs:
        if not ours or ours.get("failed") or r.get("failed") or r.get("skipped"):
            continue
        found = []
        for key, label, higher, unit in metrics:
            a, b = ours.get(key), r.get(key)
            if (want == "loses" and _worse(a, b, higher)) or \
                    (want == "wins" and _worse(b, a, higher)):
                found.append(f"{label} ({_fmt(a)}{unit} vs {_fmt(b)}{unit})")
        if found:
            verb = "loses to" if want == "loses" else "beats"
            note = (f" ({NAMES[tool]} did worse than no registration here: it failed)"
                    if failed else "")
            lines.append(f"- {where}: ngffreg {verb} {NAMES[tool]} on " + ", ".join(found)
                         + note + ".")
    return lines


def summary(record: dict) -> list[str]:
    """Memory and time of ngffreg relative to whole-volume ANTs over all cases (computed)."""
    mem, wall = [], []
    runs = [(c["runs"].get("ngffreg"), r) for c in record["cases"].values()
            for t, r in c["runs"].items() if t in ("ants_synrs", "ants_syn")]
    if record.get("scale"):
        by = {(r["tool"], r["factor"]): r for r in record["scale"]["runs"]}
        runs += [(by.get(("ngffreg", f)), by[(t, f)]) for (t, f) in by
                 if t in ("ants_synrs", "ants_syn")]
    for ours, theirs in runs:
        if ours and theirs and not ours.get("failed") and not theirs.get("failed") and \
                not theirs.get("skipped") and ours.get("peak_rss_gib"):
            mem.append(ours["peak_rss_gib"] / theirs["peak_rss_gib"])
            wall.append(ours["wall_s"] / theirs["wall_s"])
    if not mem:
        return []
    return [f"In all: against whole-volume ANTs (`antsRegistrationSyN[s]` and \"SyN\") on "
            f"the same cases, ngffreg's peak memory is {min(mem):.1f}–{max(mem):.1f}× theirs "
            f"and its wall time {min(wall):.2g}–{max(wall):.2g}× theirs. Its peak includes a "
            "dask LocalCluster of worker processes, which at these small sizes weighs more "
            "than the images."]


def case_table(name: str, case: dict) -> str:
    metrics = METRICS[name]
    head = ["tool", "wall s (registration s)", "CPU s", "peak RSS GiB",
            *[m[1] + (" ↑" if m[2] else " ↓") for m in metrics]]
    if name == "brain":
        head[4:] = ["TRE median µm (voxel)", "TRE p95 µm (voxel)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool, r in case["runs"].items():
        label = NAMES[tool] if tool != "none" else "no registration (reference)"
        if r.get("failed"):
            rows.append(f"| {label} | failed: {r['error'].strip().splitlines()[-1][:80]} |"
                        + " |" * (len(head) - 2))
            continue
        if r.get("skipped"):
            rows.append(f"| {label} | {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        if tool != "none" and _diverged(name, r, case):
            label += " (worse than no registration)"
        cells = [label, f"{_fmt(r['wall_s'])} ({_fmt(r.get('register_s'))})"
                 if "wall_s" in r else "", _fmt(r.get("cpu_s")), _fmt(r.get("peak_rss_gib"))]
        if name == "brain":
            cells += [f"{r['tre_median_um']:.1f} ({r['tre_median_vox']:.3f})",
                      f"{r['tre_p95_um']:.1f} ({r['tre_p95_vox']:.3f})"]
        else:
            cells += [_fmt(r.get(m[0]), 4) for m in metrics]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def scale_table(scale: dict) -> str:
    rows = ["| factor | voxels | tool | wall s | CPU s | peak RSS GiB | "
            "TRE median µm (voxel) | TRE p95 µm (voxel) |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(scale["runs"], key=lambda r: (r["voxels"], TOOLS.index(r["tool"]))):
        before = r.get("tre_before")
        if r["tool"] == "ngffreg" and before:  # bench_scale measures the start too
            rows.append(f"| {r['factor']}× | {r['voxels']:,} | no registration (reference) "
                        f"| | | | {before['median_um']:.1f} ({before['median_vox']:.3f}) | "
                        f"{before['p95_um']:.1f} ({before['p95_vox']:.3f}) |")
        tool = "ngffreg_scale" if r["tool"] == "ngffreg" else r["tool"]
        head = f"| {r['factor']}× | {r['voxels']:,} | {NAMES[tool]}"
        if r.get("skipped") or r.get("failed"):
            why = r.get("skipped") or "failed: " + r["error"].strip().splitlines()[-1][:80]
            rows.append(f"{head} | {why} | | | | |")
            continue
        flag = " (worse than no registration)" if _diverged("scale", r, scale) else ""
        rows.append(f"{head}{flag} | {r['wall_s']:.0f} | {_fmt(r.get('cpu_s'))} | "
                    f"{r['peak_rss_gib']:.2f} | {r['tre_median_um']:.1f} "
                    f"({r['tre_median_vox']:.3f}) | {r['tre_p95_um']:.1f} "
                    f"({r['tre_p95_vox']:.3f}) |")
    return "\n".join(rows)


def throughput_table(tp: dict) -> str:
    rows = ["| run | source size | ratio to a plain Zarr copy | peak RSS GiB | measured |",
            "|---|---|---|---|---|"]
    for s in tp.get("warp", {}).get("sizes", []):
        for k, v in s["ratios"].items():
            if k != "copy":
                label = WARP_NAMES.get(k, k).replace("\n", " ").replace("_ ", "_")
                rows.append(f"| {label} | {s['gib']} GiB {tuple(s['shape'])} | {v} | "
                            f"{s['peak_rss_gib'][k]} | {tp['warp']['date']} |")
    if "convert" in tp:
        c = tp["convert"]
        rows.append(f"| ngffreg convert (5 levels) | {c['gib']} GiB {tuple(c['shape'])} | "
                    f"{c['ratio']} | {c['peak_rss_gib']} | {c['date']} |")
    return "\n".join(rows)


def markdown(record: dict, name: str) -> str:
    m, v, load = record["machine"], record["versions"], record["load"]
    fig = f"results/bench_{name}"
    busy = ("a busy machine: other work shared the cores, so wall times are inflated; CPU s "
            "is less sensitive to that")
    out = [
        BEGIN,
        f"## Side by side (issue 8): `{record['mode']}` mode",
        "",
        "*Generated by `benchmarks/bench.py`; do not edit between the markers.*",
        "",
        f"Command: `{record['command']}`"
        + (f" (`{record['make']}`)" if record.get("make") else "")
        + f", {record['date']}, **{record['total_s'] / 60:.1f} min** in all "
        f"({record.get('total_cpu_s', 0) / 60:.1f} CPU-minutes in its child "
        f"processes). Raw numbers: [`results/bench_{name}.json`](results/bench_{name}.json).",
        "",
        f"Time budget: the quick mode is meant to finish in under 15 min on {m['cores_used']} "
        "quiet cores. The CPU time above (all child processes, the tools' worker "
        "processes and threads included) is what a quiet machine has to spend; most steps "
        "use more than one core part of the time, so its wall time there should not exceed "
        "the CPU time by more than I/O waits (not measured on a quiet machine).",
        "",
        f"Machine: {m['arch']}, {m['cpu'] or 'unknown CPU'}, {m['logical_cores']} logical "
        f"cores, {m['ram_gib']} GiB RAM, {m['system']}. Every tool got the same "
        f"**{m['cores_used']} cores**: ngffreg `workers={m['cores_used']}`, ANTs "
        f"`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS={m['cores_used']}`. "
        f"Load average (1 min) when the runs started: min {load['min']:.1f}, "
        f"median {load['median']:.1f}, max {load['max']:.1f} "
        f"({busy if load['max'] > m['cores_used'] + 0.5 else 'a quiet machine'}).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ". bigstream: "
        + record["bigstream"] + ".",
        "",
        "Each run is a child process: *wall s* is the whole child (imports, loading, "
        "registration; ngffreg also writes its output store), *registration s* the "
        "registration call alone, *CPU s* the CPU time of the child's process tree, *peak "
        "RSS* the largest resident memory of the whole tree (workers included), sampled "
        "every 0.1 s. Errors are measured afterwards with ngffreg's transform model and warp "
        "for every tool. ngffreg runs at its defaults (`register(fixed, moving, out, "
        f"workers={m['cores_used']})`). ANTs runs get `random_seed=1` but are not "
        "bit-reproducible with more than one thread: on the smallest sizes their errors moved "
        "by tens of percent between repeated runs, so small differences here are noise.",
        "",
    ]
    out += ["### Where ngffreg loses", "",
            f"Computed from the tables below (ngffreg at its defaults against each peer; "
            f"differences under {TIE:.0%} count as ties):", ""]
    out += compare(record, "loses") or ["- nowhere in this run."]
    out += ["", *summary(record)]
    out += ["", "Where it wins, computed the same way:", ""]
    out += compare(record, "wins") or ["- nowhere in this run."]
    out.append("")
    for name_, case in record["cases"].items():
        note = case.get("description", "") + "."
        small = case["runs"].get("ants_4x", {}).get("registered_shape")
        if small:
            note += (f" ANTs at 4× down registered {' × '.join(map(str, small))} voxels "
                     "(tiny in quick mode, which exaggerates what it loses).")
        if name_ == "phantom" and "ngffreg_rigid" in case["runs"]:
            note += (" The truth is rigid; every default (ngffreg's, ANTs') is deformable. "
                     "The row *rigid only* is ngffreg with the documented option for such a "
                     f"pair (`{', '.join(f'{k}={v!r}' for k, v in RIGID.items())}`).")
            d, r = case["runs"].get("ngffreg", {}), case["runs"]["ngffreg_rigid"]
            if d.get("max_mm") and r.get("max_mm") and r["max_mm"] < d["max_mm"]:
                note += (f" Here the defaults are the wrong choice for a rigid pair: "
                         f"{d['max_mm']:.2f} mm at worst (median {d['median_mm']:.2f}) "
                         f"against {r['max_mm']:.2f} mm (median {r['median_mm']:.2f}) with the "
                         "rigid option.")
        out += [f"### {TITLES[name_]}", "", note, "", case_table(name_, case), "",
                f"![{name_}]({fig}_{name_}.png)", ""]
        if name_ == "ch2_mni":
            out += ["The label round trip measures how well a tool's inverse undoes its "
                    "forward transform (plus two nearest-neighbour resamplings), not anatomy: "
                    "ch2 has no labels of its own. The *no registration* row (identity both "
                    "ways) shows its ceiling; read it with the NCC.", ""]
    if record.get("scale"):
        s = record["scale"]
        st = s["ngffreg_settings"]
        out += [f"### {TITLES['scale']}", "",
                f"`bench_scale.py`'s cases: brain level {s['level']}, factors {s['factors']} "
                "(the same physical box on a grid k times finer per axis, the same known "
                "deformation). ngffreg runs as `bench_scale.py` runs it: "
                f"`coarse_spacing` = {st['coarse_spacing']}, blocks of {st['chunk_size']} "
                f"voxels at full resolution, `fine_accuracy=\"{st['fine_accuracy']}\"` "
                "(its defaults would put a 128-voxel block over the whole small case). The "
                "ANTs tools register level 0 of the same stores in memory."
                + "".join(f" ANTs at 4× down registered "
                          f"{' × '.join(map(str, r['registered_shape']))} voxels at "
                          f"{r['factor']}×." for r in s["runs"]
                          if r["tool"] == "ants_4x" and r.get("registered_shape")), "",
                scale_table(s), "", f"![scaling]({fig}_scale.png)", ""]
    tp = record.get("throughput", {})
    if tp:
        src = ("the latest entries of `results/warp.json` and `results/convert.json`, not "
               "re-run by this command" if tp["source"] == "json" else
               " and ".join(f"`{c['command']}`" for c in tp["commands"]) + ", run first by "
               "this command")
        out += ["### Warp and convert throughput", "",
                f"Ratio of voxels per second to a plain Zarr copy of the same array in the "
                f"same run; from {src}.", "", throughput_table(tp), "",
                f"![throughput]({fig}_throughput.png)", ""]
    out += [f"Full mode (`make bench-full`, `benchmarks/bench.py --full`): {FULL_NOTE}", "",
            END]
    return "\n".join(out)


FULL_NOTE = (
    "full resolution (ch2 → mni at 1 mm, phantom at 1 mm, brain level 0, scaling 1×, 8× and "
    "64× of level 0; `bench_warp.py` and `bench_convert.py` run first at their full sizes). "
    "Not run here. On this 2-core machine it would take days: whole-volume "
    "`antsRegistrationSyN[s]` alone is ~42 min on the level-0 brain and about as long on "
    "ch2 → mni at 1 mm, and ngffreg's scaling runs were measured at ~400 s per million "
    "voxels (the 64× case, 904 M voxels, about 100 hours). Whole-volume ANTs is skipped on "
    "a scale case when its memory, extrapolated from the smaller case, would exceed 80 % "
    "of RAM.")


def write_results_md(text: str) -> None:
    old = RESULTS_MD.read_text() if RESULTS_MD.is_file() else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS_MD.write_text(new)


# ---------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--quick", action="store_true", help="small levels (~15 min on 2 cores)")
    g.add_argument("--full", action="store_true", help="full resolution (days on 2 cores)")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    p.add_argument("--cores", type=int, default=None,
                   help="cores for every tool (default: all this process may use)")
    p.add_argument("--bigstream-python", default=None,
                   help="a Python interpreter whose environment has bigstream (zarr<3)")
    p.add_argument("--level", nargs=2, action="append", metavar=("CASE", "LEVEL"), default=[],
                   help="override a case's pyramid level (ch2_mni, phantom, brain, scale)")
    p.add_argument("--factors", type=int, nargs="+", default=None,
                   help="scale factors (cubes; default quick 1 8, full 1 8 64)")
    p.add_argument("--throughput", choices=("json", "run", "none"), default=None)
    p.add_argument("--name", default=None,
                   help="names the outputs results/bench_<name>.* (default: the mode)")
    p.add_argument("--no-results-md", action="store_true",
                   help="do not rewrite the generated section of RESULTS.md")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: redraw the figures and the RESULTS.md section from "
                        "results/bench_<name>.json")
    args = p.parse_args()
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    name = args.name or mode_name
    if args.render_only:
        record = json.loads((HERE / "results" / f"bench_{name}.json").read_text())
        publish(record, name, not args.no_results_md)
        return
    cores = args.cores or len(os.sched_getaffinity(0))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(cores)
    levels = {k: mode[k] for k in ("ch2_mni", "phantom", "brain")}
    levels["scale"] = mode["scale_level"]
    for case, level in args.level:
        if case not in levels:
            raise SystemExit(f"--level takes one of {sorted(levels)}; got {case!r}")
        levels[case] = int(level)
    factors = args.factors or mode["factors"]
    for f in factors:
        bench_scale.cube_root(f)
    tp_how = args.throughput or mode["throughput"]
    bs = bigstream_status(args.bigstream_python) if "bigstream" in args.tools else \
        "not run (not in --tools)"
    tools = [t for t in args.tools if t != "bigstream" or bs == "ok"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    load_start = os.getloadavg()
    command = " ".join([".venv/bin/python benchmarks/bench.py", *sys.argv[1:]])
    make = {"--quick": "make bench", "--full": "make bench-full"}.get(" ".join(sys.argv[1:]))
    print(f"bench {mode_name}: cases {args.cases}, tools {tools}, {cores} cores; "
          f"bigstream: {bs}; load average {load_start[0]:.1f}", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    specs = case_specs(mode, levels)
    record: dict[str, Any] = {
        "mode": mode_name, "date": time.strftime("%Y-%m-%d %H:%M"), "command": command,
        "make": make,
        "machine": machine(cores), "versions": versions(), "bigstream": bs,
        "cores": cores, "env": {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(cores)},
        "levels": levels, "code": bench_scale.code_version(), "cases": {}}
    for cname in [c for c in args.cases if c != "scale"]:
        case = specs[cname]
        if cname == "brain":
            case["folder"] = ensure_brain_case(levels["brain"])
        info = case_info(case)
        sp = info.get("spacing", [])
        shape = " × ".join(map(str, info.get("shape", [])))
        case["description"] = (f"level {levels[cname]}: fixed {shape} voxels of "
                               f"{' × '.join(f'{s:g}' for s in sp)} {info.get('unit', '')}")
        print(f"case {cname}: {case['description']}", flush=True)
        runs = {"none": run_tool(case, "none", WORK / cname, cores, None)}
        for tool in tools + (list(case.get("variants", {})) if "ngffreg" in tools else []):
            runs[tool] = run_tool(case, tool, WORK / cname, cores, args.bigstream_python)
        record["cases"][cname] = {"description": case["description"], "info": info,
                                  "runs": runs}
    if "scale" in args.cases:
        print("case scale", flush=True)
        record["scale"] = run_scale(mode, tools, cores, args.bigstream_python, factors,
                                    levels["scale"])
    if tp_how != "none":
        record["throughput"] = throughput(tp_how, mode_name)
    loads = sorted([r.get("load_1min_at_start") for c in record["cases"].values()
                    for r in c["runs"].values() if r.get("load_1min_at_start") is not None]
                   + [r.get("load_1min_at_start") for r in record.get("scale", {})
                      .get("runs", []) if r.get("load_1min_at_start") is not None]
                   + [load_start[0]])
    record["load"] = {"start": load_start, "end": os.getloadavg(), "min": loads[0],
                      "median": loads[len(loads) // 2], "max": loads[-1]}
    record["total_s"] = round(time.perf_counter() - t0, 1)
    record["total_cpu_s"] = round(_children_cpu() - cpu0, 1)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"bench_{name}.json").write_text(json.dumps(record, indent=1, default=float)
                                                + "\n")
    publish(record, name, not args.no_results_md)


def publish(record: dict, name: str, results_md: bool) -> None:
    """Figures and the RESULTS.md section of a run's record."""
    results = HERE / "results"
    for cname, case in record["cases"].items():
        case_figure(cname, case, results / f"bench_{name}_{cname}.png")
    if record.get("scale"):
        scale_figure(record["scale"], results / f"bench_{name}_scale.png")
    if record.get("throughput"):
        throughput_figure(record["throughput"], results / f"bench_{name}_throughput.png")
    text = markdown(record, name)
    if results_md:
        write_results_md(text)
    print()
    print(text)
    print(f"\ntotal {record['total_s']:.0f} s; results/bench_{name}.json", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_tool":
        tool_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_measure":
        measure_child(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) > 1 and sys.argv[1] == "_info":
        info_child(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "_export":
        export_child(sys.argv[2], sys.argv[3])
    else:
        main()
