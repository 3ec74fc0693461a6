"""The command line: convert, info, demo; bad input → a clear message, exit 2, no output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import ngffreg
from ngffreg.cli import main
from ngffreg.synthetic import synthetic_volume

NGFFREG = Path(sys.executable).with_name("ngffreg")
VOXEL_UM = ("--voxel-size", "1", "1", "1", "--unit", "um")


def _stack(tmp_path: Path) -> Path:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, synthetic_volume((12, 20, 24)).values)
    return path


def _convert_argv(src: Path, out: Path, *options: str) -> list[str]:
    return ["convert", str(src), str(out), *options]


def _leftovers(folder: Path, out: Path) -> list[str]:
    """Anything under ``folder`` that looks like (part of) the output."""
    return [p.name for p in folder.iterdir() if out.name in p.name]


def test_convert_then_info_json(tmp_path, capsys):
    out = tmp_path / "s.ome.zarr"
    options = ("--voxel-size", "2", "1", "1", "--unit", "um", "--chunks", "8", "--levels", "2")
    assert main(_convert_argv(_stack(tmp_path), out, *options, "--quiet")) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [12, 20, 24]
    assert info["spacing"] == [2.0, 1.0, 1.0] and info["units"] == "micrometer"
    assert info["ngff_version"] == "0.5" and info["chunks"] == [8, 8, 8]
    assert len(info["levels"]) >= 2 and info["levels"][1]["spacing"] == [2.0, 2.0, 2.0]
    assert info["direction"] == np.eye(3).tolist()


def test_info_text_reports_source_direction(dataset, capsys):
    assert main(["info", str(dataset("ants/ch2"))]) == 0
    out = capsys.readouterr().out
    assert "spacing    1 × 1 × 1 millimeter" in out
    assert "origin     -71 × -91 × -90 millimeter" in out
    assert "source direction" in out


def test_missing_input(tmp_path, cli_fails):
    out = tmp_path / "o.ome.zarr"
    cli_fails(_convert_argv(tmp_path / "nope.nii.gz", out), "No such file")
    assert not out.exists()


def test_empty_folder(tmp_path, cli_fails):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o.ome.zarr"
    cli_fails(
        _convert_argv(tmp_path / "empty", out, "--voxel-size", "1", "1", "1"),
        "empty",
    )
    assert _leftovers(tmp_path, out) == []


def test_two_d_input(tmp_path, cli_fails):
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((20, 30), "uint16"))
    out = tmp_path / "o.ome.zarr"
    cli_fails(_convert_argv(flat, out, "--voxel-size", "1", "1", "1"), "3-D")
    assert _leftovers(tmp_path, out) == []


def test_tiff_without_voxel_size(tmp_path, cli_fails):
    out = tmp_path / "o.ome.zarr"
    cli_fails(_convert_argv(_stack(tmp_path), out), "no voxel size", "--voxel-size")
    assert _leftovers(tmp_path, out) == []


@pytest.mark.parametrize("size", [["0", "1", "1"], ["1", "-1", "1"]])
def test_zero_or_negative_spacing(tmp_path, cli_fails, size):
    out = tmp_path / "o.ome.zarr"
    cli_fails(
        _convert_argv(_stack(tmp_path), out, "--voxel-size", *size, "--unit", "um"),
        "positive",
    )
    assert _leftovers(tmp_path, out) == []


def test_unknown_unit(tmp_path, cli_fails):
    out = tmp_path / "o.ome.zarr"
    cli_fails(
        _convert_argv(_stack(tmp_path), out, "--voxel-size", "1", "1", "1", "--unit", "furlong"),
        "Unknown unit",
        "micrometer",
    )
    assert _leftovers(tmp_path, out) == []


@pytest.mark.parametrize("meta", ["zarr.json", "scale0/image/zarr.json"])
def test_corrupted_zarr_metadata(tmp_path, cli_fails, meta):
    src = tmp_path / "src.ome.zarr"
    ngffreg.to_ome_zarr(synthetic_volume((16, 16, 16)), src, chunks=8)
    (src / meta).write_text("{ this is not json")
    out = tmp_path / "o.ome.zarr"
    err = cli_fails(_convert_argv(src, out))
    assert "corrupt" in err.lower() or "cannot" in err.lower()
    assert _leftovers(tmp_path, out) == []


def test_existing_output_without_overwrite(tmp_path, cli_fails):
    out = tmp_path / "o.ome.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cli_fails(
        _convert_argv(_stack(tmp_path), out, *VOXEL_UM),
        "already exists",
        "--overwrite",
    )
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["under-a-file", "read-only-fs", "missing-parent"])
def test_unwritable_output(tmp_path, cli_fails, where):
    if where == "under-a-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "o.ome.zarr"
    elif where == "read-only-fs":
        out = Path("/proc/ngffreg-test.ome.zarr")
    else:
        out = tmp_path / "no" / "such" / "o.ome.zarr"
    cli_fails(
        _convert_argv(_stack(tmp_path), out, *VOXEL_UM, "--quiet"),
        "Cannot write" if where != "read-only-fs" else "",
    )
    assert not out.exists()


def test_console_script_exit_status(tmp_path):
    """The installed `ngffreg` script itself: exit 2 and a message on stderr, 0 on success."""
    env = dict(os.environ)
    bad = subprocess.run(
        [str(NGFFREG), "info", str(tmp_path / "missing.tif")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "No such file" in bad.stderr
    out = tmp_path / "demo"
    ok = subprocess.run(
        [str(NGFFREG), "demo", "--output", str(out)], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    # the demo registers a pair with a known deformation and reports the error
    tre = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"TRE (before registration|after the coarse step|after blocks \+ blend): median "
        r"([0-9.]+)", ok.stdout)}
    assert len(tre) == 3, ok.stdout
    assert tre["after blocks + blend"] < 0.25 * tre["before registration"]
    assert tre["after blocks + blend"] <= tre["after the coarse step"] + 0.02
    store = out / "registered.ome.zarr"
    assert ngffreg.open_image(store).shape == ngffreg.open_image(out / "fixed.ome.zarr").shape
    assert (store / "qc" / "overlay.png").is_file() and (store / "qc" / "blocks.csv").is_file()


def test_block_progress_gives_a_rate_and_the_time_left():
    import io

    from ngffreg.cli import BlockProgress

    out = io.StringIO()
    progress = BlockProgress(stream=out, every=0.0)
    progress.start -= 100.0
    progress({"id": 0, "status": "ok", "of": 10})
    progress.first -= 60.0  # the next block finished a minute after the first
    progress({"id": 1, "status": "ok", "of": 10})
    last = out.getvalue().strip().splitlines()[-1]
    assert "2/10" in last and "1.0 blocks/min" in last and "about 8 min left" in last, last
