"""The registration pipeline end to end, on real data with known or measured answers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ngffreg.errors import InputError
from ngffreg.image import Grid
from ngffreg.registration.methods import BlockResult
from ngffreg.registration.register import register
from ngffreg.transforms import Identity

pytest.importorskip("ants")


def _truth(data_dir):
    from ngffreg.transforms.files import read_c3d_matrix

    return read_c3d_matrix(data_dir / "greedy" / "phantom01_rigid.mat", maps="moving_to_fixed")


def _mask_points(data_dir):
    import ngffreg

    mask = ngffreg.open_image(data_dir / "greedy" / "phantom01_mask.nii.gz").compute()
    return Grid.of(mask).points()[mask.values.ravel() > 0]


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory, data_dir):
    """The full pipeline on greedy phantom01 (known rigid truth): rigid coarse step, greedy
    blocks on the 2 mm level (8 blocks), written to an output store."""
    out = tmp_path_factory.mktemp("phantom") / "out.ome.zarr"
    d = data_dir / "greedy"
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
                      linear_type="Rigid", nonlinear_type_coarse=None, linear_accuracy="low",
                      downsample_factor=2, fine_level=1, chunk_size=32, fine_accuracy="low",
                      min_foreground=0.005, workers=2)
    return result, out


@pytest.mark.slow
def test_phantom_rigid_pipeline_is_within_half_a_millimetre_of_the_truth(data_dir):
    d = data_dir / "greedy"
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz",
                      linear_type="Rigid", nonlinear_type_coarse=None,
                      nonlinear_type_fine=None, linear_accuracy="low", downsample_factor=2)
    pts = _mask_points(data_dir)
    err = np.linalg.norm(result.transform.apply(pts) - _truth(data_dir).apply(pts), axis=1)
    assert err.max() < 0.5, f"max {err.max():.3f} mm, median {np.median(err):.3f} mm"
    assert result.coarse.metrics["ncc_after"] > result.coarse.metrics["ncc_before"]


@pytest.mark.slow
def test_phantom_blocks_run_and_report(phantom_run):
    result, _ = phantom_run
    assert len(result.blocks) == 8
    statuses = {r["status"] for r in result.blocks}
    assert statuses <= {"ok", "declined"}, result.table
    for r in result.blocks:
        # every block was fitted and judged on held-out voxels: kept only where it gained
        gain = r["held_out_after"] - r["held_out_before"]
        assert (gain > 0) == (r["status"] == "ok"), r
        if r["status"] == "ok":
            assert r["ncc_after"] >= r["ncc_before"] - 0.01
            assert r["jacobian_min"] > 0


@pytest.mark.slow
def test_peak_memory_is_recorded_per_stage(phantom_run):
    """Every stage's peak (this process and its workers) is in the result and in
    qc/summary.json (test_stage_memory_counts_child_processes: workers count)."""
    import json

    import psutil

    result, out = phantom_run
    stages = {"coarse", "blocks", "blend", "warp", "report"}
    assert set(result.memory) == {*stages, "publish"}
    summary = json.loads((out / "qc" / "summary.json").read_text())
    assert summary["memory_gib"] == {k: result.memory[k] for k in stages}
    assert all(0.05 < v < psutil.virtual_memory().total / 2**30 for v in result.memory.values())


def test_stage_memory_counts_child_processes():
    """A child process that holds 400 MB during stage b shows in b's peak, not in a's."""
    import subprocess
    import sys
    import time

    from ngffreg.registration.execution import StageMemory

    watch = StageMemory(interval=0.05)
    with watch.watching() as peaks:
        watch.stage("a")
        time.sleep(0.3)
        watch.stage("b")
        child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(400 * 2**20)"
                                  "; b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5)"])
        child.wait(timeout=60)
        watch.stage("c")
    assert peaks["b"] - peaks["a"] > 0.3, peaks
    assert peaks["c"] < peaks["b"] - 0.3, peaks
    with watch.watching() as again:  # a second watch starts afresh
        watch.stage("d")
    assert set(again) == {"d"}
    watch.stage("e")  # nothing watches: a no-op
    assert "e" not in again


def test_the_default_coarse_level_is_bounded_in_voxels():
    """The level of ``downsample_factor`` is taken unless it has more voxels than the cap:
    then the finest level within it (the coarse step's memory does not grow with the
    volume); a target spacing or a level asked for is not capped."""
    import dask.array as da

    from ngffreg.image import make_image
    from ngffreg.pyramid import image_levels
    from ngffreg.registration.coarse import COARSE_MAX_VOXELS, pick_level

    big = make_image(da.zeros((1024, 1024, 1024), dtype="uint16", chunks=256),
                     spacing=1.0)  # 1 G voxels, never computed
    levels = image_levels(big)
    sizes = [lv.size for lv in levels]
    assert sizes[2] > COARSE_MAX_VOXELS >= sizes[3]  # factor 4 lands on level 2
    assert pick_level(levels, downsample_factor=4) == 2
    assert pick_level(levels, downsample_factor=4, max_voxels=COARSE_MAX_VOXELS) == 3
    assert pick_level(levels, downsample_factor=16, max_voxels=COARSE_MAX_VOXELS) == 4
    assert pick_level(levels, target_spacing=4.0, max_voxels=COARSE_MAX_VOXELS) == 2
    assert pick_level(levels, level=1, max_voxels=COARSE_MAX_VOXELS) == 1


def test_the_linear_stages_run_one_level_finer_when_it_fits():
    """ANTs' linear stages take the level twice finer than the coarse level, unless it is
    larger than the cap or, under a memory budget, does not fit in it."""
    import dask.array as da

    from ngffreg.image import make_image
    from ngffreg.pyramid import image_levels
    from ngffreg.registration.coarse import (
        LINEAR_BYTES_PER_VOXEL,
        LINEAR_MAX_VOXELS,
        linear_level,
    )

    levels = image_levels(make_image(da.zeros((1024,) * 3, dtype="uint16", chunks=256),
                                     spacing=1.0))
    assert levels[3].size <= LINEAR_MAX_VOXELS < levels[2].size
    assert linear_level(levels, 4) == 3 and linear_level(levels, 0) == 0
    assert linear_level(levels, 3) == 3  # level 2 is over the cap
    need = levels[3].size * LINEAR_BYTES_PER_VOXEL
    assert linear_level(levels, 4, memory_budget=need) == 3
    assert linear_level(levels, 4, memory_budget=need - 1) == 4
    assert linear_level(levels, 4, memory_budget="200 MiB") == 4  # 2.1 M voxels: 0.24 GiB


def test_a_memory_budget_bounds_the_coarse_step():
    """With a run's memory budget the coarse step gets its share (and the rerun check
    sees it); ``coarse_memory_budget`` still wins."""
    import dask.array as da

    from ngffreg.image import make_image
    from ngffreg.pyramid import image_levels
    from ngffreg.registration.options import RegistrationOptions
    from ngffreg.registration.resolve import resolve, run_params

    levels = image_levels(make_image(da.zeros((512,) * 3, dtype="uint16", chunks=128),
                                     spacing=1.0))
    plain = resolve(RegistrationOptions(), levels)
    assert plain.coarse_budget is None
    budget = resolve(RegistrationOptions(memory_budget="2 GiB"), levels)
    assert budget.coarse_budget == budget.resources.coarse_memory <= 2 * 2**30
    params = run_params(RegistrationOptions(memory_budget="2 GiB"), budget, "f", "m",
                        levels, levels)
    assert params["coarse_memory_budget"] == budget.coarse_budget
    given = resolve(RegistrationOptions(memory_budget="2 GiB", coarse_memory_budget="3 GiB"),
                    levels)
    assert given.coarse_budget == "3 GiB"


@pytest.mark.slow
def test_the_coarse_step_runs_on_the_capped_level(data_dir, monkeypatch):
    """coarse_register applies the cap: the phantom (128³) at factor 2 is level 1 (64³);
    with a cap of 40 k voxels it runs on level 2 (32³)."""
    from ngffreg.pyramid import image_levels
    from ngffreg.registration import coarse

    d = data_dir / "greedy"
    fixed = image_levels(d / "phantom01_fixed.nii.gz")
    moving = image_levels(d / "phantom01_moving.nii.gz")
    kw = {"linear_type": "Rigid", "nonlinear_type": None, "linear_accuracy": "low",
          "downsample_factor": 2}
    assert coarse.coarse_register(fixed, moving, **kw).fixed_level == 1
    monkeypatch.setattr(coarse, "COARSE_MAX_VOXELS", 40_000)
    result = coarse.coarse_register(fixed, moving, **kw)
    assert result.fixed_level == 2 and fixed[2].size <= 40_000 < fixed[1].size
    assert result.metrics["linear_level"] == 1  # the linear stages one level finer
    tight = coarse.coarse_register(fixed, moving, **kw, level=2, memory_budget=100_000)
    assert tight.fixed_level == 2 and tight.metrics["linear_level"] == 2  # 64³ does not fit


@pytest.mark.slow
def test_output_store_is_complete_and_readable_without_ngffreg(phantom_run, data_dir, tmp_path):
    """The store holds the registered image, the NGFF transform (a spec-only reader maps
    points like transform-points), the QC table, the block results and ANTs files that
    ants.apply_transforms_to_points agrees with."""
    import ants
    import pandas as pd

    import ngff_spec_reader
    import ngffreg
    from ngffreg.cli import main

    result, out = phantom_run
    assert not (out.parent / (out.name + ".partial")).exists()
    image = ngffreg.open_image(out)
    assert image.shape == (128, 128, 128)
    pts = _mask_points(data_dir)[::50]
    ours = result.transform.apply(pts)
    assert np.abs(ngff_spec_reader.map_points(out, pts) - ours).max() < 1e-3
    pd.DataFrame(pts, columns=["z", "y", "x"]).to_csv(tmp_path / "in.csv", index=False)
    assert main(["transform-points", str(out), "--points", str(tmp_path / "in.csv"),
                 "-o", str(tmp_path / "out.csv")]) == 0
    cli = pd.read_csv(tmp_path / "out.csv")[["z", "y", "x"]].to_numpy()
    assert np.abs(cli - ours).max() < 1e-3

    with open(out / "qc" / "blocks.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {"status", "ncc_before", "ncc_after", "jacobian_min"} <= set(rows[0])
    summary = json.loads((out / "qc" / "summary.json").read_text())
    assert summary["coarse"]["ncc_after"] > summary["coarse"]["ncc_before"]
    assert len(list((out / "blocks").glob("b*"))) == 8

    listing = json.loads((out / "transforms" / "ants_transformlist.json").read_text())
    files = [str(out / "transforms" / name) for name in listing]
    xyz = pd.DataFrame(pts[:, ::-1], columns=["x", "y", "z"])
    theirs = ants.apply_transforms_to_points(3, xyz, files)[["x", "y", "z"]].to_numpy()[:, ::-1]
    assert np.abs(theirs - ours).max() < 1e-2


def _identity_method(fail_ids):
    def method(fixed, moving, initial, info):
        if info.id in fail_ids:
            raise RuntimeError("this block is broken on purpose")
        return BlockResult("ok", Identity())

    return method


@pytest.mark.slow
def test_a_block_method_that_raises_is_flagged_and_filled(data_dir, tmp_path):
    d = data_dir / "greedy"
    out = tmp_path / "out.ome.zarr"
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
                      linear_type="Translation", nonlinear_type_coarse=None,
                      linear_accuracy="low", downsample_factor=4, fine_level=2, chunk_size=16,
                      min_foreground=0.0, method=_identity_method({0, 3}))
    by_id = {r["id"]: r for r in result.blocks}
    assert by_id[0]["status"] == "failed" and "broken on purpose" in by_id[0]["message"]
    assert by_id[3]["status"] == "failed"
    assert all(r["status"] == "ok" for i, r in by_id.items() if i not in (0, 3))
    summary = json.loads((out / "qc" / "summary.json").read_text())
    assert summary["flagged"] == [0, 3]
    assert out.is_dir()


def test_bad_input_is_refused_before_any_work(data_dir, tmp_path):
    import xarray as xr

    d = data_dir / "greedy"
    fixed = d / "phantom01_fixed.nii.gz"
    with pytest.raises(InputError, match="Rigid"):
        register(fixed, fixed, linear_type="rigid")
    with pytest.raises(InputError, match="low, medium, high"):
        register(fixed, fixed, fine_accuracy="best")
    with pytest.raises(InputError, match="SyNOnly"):
        register(fixed, fixed, nonlinear_type_fine="BSplineSyN")
    four_d = xr.DataArray(np.zeros((2, 8, 8, 8)), dims=("t", "z", "y", "x"))
    with pytest.raises(InputError, match="3-D"):
        register(four_d, fixed)


@pytest.mark.slow
def test_images_that_do_not_overlap_are_refused(data_dir):
    import ngffreg
    from ngffreg.image import make_image

    image = ngffreg.open_image(data_dir / "greedy" / "phantom01_fixed.nii.gz").compute()
    far = make_image(image.values, spacing=(1, 1, 1), origin=(5000.0, 0, 0), unit="millimeter")
    with pytest.raises(InputError, match="do not overlap"):
        register(image, far, linear_type=None, nonlinear_type_coarse=None,
                 nonlinear_type_fine=None, downsample_factor=4)


@pytest.mark.slow
def test_ch2_onto_mni_with_64_mm_blocks_reaches_the_whole_volume_syn_correlation(data_dir):
    """ch2 → mni (different direction matrices): coarse affine + SyN at 4 mm, then 27 SyN
    blocks of 64 mm (32 voxels on the 2 mm level, 64 at 1 mm). Normalised cross-correlation
    on brain voxels (mni above Otsu's threshold) at 1 mm must reach 0.82 (whole-volume
    default ANTs SyN: 0.83) and improve on the coarse step."""
    from ngffreg.qc import ncc, otsu_threshold
    from ngffreg.registration.coarse import image_levels
    from ngffreg.warp import warp

    d = data_dir / "ants"
    result = register(d / "mni.nii.gz", d / "ch2.nii.gz", downsample_factor=4, fine_level=1,
                      chunk_size="64 mm", fine_accuracy="low", workers=2)
    assert len(result.blocks) >= 27
    fixed = image_levels(d / "mni.nii.gz")[0].compute()
    moving = image_levels(d / "ch2.nii.gz")[0]
    brain = fixed.values > otsu_threshold(fixed.values)
    coarse = ncc(fixed.values, warp(moving, result.coarse.transform, like=fixed).values, brain)
    final = ncc(fixed.values, warp(moving, result.transform, like=fixed).values, brain)
    assert final >= 0.82, (coarse, final)
    assert final > coarse + 0.02
    used = [r for r in result.blocks if r["status"] == "ok"]
    assert len(used) >= 20 and all(r["jacobian_min"] > 0 for r in used)
    # seams: the displacement gradient at block faces is at most twice its largest
    # elsewhere; the blended field does not fold
    report = result.fine_report
    assert report["seam_ratio"] <= 2.0, report
    assert report["folded_voxels"] == 0 and report["jacobian_min"] > 0, report


@pytest.mark.slow
def test_chunked_registration_class_step_by_step(data_dir, tmp_path):
    """The seed's class: coarse, blocks, blend + warp, with a user's block method."""
    import ngffreg
    from ngffreg import ChunkedRegistration

    d = data_dir / "greedy"
    reg = ChunkedRegistration(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz",
                              tmp_path, downsample_factor=2, chunk_size=16,
                              overlap_fraction=0.25, prefer_dask=False, fine_level=2,
                              method=_identity_method(set()))
    coarse = reg.perform_coarse_registration("Rigid", None, "low")
    assert coarse.fixed_level == 1
    blocks = reg.register_all_chunks()
    assert len(blocks) == 8 and all(b["status"] in ("ok", "skipped") for b in blocks)
    transform = reg.apply_transforms_and_blend(overwrite=True)
    out = tmp_path / "registered.ome.zarr"
    assert ngffreg.open_image(out).shape == (128, 128, 128)
    pts = _mask_points(data_dir)
    err = np.linalg.norm(transform.apply(pts) - _truth(data_dir).apply(pts), axis=1)
    assert err.max() < 0.5


def test_a_local_block_method_with_workers_gets_a_clear_error(data_dir):
    d = data_dir / "greedy"
    with pytest.raises(InputError, match="module level"):
        register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz",
                 linear_type="Translation", nonlinear_type_coarse=None, linear_accuracy="low",
                 downsample_factor=4, fine_level=2, chunk_size=16, workers=2,
                 method=_identity_method(set()))


@pytest.mark.slow
def test_multi_resolution_blocks_write_every_pass(data_dir, tmp_path, monkeypatch):
    """Blocks on the 4 mm level, then smaller blocks on the 2 mm level, each pass through
    everything before it; both passes' fields are in the transform and the ANTs export.
    Each pass's blocks run on worker processes that have exited before its blend."""
    import importlib

    import ants
    import pandas as pd
    import psutil

    module = importlib.import_module("ngffreg.registration.register")
    children_at_blend = []
    blend_pass = module.blend_pass

    def counting(*args, **kwargs):
        children_at_blend.append(sum(  # multiprocessing's resource tracker stays
            "resource_tracker" not in " ".join(c.cmdline())
            for c in psutil.Process().children(recursive=True)))
        return blend_pass(*args, **kwargs)

    monkeypatch.setattr(module, "blend_pass", counting)
    d = data_dir / "greedy"
    out = tmp_path / "out.ome.zarr"
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
                      linear_type="Rigid", nonlinear_type_coarse=None, linear_accuracy="low",
                      downsample_factor=4, block_levels=[(2, 16), (1, 16)],
                      method="ants-affine", min_foreground=0.0, workers=2)
    passes = {r["pass"] for r in result.blocks}
    assert passes == {0, 1}
    for k in (0, 1):  # both passes ran on workers (the second on new ones) ...
        assert all(r.get("worker") for r in result.blocks
                   if r["pass"] == k and r["status"] != "skipped")
    assert children_at_blend == [0, 0]  # ... gone before each blend
    assert sum(r["pass"] == 0 for r in result.blocks) == 8
    assert sum(r["pass"] == 1 for r in result.blocks) == 64
    steps = result.transform.transforms
    # each pass's field on its blocks' grid (64³, 32³), stored as many times coarser as
    # the storage rule allows (blocks registered affinely: smooth fields)
    f = result.fine_report["storage"]["factor"]
    assert len(steps) == 3 and steps[0].grid.shape == (-(-63 // f) + 1,) * 3
    assert np.allclose(steps[0].grid.spacing, 2.0 * f)
    assert steps[1].grid.shape[0] in (32, 17, 9)
    assert (out / "blocks" / "pass0" / "plan.json").is_file()
    pts = _mask_points(data_dir)
    err = np.linalg.norm(result.transform.apply(pts) - _truth(data_dir).apply(pts), axis=1)
    assert np.median(err) < 0.5
    listing = json.loads((out / "transforms" / "ants_transformlist.json").read_text())
    assert listing == ["fine_warp.nii.gz", "global_linear_transform.mat"]
    files = [str(out / "transforms" / n) for n in listing]
    sample = pts[::400]
    xyz = pd.DataFrame(sample[:, ::-1], columns=["x", "y", "z"])
    theirs = ants.apply_transforms_to_points(3, xyz, files)[["x", "y", "z"]].to_numpy()[:, ::-1]
    assert np.abs(theirs - result.transform.apply(sample)).max() < 0.05


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_finished_blocks(data_dir, tmp_path, monkeypatch):
    """A run that dies after its blocks (here: the warp raises) leaves ``OUT.partial`` with
    the finished blocks and no ``OUT``; the same call again reuses them (same records, no
    new registrations) and publishes."""
    import sys

    warp_module = sys.modules["ngffreg.warp"]  # ngffreg.warp is also the function
    d = data_dir / "greedy"
    out = tmp_path / "out.ome.zarr"
    kwargs = dict(linear_type="Translation", nonlinear_type_coarse=None,
                  linear_accuracy="low", downsample_factor=4, fine_level=2, chunk_size=16,
                  min_foreground=0.0, method="ants-affine")

    def broken(*args, **kw):
        raise RuntimeError("disk unplugged")

    monkeypatch.setattr(warp_module, "write_warped", broken)
    with pytest.raises(RuntimeError, match="unplugged"):
        register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out, **kwargs)
    monkeypatch.undo()
    partial = tmp_path / "out.ome.zarr.partial"
    assert not out.exists() and len(list((partial / "blocks").glob("b*"))) == 8
    first = {b.name: (b / "zarr.json").stat().st_mtime_ns for b in (partial / "blocks").glob("b*")}

    calls = []
    import ngffreg.registration.blockwise as blockwise

    real = blockwise.register_block
    monkeypatch.setattr(blockwise, "register_block",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
                      **kwargs)
    assert calls == [] and len(result.blocks) == 8
    assert out.is_dir() and not partial.exists()
    kept = {b.name: (b / "zarr.json").stat().st_mtime_ns for b in (out / "blocks").glob("b*")}
    assert kept == first


@pytest.mark.slow
def test_the_coarse_result_outlives_the_work_folder(data_dir, tmp_path):
    """After ``register`` returns, ``result.coarse`` reads from the published store (or
    memory), not from the deleted ``OUT.ome.zarr.partial``."""
    from ngffreg.transforms import DisplacementField

    d = data_dir / "greedy"
    out = tmp_path / "out.ome.zarr"
    result = register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
                      linear_type="Rigid", nonlinear_type_coarse="SyN", linear_accuracy="low",
                      coarse_accuracy="low", downsample_factor=4, nonlinear_type_fine=None)
    assert not (tmp_path / "out.ome.zarr.partial").exists()
    fields = [s for s in result.coarse.transform.transforms if isinstance(s, DisplacementField)]
    assert fields and float(np.abs(fields[0].field.values).max()) > 0.1
    pts = _mask_points(data_dir)[::50]
    np.testing.assert_allclose(result.coarse.transform.apply(pts), result.transform.apply(pts))
    back = result.coarse.inverse.apply(result.coarse.transform.apply(pts))
    assert np.median(np.linalg.norm(back - pts, axis=1)) < 0.2


def test_the_coarse_greedy_stage_leaves_a_strip_without_moving_data_alone():
    """The moving image (the fixed texture shifted 2 voxels along x) starts 16 voxels in,
    as a round that did not image a strip. The coarse step's greedy stage fits where there
    is data and pulls no tissue over the strip: the field there only fades from the
    data's shift towards the linear transform (median 1.0 voxel, at most 1.4); it used to
    pull the edge of the data over the strip (5.9 voxels there)."""
    from conftest import strip_pair
    from ngffreg.registration.coarse import _run_greedy

    fixed, moving = strip_pair((32, 48), 80, 16, seed=7)
    transform, _, record = _run_greedy(fixed, moving, Identity(), Identity(), "Greedy",
                                       "low", None)
    assert record["deformable"] == "ok"
    pts = Grid.of(fixed).points().reshape(32, 48, 80, 3)
    dx = transform.apply(pts.reshape(-1, 3)).reshape(32, 48, 80, 3)[..., 2] - pts[..., 2]
    assert np.abs(dx[:, :, :10]).max() < 2.0  # the strip: never beyond the true shift
    assert np.abs(np.median(dx[:, :, 30:70]) - 2.0) < 0.2  # the data: the true shift
