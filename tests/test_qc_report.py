"""The QC report (``ngffreg.qc_report``, ``ngffreg qc``) on real registration outputs: the
greedy phantom registered from its files, and the demo pair registered in memory."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest

from ngffreg.image import Grid
from ngffreg.qc import (
    FIGURES,
    Frame,
    first_field,
    jacobian_planes,
    ncc,
    read_blocks,
    report_planes,
    write_report,
)

FAST = dict(linear_type="Translation", nonlinear_type_coarse=None, linear_accuracy="low",
            downsample_factor=4, fine_level=2, chunk_size=16, fine_accuracy="low",
            min_foreground=0.0, workers=1)


class FailSome:
    """ANTs SyN blocks, but the blocks in ``ids`` fail (to see flagged rows)."""

    def __init__(self, ids):
        from ngffreg.registration.methods import AntsSyN

        self.ids = set(ids)
        self.inner = AntsSyN(accuracy="low")

    def __call__(self, fixed, moving, initial, info):
        if info.id in self.ids:
            raise RuntimeError("broken on purpose")
        return self.inner(fixed, moving, initial, info)


@pytest.fixture(scope="module")
def phantom_store(tmp_path_factory, data_dir):
    """greedy phantom01 registered from its files (translation, then SyN blocks on the
    4 mm level, 8 blocks, blocks 0 and 3 failing): the report written by register()."""
    pytest.importorskip("ants")
    from ngffreg.registration.register import register

    d = data_dir / "greedy"
    out = tmp_path_factory.mktemp("qc") / "out.ome.zarr"
    register(d / "phantom01_fixed.nii.gz", d / "phantom01_moving.nii.gz", out,
             method=FailSome({0, 3}), **FAST)
    return out, d


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """The demo pair (known deformation) registered in memory: rigid coarse step, SyN
    blocks on level 1."""
    pytest.importorskip("ants")
    from ngffreg.demo import make_pair
    from ngffreg.registration.register import register

    fixed, moving, _ = make_pair()
    out = tmp_path_factory.mktemp("qc-demo") / "registered.ome.zarr"
    register(fixed, moving, out, downsample_factor=2, linear_type="Rigid",
             nonlinear_type_coarse=None, linear_accuracy="low", fine_level=1, chunk_size=24,
             fine_accuracy="low", workers=1)
    return out, fixed, moving


def _table_ids(page: str) -> list[int]:
    return [int(v) for v in re.findall(r'<td class="id">(\d+)</td>', page)]


def _flagged_ids(page: str) -> list[int]:
    return [int(v) for v in re.findall(r'<tr class="flagged"><td class="id">(\d+)</td>', page)]


@pytest.mark.slow
def test_register_writes_the_report_with_every_figure_and_block(phantom_store):
    out, d = phantom_store
    qc = out / "qc"
    summary = json.loads((qc / "summary.json").read_text())
    assert summary["figures"] == [*FIGURES, "index.html"]
    for name in summary["figures"]:
        assert (qc / name).is_file() and (qc / name).stat().st_size > 5000, name
    # where the inputs came from, for `ngffreg qc` to open them again
    assert summary["inputs"]["fixed"]["path"] == str((d / "phantom01_fixed.nii.gz").resolve())
    assert summary["inputs"]["moving"]["path"] == str(
        (d / "phantom01_moving.nii.gz").resolve())
    page = (qc / "index.html").read_text()
    for name in FIGURES:
        assert f'src="{name}"' in page
    with open(qc / "blocks.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(_table_ids(page)) == sorted(int(r["id"]) for r in rows) == list(range(8))
    assert _flagged_ids(page) == [0, 3]
    assert "broken on purpose" in page
    # the numbers of summary.json are on the page
    assert f"{summary['coarse']['ncc_after']:.3g}" in page
    assert "seam ratio" in page and "Timings" in page


@pytest.mark.slow
def test_the_overlay_planes_are_the_images_and_their_correlation_improves(phantom_store):
    import ngffreg

    out, d = phantom_store
    planes = report_planes(out)  # the inputs re-opened from the recorded paths
    assert planes.level == 0 and planes.notes == []
    fixed = ngffreg.open_image(d / "phantom01_fixed.nii.gz").values
    registered = ngffreg.open_image(out).values
    c = [n // 2 for n in fixed.shape]
    # z plane: rows y (growing downwards when shown), columns x; y and x planes: rows z
    assert np.allclose(planes.fixed[0], fixed[c[0]])
    assert np.allclose(planes.after[1], registered[:, c[1], :])
    assert np.allclose(planes.after[2], registered[:, :, c[2]])
    assert planes.extent[0] == (-0.5, 127.5, -0.5, 127.5)
    before, after = planes.ncc("before"), planes.ncc("after")
    for q in range(3):
        assert after[q] > before[q] + 0.05, (before, after)
        assert after[q] == pytest.approx(ncc(planes.fixed[q], planes.after[q]))


@pytest.mark.slow
def test_jacobian_planes_lie_within_the_whole_field_range(phantom_store):
    from ngffreg.transforms.ngff import read_registration

    out, _ = phantom_store
    summary = json.loads((out / "qc" / "summary.json").read_text())["fine_field"]
    field = first_field(read_registration(out))
    f = summary["storage"]["factor"]  # the blocks' 32³ grid, stored f times coarser
    n = -(-31 // f) + 1
    assert field.grid.shape == (n, n, n)
    jac = jacobian_planes(field, Frame.of(field.grid).bounds().mean(axis=1))
    for q in range(3):
        assert jac.values[q].shape == (n, n)
        assert summary["jacobian_min"] - 1e-6 <= jac.values[q].min()
        assert jac.values[q].max() <= summary["jacobian_max"] + 1e-6
        assert not jac.folds[q].any()
    # blocks read back from the store: records with the statuses of the table
    (one,) = read_blocks(out)
    assert [one.records[i]["status"] for i in (0, 1, 3)] == ["failed", "ok", "failed"]


@pytest.mark.slow
def test_qc_command_refreshes_the_report_and_refuses_what_is_not_a_store(
        phantom_store, tmp_path, capsys, cli_fails):
    from ngffreg.cli import main

    out, d = phantom_store
    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(out, copy)
    for name in FIGURES:
        (copy / "qc" / name).unlink()
    assert main(["qc", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == str(copy / "qc" / "index.html")
    assert all((copy / "qc" / name).is_file() for name in FIGURES)
    cli_fails(["qc", str(tmp_path / "missing.ome.zarr")], "no such output store")
    cli_fails(["qc", str(d / "phantom01_fixed.nii.gz")], "not a registration output store")
    cli_fails(["qc", str(copy), "--moving", str(tmp_path / "nope.nii.gz")], "--moving")


@pytest.mark.slow
def test_without_the_moving_image_the_before_panels_are_left_out_with_a_note(
        phantom_store, tmp_path):
    out, d = phantom_store
    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(out, copy)
    summary_path = copy / "qc" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["inputs"]["moving"]["path"] = None  # as if it had been in memory
    summary_path.write_text(json.dumps(summary))
    planes = report_planes(copy)
    assert planes.before is None and planes.fixed is not None
    page = write_report(copy).read_text()
    assert "The moving image was in memory" in page
    assert (copy / "qc" / "overlay.png").is_file()
    # given again, it is back
    assert report_planes(copy, moving=d / "phantom01_moving.nii.gz").before is not None


@pytest.mark.slow
def test_demo_pair_registered_in_memory_has_its_report(demo_store):
    out, fixed, moving = demo_store
    qc = out / "qc"
    summary = json.loads((qc / "summary.json").read_text())
    assert summary["inputs"]["fixed"]["path"] is None
    assert summary["figures"] == [*FIGURES, "index.html"]
    page = (qc / "index.html").read_text()
    assert "in memory" not in page.split("<h2>Summary</h2>")[0]  # register() had them
    with open(qc / "blocks.csv") as fh:
        ids = sorted(int(r["id"]) for r in csv.DictReader(fh))
    assert sorted(_table_ids(page)) == ids and ids
    for name in FIGURES:
        assert f'src="{name}"' in page

    planes = report_planes(out, fixed=fixed, moving=moving)
    grid = Grid.of(fixed)
    assert planes.grid.shape == grid.shape
    assert np.allclose(planes.fixed[0], fixed.values[grid.shape[0] // 2])
    # anisotropic spacing (2, 1, 1): the z extent of the y plane is twice its voxel count
    h0, h1, v0, v1 = planes.extent[1]
    assert v1 - v0 == pytest.approx(2 * grid.shape[0])
    assert h1 - h0 == pytest.approx(grid.shape[2])
    before, after = planes.ncc("before"), planes.ncc("after")
    assert min(after.values()) > 0.98
    assert all(after[q] > before[q] for q in range(3)), (before, after)


@pytest.mark.slow
def test_demo_report_later_without_the_inputs_says_so(demo_store, tmp_path):
    out, fixed, _ = demo_store
    copy = tmp_path / "copy.ome.zarr"
    shutil.copytree(out, copy)
    page = write_report(copy).read_text()
    assert "The fixed image was in memory" in page and "The moving image was in memory" in page
    assert (copy / "qc" / "overlay.png").is_file()
    assert report_planes(copy).fixed is None
    page = write_report(copy, fixed=fixed).read_text()
    assert "The fixed image was in memory" not in page


def test_frames_show_physical_axes_whatever_the_direction():
    """A grid with flipped and permuted axes is shown with each display axis growing with
    its physical coordinate: every shown pixel holds the value of its physical position."""
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    grid = Grid.from_origin((6, 8, 10), (1.5, 2.0, 0.5), origin=(3.0, -4.0, 7.0),
                            direction=direction, unit="millimeter")
    pts = grid.points()
    values = (100 * pts[:, 0] + 10 * pts[:, 1] + pts[:, 2]).reshape(grid.shape)
    frame = Frame.of(grid)
    centre = frame.bounds().mean(axis=1)
    for q in range(3):
        k, index = frame.index_of(q, centre[q])
        shown, (h0, h1, v0, v1) = frame.orient(np.take(values, index, axis=k), q)
        rows, cols = shown.shape
        h = h0 + (np.arange(cols) + 0.5) * (h1 - h0) / cols
        v = v0 + (np.arange(rows) + 0.5) * (v1 - v0) / rows
        vertical, horizontal, _ = {0: (1, 2, True), 1: (0, 2, False), 2: (0, 1, False)}[q]
        point = np.zeros((rows, cols, 3))
        point[..., q] = frame.coord(k, index)
        point[..., vertical] = v[:, None]
        point[..., horizontal] = h[None, :]
        expected = 100 * point[..., 0] + 10 * point[..., 1] + point[..., 2]
        assert np.allclose(shown, expected), q


def test_jacobian_planes_read_tile_by_tile_match_the_whole_field():
    """Slabs read in small tiles (and reduced for display) give the determinant of the
    whole field on the plane."""
    import dask.array as da

    from ngffreg.qc import jacobian_determinant
    from ngffreg.transforms import DisplacementField

    rng = np.random.default_rng(0)
    u = rng.normal(scale=0.3, size=(3, 9, 14, 11)).astype(np.float32)
    field = DisplacementField.from_array(da.from_array(u, chunks=(3, 4, 5, 6)),
                                         spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0),
                                         unit="millimeter", name="test")
    whole = jacobian_determinant(u, (2.0, 1.0, 0.5))
    frame = Frame.of(field.grid)
    centre = frame.bounds().mean(axis=1)
    jac = jacobian_planes(field, centre, tile_voxels=20)
    for q in range(3):
        k, index = frame.index_of(q, centre[q])
        assert np.allclose(jac.values[q], frame.orient(np.take(whole, index, axis=k), q)[0])
        assert np.array_equal(jac.folds[q], jac.values[q] <= 0)
    reduced = jacobian_planes(field, centre, max_pixels=5, tile_voxels=20)
    assert reduced.factor == 3 and reduced.values[0].shape == (5, 4)
    plane = np.take(whole, frame.index_of(0, centre[0])[1], axis=0)
    assert reduced.values[0][0, 0] == pytest.approx(plane[:3, :3].mean())
    assert reduced.folds[0][0, 0] == (plane[:3, :3] <= 0).any()
