"""Issue 17: ngffreg against bigstream, side by side, on bigstream's own example pair.

The pair is ``$NGFFREG_DATA_DIR/easifish/{fix,mov}.ome.zarr`` (OME-Zarr 0.5, uint16,
298×483×913 and 288×483×912 voxels z, y, x at 0.84×0.92×0.92 µm): bigstream's
``resources/fix.n5`` and ``mov.n5``, level ``highres``, converted (voxel for voxel).

    .venv/bin/python benchmarks/bench_easifish.py --tool both            # the real pair
    .venv/bin/python benchmarks/bench_easifish.py --tool both --known    # known deformation
    .venv/bin/python benchmarks/bench_easifish.py --tool both --crop 100:164,150:278,300:556
    .venv/bin/python benchmarks/bench_easifish.py --tool ngffreg-budget --memory-budget 2GiB

Tools (each a child process; wall time and the peak RSS of its whole process tree,
sampled every 0.1 s by ``bench_convert.TreeSampler``, dask workers included):

- ``ngffreg``: ``.venv/bin/ngffreg register FIX MOV -o OUT --overwrite``, all defaults
  (workers: one per CPU, so 2 here). It reads the OME-Zarr stores itself; its run includes
  writing the registered image, transform and QC table.
- ``ngffreg-budget``: the same with ``--memory-budget`` (folder ``ngffreg-budget``); the
  result adds the run's own peak per stage (``qc/summary.json``, ``memory_gib``).
- ``bigstream`` (5.0.3, ``.venv-bigstream``: ``make bigstream-env``; it needs zarr < 3
  and so cannot read these Zarr v3 stores): ``benchmarks/bigstream_easifish.py`` runs
  bigstream's own tutorial for this data,
  ``notebooks/tutorials_out_of_date_but_still_maybe_helpful/bigstream_intro_tutorial.ipynb``
  (JaneliaSciComp/bigstream; it loads ``resources/fix.n5`` / ``mov.n5``, levels ``lowres``
  and ``highres``), with its settings (spacings z, y, x: lowres 1.68×1.84×1.84 µm,
  highres 0.84×0.92×0.92 µm):

  1. global, ``alignment_pipeline`` on ``lowres`` in memory: ``ransac`` (``blob_sizes``
     [6, 20]), then ``affine`` (``shrink_factors`` (2,), ``smooth_sigmas`` (2.5,),
     learningRate 0.25, minStep 0, 400 iterations);
  2. local, ``distributed_piecewise_alignment_pipeline`` on ``highres``, ``blocksize``
     [128]*3, ``overlap`` 0.5 (its default), ``static_transform_list=[affine]``, steps
     ``ransac`` (``blob_sizes`` [6, 20], ``nspots`` 1000), then ``deform``
     (``smooth_sigmas`` (0.25,), ``control_point_spacing`` 128.0, ``control_point_levels``
     (1,), learningRate 0.25, minStep 0, 10 iterations), written to ``deform.zarr``;
  3. ``distributed_apply_transform`` of the moving ``highres`` through [affine, deform]
     (blocks of 128³) to ``deformed.zarr``.

  Not used: bigstream's other example for this data,
  ``bigstream_easifish_pipeline_example.ipynb`` (same folder), which calls
  ``easifish_registration_pipeline(..., blocksize=[128]*3)`` at its defaults. In 5.0.3 it
  cannot be imported with ClusterWrap 1.x (fixed upstream after 5.0.3; ClusterWrap is held
  at 0.3.2 here), and its global ransac (``alignment_spacing`` 6.72 µm, ``blob_sizes``
  [7, 27]) finds 13 fixed spots on the lowres pair, ours or the repository's own, below
  its threshold of 100, so the pipeline stops with "fix spot detection safeguard failed".
  The tutorial's global step finds 1521 and 1281 spots, 813 matches.

  ``lowres`` is not in our stores: it is made as bigstream's was (the repository's
  ``lowres`` is ``downsamplingFactors`` [2, 2, 2] of ``highres``, 149×241×456 and
  144×241×456): the 2×2×2 block mean of ``highres`` (a trailing odd voxel dropped),
  rounded to uint16. Checked against the repository's ``resources/*.n5/lowres``: within 1
  grey level everywhere, identical at 87 % of voxels. Both levels are exported from the
  project venv (not timed) to a Zarr v2 group, ``<case>/bigstream_in.zarr`` (chunks 70×128×128
  like the N5s), which the bigstream venv reads like the example's N5s. The timed run is the
  bigstream script alone (Python start-up, imports, the three phases and the cluster
  start-up; the phases are also reported apart).

  ``--bigstream-segment SECONDS``: on the whole pair bigstream takes 6–7 hours, longer
  than a sitting on a machine whose processes end with it. The run then goes in segments
  (``bigstream_easifish.py --stop-after``): no block starts later than SECONDS after a
  segment's start, finished blocks are kept, and the same command goes on where the last
  segment stopped. bigstream's own code does all the work; only the list of blocks handed
  to ``client.map`` is cut. The result sums the segments' walls and CPU seconds and takes
  the largest peak (``segment_runs`` lists them); each segment repeats Python start-up,
  imports and the cluster start-up (a few seconds), and a worker whose last block ends
  before its partner's sits idle until the segment ends.

  Cores: the tutorial passes ``cluster_kwargs={}``, so ClusterWrap's ``local_cluster`` is a
  default ``dask.distributed.LocalCluster``: on 2 cores, 2 workers × 1 thread. Used here the
  same, explicitly (``--cores`` single-threaded workers), and ``ITK_THREADS=--cores`` for
  SimpleITK in every process (bigstream's own default on a 2-core machine). With more CPUs
  than ``--cores`` both tools' process trees are pinned to the first ``--cores`` CPUs
  (``sched_setaffinity``); note that ngffreg's default worker count follows
  ``os.cpu_count()``, so run this on a 2-core machine (as issue 17 asks) for the defaults
  to mean 2 workers.

Quality, measured afterwards the same way for both tools, in this venv with ngffreg's
transform model and ``warp``:

- bigstream's result in ngffreg's model: bigstream works in (z, y, x) array coordinates ×
  spacing from a zero origin, and ``apply_transform(..., [affine, deform])`` maps a fixed
  point ``x`` to ``A (x + d(x))`` (SimpleITK's composite: the last transform of the list is
  applied first; ``d`` is ``deform.zarr`` on the fixed highres grid, components z, y, x in
  µm, zero outside). Ours adds the images' origins:
  ``Sequence(DisplacementField(d, origin=fixed origin), Affine(T(+om) · A · T(−of)))``.
  Checked on every bigstream run: bigstream's own resampling (``deformed.zarr``) against the
  moving image sampled through this model (linear interpolation) on a central box of up
  to 64×128×128 fixed voxels, and against the other reading ``A x + d(x)`` (``convention``
  in the result).
- grid: the fixed image's level 1, made here as the 2×2×2 block mean (voxel centres at the
  block centres); the moving image is block-averaged the same way and warped through each
  tool's fixed → moving transform onto it (linear). "Before" is the identity (the images'
  own placement).
- foreground: the level-1 fixed image smoothed by a Gaussian of σ = 1 voxel, above its
  Otsu threshold.
- NCC on the foreground, overall and per region: a 4×4×4 grid of equal regions of the
  level-1 volume; a region counts when at least 5 % of it and 500 voxels are foreground.
  Reported: the median over regions before and after, and the fraction that improved.
- NCC where the moving round has data (``*_covered``): the foreground voxels whose point
  falls inside the moving image under every tool's linear alignment found in the case
  folder (ngffreg's coarse linear steps, bigstream's global affine). The real pair's second
  round did not image about 14 % of the first's foreground; a fine step that pulls tissue
  into those strips scores there on the plain foreground NCC while showing nothing real,
  so this measure leaves them out, the same voxels for both tools (``covered_fraction``).
- ``--known``: a smooth random displacement field of our making, ``S`` (per component z,
  y, x: a sum of 4 plane sinusoids, random directions, wavelengths 150–400 µm, random
  phases and weights, seed 17, scaled so that its largest displacement on the fixed grid
  is 6 µm; sampled every 4 voxels, linear in between) warps the FIXED volume into a
  synthetic moving one, ``moving(x) = fixed(S(x))``, written as OME-Zarr 0.5 (one level,
  like the real pair) with ngffreg's writer and exported for bigstream as above. Both
  tools register fixed → synthetic; the true fixed → moving map is ``S⁻¹`` (ngffreg's
  point inversion, tolerance 1e-6 µm). TRE: ``|tool(p) − S⁻¹(p)|`` at 20 000 random
  foreground points (seed 0; uniform inside random foreground level-1 voxels), median and
  p95 in µm and in voxels of the smallest spacing (0.84 µm); the known map's own
  magnitude ``|S⁻¹(p) − p|`` at those points is the "before".

``--crop Z0:Z1,Y0:Y1,X0:X1`` (smoke tests): both images cropped to these index ranges,
the moving one shifted by ``--moving-offset DZ,DY,DX`` voxels (default 0; clipped to each
image), kept in place (origin = start × spacing, so the true map is the pair's own), written
as OME-Zarr 0.5 in the work folder; the known field is made on the cropped fixed grid and
the deformed copy is sampled from the whole fixed volume, so that it holds tissue to
the crop's faces (from the crop alone, its faces held zeros inside the image). The
real pair is offset by about (−10, −36, −84) voxels (moving index = fixed index + offset;
phase correlation of the whole lowres pair), so a small crop at the same indices holds
different cells in each image; for the crop ``100:164,150:278,300:556`` the best integer
offset is ``-4,-28,-86`` (NCC 0.68 at full resolution, 0.01 at offset 0). On a small
crop bigstream's global ransac may find fewer spots than its threshold (100; it excludes
12 voxels at each border of the lowres crop), so crops run it with
``safeguard_exceptions=False`` (the identity when it fails, as the per-block ransac steps
always do); the full pair runs the tutorial's steps unchanged.

Outputs, in ``--work`` (default ``benchmarks/_work/easifish_bench``): ``real/`` or
``known/`` (inputs, each tool's output, ``<tool>/run.log`` and ``<tool>/result.json``: the
command, exit status, wall, peak RSS, threads, CPU seconds, load average, bigstream's phase
seconds and the measures), and ``summary_<case>.json`` / ``summary_<case>.md`` with the
command line, versions of both venvs, the machine and the load average at start and end.
The table is printed. The tools can run in separate invocations (``--tool ngffreg``, then
``--tool bigstream``): the summary takes a tool's earlier result on the same inputs, marked
"earlier run" (inputs made again for another crop drop the earlier results).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_convert import TreeSampler  # noqa: E402

PY = sys.executable
SCRIPT = str(Path(__file__).resolve())
BIGSTREAM_SCRIPT = HERE / "bigstream_easifish.py"
CASE_VERSION = 2  # 2: a crop's known copy is sampled from the whole fixed volume
STORE_CHUNKS = (64, 128, 128)  # the pair's own chunks
EXPORT_CHUNKS = (70, 128, 128)  # bigstream's N5 block size, z, y, x
#: The known deformation: per component, a sum of WAVES plane sinusoids.
KNOWN = {"seed": 17, "max_um": 6.0, "waves": 4, "wavelength_um": [150.0, 400.0],
         "control_voxels": 4}
REGIONS = 4
REGION_MIN_FRACTION, REGION_MIN_VOXELS = 0.05, 500
TRE_POINTS = 20_000
CHECK_BOX = (64, 128, 128)


def data_dir() -> Path:
    return Path(os.environ.get("NGFFREG_DATA_DIR", ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------------------------------
# child 1: the case's inputs (cropped / synthetic stores, bigstream's export, the truth)
# ---------------------------------------------------------------------------------------
def _parse_crop(text: str | None) -> list[list[int]] | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 3:
        raise SystemExit(f"--crop takes Z0:Z1,Y0:Y1,X0:X1; got {text!r}")
    return [[int(v) for v in p.split(":")] for p in parts]


def known_field(grid: Any) -> Any:
    """The known moving → fixed map ``S`` on ``grid`` (see the module docstring)."""
    import numpy as np

    from ngffreg.image import Grid
    from ngffreg.transforms import DisplacementField

    rng = np.random.default_rng(KNOWN["seed"])
    step = KNOWN["control_voxels"]
    shape = tuple(int(np.ceil((n - 1) / step)) + 1 for n in grid.shape)
    coarse = Grid(shape, grid.spacing * step, grid.frame_origin, grid.direction, grid.unit)
    pts = coarse.points() - grid.origin
    lo, hi = KNOWN["wavelength_um"]
    field = np.zeros((len(pts), 3))
    for c in range(3):
        for _ in range(KNOWN["waves"]):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = direction / rng.uniform(lo, hi)
            field[:, c] += rng.uniform(0.5, 1.0) * np.sin(
                2 * np.pi * pts @ k + rng.uniform(0, 2 * np.pi))
    field *= KNOWN["max_um"] / np.linalg.norm(field, axis=1).max()
    data = np.moveaxis(field.reshape(*shape, 3), -1, 0).astype(np.float32)
    return DisplacementField.from_array(data, spacing=coarse.spacing, origin=coarse.origin,
                                        unit=grid.unit, outside="nearest")


def _lowres(a: Any) -> Any:
    """The 2×2×2 block mean, a trailing odd voxel dropped, rounded to uint16."""
    import numpy as np

    s = [n // 2 * 2 for n in a.shape]
    b = a[: s[0], : s[1], : s[2]].astype(np.float32)
    b = b.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))
    return np.rint(b).astype(np.uint16)


def prepare_child(case_dir: str, crop_text: str, known: str, offset_text: str) -> None:
    import numpy as np
    import zarr

    from ngffreg.image import Grid, load
    from ngffreg.io.read import open_image
    from ngffreg.io.write import to_ome_zarr
    from ngffreg.warp import warp

    folder = Path(case_dir).resolve()
    crop = _parse_crop(crop_text)
    offsets = {"fixed": [0, 0, 0], "moving": [int(v) for v in offset_text.split(",")]}
    src = data_dir() / "easifish"
    paths = {"fixed": str(src / "fix.ome.zarr"), "moving": str(src / "mov.ome.zarr")}
    images = {k: open_image(p) for k, p in paths.items()}
    t = time.perf_counter()
    if crop:
        for k, img in images.items():
            sel = {d: slice(max(0, a + o), min(b + o, img.sizes[d])) for d, (a, b), o in
                   zip("zyx", crop, offsets[k], strict=True)}
            images[k] = img.isel(sel)
            paths[k] = str(folder / f"{k}.ome.zarr")
            to_ome_zarr(images[k], paths[k], chunks=STORE_CHUNKS, n_levels=1, overwrite=True)
            images[k] = open_image(paths[k])
    meta: dict[str, Any] = {"version": CASE_VERSION, "crop": crop_text or None,
                            "moving_offset": offset_text, "known": known == "1"}
    if known == "1":
        s = known_field(Grid.of(images["fixed"]))
        # sampled from the whole fixed volume: a crop's deformed copy holds tissue to its
        # faces, as a crop of a larger acquisition would (from the crop alone, its faces
        # held zeros inside the image up to the map's 6 µm deep)
        synth = warp(open_image(str(src / "fix.ome.zarr")), s, like=images["fixed"],
                     dtype="uint16", chunks=STORE_CHUNKS)
        paths["moving"] = str(folder / "moving_known.ome.zarr")
        to_ome_zarr(synth, paths["moving"], chunks=STORE_CHUNKS, n_levels=1, overwrite=True)
        images["moving"] = open_image(paths["moving"])
        g = s.grid
        np.savez(folder / "truth.npz", field=np.asarray(s.field.values, dtype=np.float32),
                 spacing=g.spacing, origin=g.origin)
        meta["known_field"] = KNOWN
    # bigstream's inputs: Zarr v2, highres and lowres, like its example's N5s
    export = folder / "bigstream_in.zarr"
    shutil.rmtree(export, ignore_errors=True)
    root = zarr.open_group(str(export), mode="w", zarr_format=2)
    pair: dict[str, Any] = {}
    for k, name in (("fixed", "fix"), ("moving", "mov")):
        img = load(images[k])
        hi = np.asarray(img.values)
        lo = _lowres(hi)
        for level, arr in (("highres", hi), ("lowres", lo)):
            z = root.create_array(f"{name}/{level}", shape=arr.shape, dtype=arr.dtype,
                                  chunks=tuple(min(c, n) for c, n in
                                               zip(EXPORT_CHUNKS, arr.shape, strict=True)))
            z[...] = arr
        g = Grid.of(img)
        pair[f"{name}_highres_spacing"] = g.spacing.tolist()
        pair[f"{name}_lowres_spacing"] = (2 * g.spacing).tolist()
        pair[f"{name}_origin"] = g.origin.tolist()
        pair[f"{name}_shape"] = list(g.shape)
        pair["unit"] = g.unit
    (export / "pair.json").write_text(json.dumps(pair, indent=1))
    meta.update(paths, pair=pair, prepare_s=round(time.perf_counter() - t, 1))
    (folder / "case.json").write_text(json.dumps(meta, indent=1))  # last: marks it complete
    print("    case " + json.dumps({k: meta[k] for k in ("fixed", "moving", "prepare_s")}),
          flush=True)


# ---------------------------------------------------------------------------------------
# child 2: measure one tool's result
# ---------------------------------------------------------------------------------------
def load_transform(case: dict, tool: str, folder: Path) -> Any:
    """The tool's fixed → moving transform in ngffreg's model."""
    import dask.array as da
    import numpy as np

    from ngffreg.transforms import Identity

    if tool == "none":
        return Identity()
    if tool in ("ngffreg", "ngffreg-budget"):
        from ngffreg.transforms import read_registration

        return read_registration(str(folder / tool / "out.ome.zarr"))
    if tool in ("bigstream", "bigstream_alt"):
        pair = case["pair"]
        out = folder / "bigstream"
        return bigstream_model(np.loadtxt(out / "affine.mat"),
                               da.from_zarr(str(out / "deform.zarr")),
                               pair["fix_highres_spacing"], pair["fix_origin"],
                               pair["mov_origin"], pair["unit"], alt=tool == "bigstream_alt")
    raise SystemExit(f"unknown tool {tool!r}")


def linear_parts(case: dict, folder: Path) -> dict[str, Any]:
    """Each tool's linear alignment, where its result is in ``folder``: ngffreg's coarse
    linear steps (its transform less the displacement fields), bigstream's global
    affine."""
    import numpy as np

    from ngffreg.transforms import DisplacementField, Sequence

    out: dict[str, Any] = {}
    if (folder / "ngffreg" / "out.ome.zarr").exists():
        full = load_transform(case, "ngffreg", folder)
        steps = [t for t in getattr(full, "transforms", (full,))
                 if not isinstance(t, DisplacementField)]
        out["ngffreg"] = steps[0] if len(steps) == 1 else Sequence(transforms=tuple(steps))
    if (folder / "bigstream" / "affine.mat").exists():
        pair = case["pair"]
        out["bigstream"] = bigstream_model(
            np.loadtxt(folder / "bigstream" / "affine.mat"),
            np.zeros((2, 2, 2, 3), np.float32), pair["fix_highres_spacing"],
            pair["fix_origin"], pair["mov_origin"], pair["unit"]).transforms[1]
    return out


def imaged_by_both(case: dict, folder: Path, fixed1: Any, moving1: Any) -> tuple[Any, list]:
    """The fixed voxels that the moving round imaged, under every tool's linear alignment
    in ``folder`` (all of them where there is none): where a tool's fine step can only
    invent what it shows is left out of the ``*_covered`` measures, the same voxels for
    every tool."""
    import numpy as np

    from ngffreg.warp import warp

    covered = np.ones(fixed1.shape, dtype=bool)
    parts = linear_parts(case, folder)
    ones = moving1.copy(data=np.ones(moving1.shape, np.float32))
    for t in parts.values():
        covered &= np.asarray(warp(ones, t, like=fixed1, interpolator="nearestNeighbor")
                              .values) > 0
    return covered, sorted(parts)


def bigstream_model(a: Any, field: Any, spacing: Any, of: Any, om: Any, unit: str,
                    alt: bool = False) -> Any:
    """bigstream's [affine ``a``, displacement ``field``] (fixed grid × 3, zero origins) as
    ngffreg's fixed → moving transform, the images' origins ``of``, ``om`` added:
    ``A (x + d(x))``, or with ``alt`` the other reading ``A x + d(x)``."""
    import dask.array as da
    import numpy as np

    from ngffreg.transforms import Affine, DisplacementField, Sequence

    of, om = np.asarray(of, dtype=np.float64), np.asarray(om, dtype=np.float64)
    move = da.moveaxis if isinstance(field, da.Array) else np.moveaxis
    d = DisplacementField.from_array(move(field, -1, 0), spacing=spacing, origin=of, unit=unit)
    shift_in, shift_out = np.eye(4), np.eye(4)
    shift_in[:3, 3], shift_out[:3, 3] = -of, om
    affine = Affine(matrix=shift_out @ np.asarray(a, dtype=np.float64) @ shift_in)
    return _AltBigstream(affine, d) if alt else Sequence(transforms=(d, affine))


def selftest_in(folder: str) -> None:
    """The convention check's inputs: a smooth random moving image, an affine (rotation,
    scale, shear, translation) and a smooth field of up to 2 µm, origins and spacings that
    differ between the images."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(5)
    fs, ms = np.array([0.84, 0.92, 0.92]), np.array([1.0, 0.9, 1.1])
    fix_shape, mov_shape = (40, 48, 56), (44, 54, 60)
    moving = ndimage.gaussian_filter(rng.normal(size=mov_shape), 2.0).astype(np.float32)
    moving = (moving - moving.min()) / np.ptp(moving) * 1000
    c = np.asarray(fix_shape) * fs / 2
    t = np.radians(12)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    m = rot @ np.diag([1.04, 0.97, 1.02]) + np.array([[0, 0.05, 0], [0, 0, 0], [0.03, 0, 0]])
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = c - m @ c + np.array([2.0, 1.5, 3.0])
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=fix_shape), 6.0)
                      for _ in range(3)], axis=-1)
    field *= 2.0 / np.linalg.norm(field, axis=-1).max()
    idx = np.argwhere(np.ones(fix_shape, bool))[::37]
    np.savez(Path(folder) / "check_in.npz", moving=moving, fix_shape=fix_shape, fix_spacing=fs,
             mov_spacing=ms, affine=a, field=field.astype(np.float32),
             points=(idx * fs).astype(np.float64))


def selftest_out(folder: str) -> None:
    """Compare bigstream's own resampling and point mapping with our reading."""
    import numpy as np

    from ngffreg.image import Grid, make_image
    from ngffreg.qc import ncc
    from ngffreg.warp import warp

    z, b = np.load(Path(folder) / "check_in.npz"), np.load(Path(folder) / "check_out.npz")
    of, om = np.array([10.0, -5.0, 20.0]), np.array([3.0, 7.0, -4.0])
    moving = make_image(z["moving"], spacing=z["mov_spacing"], origin=om)
    grid = Grid.from_origin(tuple(z["fix_shape"]), z["fix_spacing"], of)
    theirs = b["image"].astype(np.float64)
    inner = tuple(slice(3, n - 3) for n in theirs.shape)  # off the resampling's edges
    out: dict[str, Any] = {}
    for name, alt in (("ours", False), ("other", True)):
        model = bigstream_model(z["affine"], z["field"], z["fix_spacing"], of, om,
                                "micrometer", alt=alt)
        pts = model.apply(z["points"] + of) - om
        err = np.linalg.norm(pts - b["points"], axis=1)
        entry = {"points_max_err_um": float(err.max())}
        if not alt:
            ours = warp(moving, model, like=grid).values.astype(np.float64)
            entry.update(image_ncc=ncc(ours[inner], theirs[inner]),
                         image_mean_abs_diff=float(np.abs(ours - theirs)[inner].mean()),
                         image_std=float(theirs[inner].std()))
        out[name] = entry
    print("RESULT " + json.dumps(out), flush=True)


def convention_selftest(work: Path, python: str) -> dict | None:
    folder = work / "convention_check"
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([PY, SCRIPT, "_selftest_in", str(folder)], check=True)
    p = subprocess.run([python, str(BIGSTREAM_SCRIPT), "--convention-check", str(folder)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        return None
    return _child(["_selftest_out", str(folder)])


class _AltBigstream:
    """``A x + d(x)``: the reading of bigstream's pair that the check rules out."""

    def __init__(self, affine: Any, field: Any) -> None:
        self.affine, self.field = affine, field

    def apply(self, points: Any) -> Any:
        return self.affine.apply(points) + self.field.displacement(points)


def level1(image: Any) -> Any:
    """The 2×2×2 block mean (float32, in memory), voxel centres at the blocks' centres."""
    import dask.array as da
    import numpy as np

    from ngffreg.image import Grid, make_image

    g = Grid.of(image)
    data = da.coarsen(np.mean, image.data.astype(np.float32), {0: 2, 1: 2, 2: 2},
                      trim_excess=True)
    data = np.asarray(data.compute(), dtype=np.float32)
    return make_image(data, spacing=2 * g.spacing, origin=g.origin + 0.5 * g.spacing,
                      unit=g.unit)


def _regions(shape: Any) -> list[tuple[slice, ...]]:
    import itertools

    import numpy as np

    edges = [np.linspace(0, n, REGIONS + 1).round().astype(int) for n in shape]
    return [tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, idx, strict=True))
            for idx in itertools.product(range(REGIONS), repeat=3)]


def ncc_measures(fixed: Any, before: Any, after: Any, mask: Any) -> dict:
    import numpy as np

    from ngffreg.qc import ncc

    out: dict[str, Any] = {"ncc_before": ncc(fixed, before, mask),
                           "ncc_after": ncc(fixed, after, mask)}
    rb, ra = [], []
    for r in _regions(fixed.shape):
        m = mask[r]
        if m.sum() < max(REGION_MIN_VOXELS, REGION_MIN_FRACTION * m.size):
            continue
        rb.append(ncc(fixed[r], before[r], m))
        ra.append(ncc(fixed[r], after[r], m))
    rb_, ra_ = np.asarray(rb), np.asarray(ra)
    ok = np.isfinite(rb_) & np.isfinite(ra_)
    out.update(regions=int(ok.sum()), regions_total=REGIONS**3,
               region_ncc_before_median=float(np.median(rb_[ok])) if ok.any() else None,
               region_ncc_after_median=float(np.median(ra_[ok])) if ok.any() else None,
               regions_improved=float(np.mean(ra_[ok] > rb_[ok])) if ok.any() else None,
               region_ncc_before=[round(float(v), 4) for v in rb_],
               region_ncc_after=[round(float(v), 4) for v in ra_])
    return out


def known_truth(case: dict, folder: Path) -> Any:
    """The known map ``S`` of a ``--known`` case (its inverse is the true fixed → moving
    map), as a displacement field."""
    import numpy as np

    from ngffreg.transforms import DisplacementField

    npz = np.load(folder / "truth.npz")
    return DisplacementField.from_array(npz["field"], spacing=npz["spacing"],
                                        origin=npz["origin"], unit=case["pair"]["unit"],
                                        outside="nearest")


def tre_measures(case: dict, folder: Path, forward: Any, fixed1: Any, mask: Any) -> dict:
    import numpy as np

    from ngffreg.image import Grid

    s = known_truth(case, folder)
    g1 = Grid.of(fixed1)
    rng = np.random.default_rng(0)
    idx = np.argwhere(mask)
    if len(idx) > TRE_POINTS:
        idx = idx[rng.choice(len(idx), TRE_POINTS, replace=False)]
    pts = g1.frame_origin + g1.spacing * (idx + rng.uniform(-0.5, 0.5, idx.shape))
    truth, residual = s.apply_inverse(pts, return_residual=True)
    err = np.linalg.norm(forward.apply(pts) - truth, axis=1)
    mag = np.linalg.norm(truth - pts, axis=1)
    vox = float(np.min(case["pair"]["fix_highres_spacing"]))
    return {"tre_points": len(pts), "tre_median_um": float(np.median(err)),
            "tre_p95_um": float(np.percentile(err, 95)), "tre_max_um": float(err.max()),
            "tre_median_vox": float(np.median(err)) / vox,
            "tre_p95_vox": float(np.percentile(err, 95)) / vox,
            "known_median_um": float(np.median(mag)), "known_p95_um":
            float(np.percentile(mag, 95)), "known_max_um": float(mag.max()),
            "truth_inverse_residual_max_um": float(residual.max()), "voxel_um": vox}


def convention_check(case: dict, folder: Path, moving0: Any) -> dict:
    """bigstream's own resampling (``deformed.zarr``) against the moving image sampled
    through our reading of its transform (and through the other reading)."""
    import numpy as np
    import zarr
    from scipy import ndimage

    from ngffreg.image import Grid
    from ngffreg.qc import ncc

    pair = case["pair"]
    shape = np.asarray(pair["fix_shape"])
    size = np.minimum(shape, CHECK_BOX)
    start = (shape - size) // 2
    box = tuple(slice(int(a), int(a + n)) for a, n in zip(start, size, strict=True))
    theirs = np.asarray(zarr.open_array(str(folder / "bigstream" / "deformed.zarr"),
                                        mode="r")[box], dtype=np.float64)
    g = Grid.from_origin(shape, pair["fix_highres_spacing"], pair["fix_origin"],
                         unit=pair["unit"])
    pts = g.points(box)
    mgrid = Grid.of(moving0)
    out: dict[str, Any] = {"box": [[s.start, s.stop] for s in box]}
    for name in ("bigstream", "bigstream_alt"):
        q = mgrid.continuous_index(load_transform(case, name, folder).apply(pts))
        lo = np.clip(np.floor(q.min(axis=0)).astype(int) - 1, 0, np.asarray(mgrid.shape) - 1)
        hi = np.clip(np.ceil(q.max(axis=0)).astype(int) + 2, lo + 1, np.asarray(mgrid.shape))
        region = np.asarray(moving0.data[tuple(slice(a, b) for a, b in
                                               zip(lo, hi, strict=True))], dtype=np.float32)
        ours = ndimage.map_coordinates(region, (q - lo).T, order=1, mode="constant", cval=0.0)
        inside = np.all((q >= 0) & (q <= np.asarray(mgrid.shape) - 1), axis=1)
        t = theirs.ravel()[inside]
        diff = np.abs(ours[inside] - t)
        out[name] = {"ncc": ncc(ours[inside], t), "mean_abs_diff": float(diff.mean()),
                     "p99_abs_diff": float(np.percentile(diff, 99)),
                     "intensity_std": float(t.std()), "points": int(inside.sum())}
    return out


def measure_child(case_dir: str, tool: str) -> None:
    from scipy import ndimage

    from ngffreg.io.read import open_image
    from ngffreg.qc import ncc, otsu_threshold
    from ngffreg.transforms import Identity
    from ngffreg.warp import warp

    t = time.perf_counter()
    folder = Path(case_dir)
    case = json.loads((folder / "case.json").read_text())
    fixed0, moving0 = open_image(case["fixed"]), open_image(case["moving"])
    fixed1, moving1 = level1(fixed0), level1(moving0)
    forward = load_transform(case, tool, folder)
    f = fixed1.values
    smooth = ndimage.gaussian_filter(f, 1.0)
    mask = smooth > otsu_threshold(smooth)
    before = warp(moving1, Identity(), like=fixed1).values
    after = warp(moving1, forward, like=fixed1).values
    out: dict[str, Any] = {"grid": list(f.shape), "foreground_fraction": float(mask.mean())}
    out.update(ncc_measures(f, before, after, mask))
    covered, names = imaged_by_both(case, folder, fixed1, moving1)
    both = mask & covered
    out.update(covered_by=names, covered_fraction=float(both.sum() / max(1, mask.sum())),
               ncc_before_covered=ncc(f, before, both), ncc_after_covered=ncc(f, after, both))
    if case["known"]:
        out.update(tre_measures(case, folder, forward, fixed1, mask))
    if tool == "bigstream":
        out["convention"] = convention_check(case, folder, moving0)
    out["measure_s"] = round(time.perf_counter() - t, 1)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------
def _pin(cores: int):
    """A preexec_fn pinning the child to the first ``cores`` CPUs, or None when the
    machine has no more than that."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) <= cores:
        return None
    return lambda: os.sched_setaffinity(0, cpus[:cores])


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_tool(cmd: list[str], outdir: Path, cores: int, env: dict | None = None,
             append: bool = False) -> dict:
    """Run ``cmd`` with its output in ``outdir``/run.log (added to with ``append``): wall
    time, the peak RSS of its process tree, its CPU time (children's rusage, as far as they
    were waited for)."""
    load = os.getloadavg()
    cpu = _cpu_children()
    start = time.perf_counter()
    with open(outdir / "run.log", "a" if append else "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_pin(cores), cwd=outdir)
        with TreeSampler(proc.pid) as sampler:
            rc = proc.wait()
    wall = time.perf_counter() - start
    res = {"cmd": cmd, "rc": rc, "wall_s": round(wall, 1),
           "peak_rss_gib": round(sampler.peak / 2**30, 3), "threads": sampler.threads,
           "cpu_s": round(_cpu_children() - cpu, 1), "load_at_start": [round(v, 2) for v in load],
           "load_at_end": [round(v, 2) for v in os.getloadavg()]}
    if rc != 0:
        res["log_tail"] = (outdir / "run.log").read_text()[-3000:]
    return res


def _child(args: list[str]) -> dict | None:
    p = subprocess.run([PY, SCRIPT, *args], capture_output=True, text=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        print((p.stdout + p.stderr)[-3000:], file=sys.stderr)
        return None
    return json.loads(line[7:])


#: The tools' result folders in a case's folder (each named after its tool).
TOOL_FOLDERS = ("ngffreg", "ngffreg-budget", "bigstream")


def prepare(folder: Path, crop: str | None, known: bool, offset: str) -> dict:
    marker = folder / "case.json"
    if marker.exists():
        case = json.loads(marker.read_text())
        if (case.get("version"), case.get("crop"), case.get("known"),
                case.get("moving_offset")) == (CASE_VERSION, crop or None, known, offset):
            print(f"  inputs: {folder} (kept)", flush=True)
            return case
        marker.unlink()
    for tool in TOOL_FOLDERS:  # results on other inputs
        shutil.rmtree(folder / tool, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"  inputs: {folder} ...", flush=True)
    subprocess.run([PY, SCRIPT, "_prepare", str(folder), crop or "", "1" if known else "0",
                    offset], check=True)
    return json.loads(marker.read_text())


def run_ngffreg(case: dict, folder: Path, cores: int, budget: str | None = None) -> dict:
    out = folder / ("ngffreg-budget" if budget else "ngffreg")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [str(Path(PY).with_name("ngffreg")), "register", case["fixed"], case["moving"],
           "-o", str(out / "out.ome.zarr"), "--overwrite"]
    if budget:
        cmd += ["--memory-budget", budget]
    res = run_tool(cmd, out, cores)
    summary = out / "out.ome.zarr" / "qc" / "summary.json"
    if summary.exists():  # the run's own peaks per stage (process tree, every 0.2 s)
        res["stage_peak_gib"] = json.loads(summary.read_text()).get("memory_gib")
    return res


def run_bigstream(case: dict, folder: Path, cores: int, python: str,
                  segment: float | None = None) -> dict:
    """bigstream's example, whole; or, with ``segment`` seconds, one segment of a run that
    goes on where the last segment stopped (a run longer than a sitting: the segments'
    walls, CPU seconds and the largest peak are summed into the result when the last one
    ends; ``rc`` -1 while blocks are left)."""
    out = folder / "bigstream"
    if segment is None or not (out / "segments.jsonl").exists():
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    home = folder / "bigstream_home"  # ClusterWrap writes ~/.config/dask/ClusterWrap.yaml
    (home / ".config" / "dask").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    cmd = [python, str(BIGSTREAM_SCRIPT), str(folder / "bigstream_in.zarr"), str(out),
           "--cores", str(cores)]
    if case.get("crop"):
        cmd.append("--no-global-safeguard")
    if segment is not None:
        cmd += ["--stop-after", str(segment), "--log", str(out / "run.log")]
    res = run_tool(cmd, out, cores, env, append=segment is not None)
    if segment is not None:
        with open(out / "segment_runs.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        runs = [json.loads(ln) for ln in (out / "segment_runs.jsonl").read_text().splitlines()]
        res = {**res, "segment_runs": runs,
               "wall_s": round(sum(r["wall_s"] for r in runs), 1),
               "cpu_s": round(sum(r["cpu_s"] for r in runs), 1),
               "peak_rss_gib": max(r["peak_rss_gib"] for r in runs)}
        if res["rc"] == 0 and not (out / "bigstream.json").exists():
            res["rc"] = -1  # blocks left: not a result yet
    if (out / "bigstream.json").exists():
        inner = json.loads((out / "bigstream.json").read_text())
        res.update({k: inner[k] for k in ("register_s", "cluster_start_s", "global_s",
                                          "local_s", "resample_s", "changed_from_example")
                    if k in inner})
    return res


def versions(bigstream_python: str) -> dict:
    code = ("import json, importlib.metadata as m\n"
            "out = {}\n"
            "for d in ('ngffreg', 'bigstream', 'SimpleITK', 'itk', 'antspyx', 'dask',"
            " 'distributed', 'zarr', 'numpy', 'ClusterWrap'):\n"
            "    try: out[d] = m.version(d)\n"
            "    except m.PackageNotFoundError: out[d] = None\n"
            "import sys; out['python'] = sys.version.split()[0]\n"
            "print(json.dumps(out))")
    out = {}
    for name, py in (("project", PY), ("bigstream", bigstream_python)):
        try:
            p = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120)
            out[name] = {k: v for k, v in json.loads(p.stdout).items() if v is not None}
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            out[name] = {"error": str(exc)}
    return out


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def table(case_name: str, results: dict) -> str:
    known = case_name == "known"
    head = ["tool", "wall s", "peak GiB", "NCC before", "NCC after",
            "NCC where imaged (share)", "region NCC median", "regions improved"]
    if known:
        head += ["TRE median µm (vox)", "TRE p95 µm (vox)", "known map median/p95 µm"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for tool, r in results.items():
        m = r.get("measures") or {}
        cells = [tool, _f(r.get("wall_s"), "{:.0f}"), _f(r.get("peak_rss_gib"), "{:.2f}"),
                 _f(m.get("ncc_before")), _f(m.get("ncc_after")),
                 f"{_f(m.get('ncc_before_covered'))} → {_f(m.get('ncc_after_covered'))} "
                 f"({_f(m.get('covered_fraction'), '{:.0%}')})",
                 f"{_f(m.get('region_ncc_before_median'))} → "
                 f"{_f(m.get('region_ncc_after_median'))}",
                 f"{_f(m.get('regions_improved'), '{:.0%}')} of {m.get('regions', '–')}"]
        if known:
            cells += [f"{_f(m.get('tre_median_um'), '{:.2f}')} "
                      f"({_f(m.get('tre_median_vox'), '{:.2f}')})",
                      f"{_f(m.get('tre_p95_um'), '{:.2f}')} "
                      f"({_f(m.get('tre_p95_vox'), '{:.2f}')})",
                      f"{_f(m.get('known_median_um'), '{:.2f}')}/"
                      f"{_f(m.get('known_p95_um'), '{:.2f}')}"]
        if r.get("rc"):
            cells[0] += f" (failed, rc {r['rc']})"
        if r.get("earlier_run"):
            cells[0] += " (earlier run)"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_prepare":
        return prepare_child(*sys.argv[2:6])
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        return measure_child(*sys.argv[2:4])
    if len(sys.argv) > 1 and sys.argv[1] == "_selftest_in":
        return selftest_in(sys.argv[2])
    if len(sys.argv) > 1 and sys.argv[1] == "_selftest_out":
        return selftest_out(sys.argv[2])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tool", choices=("ngffreg", "bigstream", "both", "ngffreg-budget"),
                   default="both")
    p.add_argument("--memory-budget", default=None,
                   help="with --tool ngffreg-budget: ngffreg's --memory-budget (its own "
                        "folder, beside the run at the defaults)")
    p.add_argument("--work", type=Path, default=HERE / "_work" / "easifish_bench")
    p.add_argument("--crop", default=None, help="Z0:Z1,Y0:Y1,X0:X1 (smoke tests)")
    p.add_argument("--moving-offset", default="0,0,0",
                   help="with --crop: DZ,DY,DX voxels added to the moving image's crop")
    p.add_argument("--known", action="store_true",
                   help="register the fixed image to a copy deformed by a known map; TRE")
    p.add_argument("--bigstream-python", default=str(ROOT / ".venv-bigstream" / "bin" / "python"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--bigstream-segment", type=float, default=None, metavar="SECONDS",
                   help="bigstream in segments (a run longer than one sitting): this run "
                        "starts no block after SECONDS and the next one goes on; measured "
                        "when the last block is done")
    p.add_argument("--remeasure", action="store_true",
                   help="take the measures of the tools' earlier results again (no run)")
    args = p.parse_args()
    _parse_crop(args.crop)
    if args.moving_offset != "0,0,0" and not args.crop:
        raise SystemExit("--moving-offset goes with --crop")
    if len(args.moving_offset.split(",")) != 3:
        raise SystemExit(f"--moving-offset takes DZ,DY,DX; got {args.moving_offset!r}")
    if (args.tool == "ngffreg-budget") != bool(args.memory_budget):
        raise SystemExit("--tool ngffreg-budget and --memory-budget go together")
    tools = ["ngffreg", "bigstream"] if args.tool == "both" else [args.tool]
    case_name = "known" if args.known else "real"
    folder = (args.work / case_name).resolve()
    load_start = os.getloadavg()
    record: dict[str, Any] = {
        "command": [sys.executable, *sys.argv], "case": case_name, "crop": args.crop,
        "moving_offset": args.moving_offset,
        "cores": args.cores, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                        * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "load_at_start": [round(v, 2) for v in load_start],
        "versions": versions(args.bigstream_python)}
    print(f"bench_easifish: {case_name}, tools {tools}, crop {args.crop}, "
          f"load {load_start[0]:.2f}", flush=True)
    if "bigstream" in tools:
        record["convention_selftest"] = convention_selftest(args.work.resolve(),
                                                            args.bigstream_python)
        print(f"  bigstream convention self-test: {record['convention_selftest']}", flush=True)
    case = prepare(folder, args.crop, args.known, args.moving_offset)
    results: dict[str, Any] = {}
    for tool in tools:
        print(f"  {tool} ...", flush=True)
        if args.remeasure:  # the measures of an earlier run, taken again
            earlier = folder / tool / "result.json"
            if not earlier.exists():
                raise SystemExit(f"--remeasure: no earlier {tool} result in {folder}")
            res = json.loads(earlier.read_text())
            res["measures"] = _child(["_measure", str(folder), tool])
            res["remeasured"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            earlier.write_text(json.dumps(res, indent=1))
            results[tool] = res
            continue
        if tool.startswith("ngffreg"):
            res = run_ngffreg(case, folder, args.cores, args.memory_budget)
        else:
            res = run_bigstream(case, folder, args.cores, args.bigstream_python,
                                args.bigstream_segment)
        print(f"    {tool}: rc {res['rc']}, {res['wall_s']} s, {res['peak_rss_gib']} GiB",
              flush=True)
        if res["rc"] == -1:
            print(f"    {tool}: segment ended with blocks left; run the same command again",
                  flush=True)
            continue
        if res["rc"] == 0:
            res["measures"] = _child(["_measure", str(folder), tool])
        (folder / tool / "result.json").write_text(json.dumps(res, indent=1))
        results[tool] = res
    record["load_at_end"] = [round(v, 2) for v in os.getloadavg()]
    for tool in TOOL_FOLDERS:  # a tool run earlier on the same inputs
        earlier = folder / tool / "result.json"
        if tool not in results and earlier.exists():
            results[tool] = {**json.loads(earlier.read_text()), "earlier_run": True}
    record["results"] = results
    md = table(case_name, results)
    conv = (results.get("bigstream", {}).get("measures") or {}).get("convention")
    notes = [f"Command: `{' '.join(record['command'])}`",
             f"Machine: {record['machine']}; load average at start "
             f"{record['load_at_start']}, at end {record['load_at_end']}",
             f"Versions: {json.dumps(record['versions'])}"]
    st = record.get("convention_selftest")
    if st:
        notes.append("bigstream convention self-test (its apply_transform and "
                     "apply_transform_to_coordinates against our reading A(x + d(x)), 12° "
                     "rotation, 2 µm field, differing origins and spacings): points max "
                     f"error {st['ours']['points_max_err_um']:.2g} µm (other reading "
                     f"A x + d(x): {st['other']['points_max_err_um']:.2g} µm); image NCC "
                     f"{st['ours']['image_ncc']:.5f}, mean |diff| "
                     f"{st['ours']['image_mean_abs_diff']:.3g} (std "
                     f"{st['ours']['image_std']:.3g})")
    if conv:
        notes.append("bigstream's own resampling of this run (deformed.zarr, central box) "
                     f"against ours: NCC {conv['bigstream']['ncc']:.4f}, mean |diff| "
                     f"{conv['bigstream']['mean_abs_diff']:.2f} (intensity std "
                     f"{conv['bigstream']['intensity_std']:.1f}); other reading: NCC "
                     f"{conv['bigstream_alt']['ncc']:.4f}, mean |diff| "
                     f"{conv['bigstream_alt']['mean_abs_diff']:.2f}")
    text = md + "\n\n" + "\n\n".join(notes) + "\n"
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"summary_{case_name}.json").write_text(json.dumps(record, indent=1))
    (args.work / f"summary_{case_name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
