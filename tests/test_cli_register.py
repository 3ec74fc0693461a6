"""``ngffreg register`` and ``ngffreg demo`` on the command line."""

from __future__ import annotations

import json

import pytest

from ngffreg.cli import main

pytest.importorskip("ants")


@pytest.mark.slow
def test_register_with_a_config_file_and_options(data_dir, tmp_path, capsys):
    d = data_dir / "greedy"
    config = tmp_path / "reg.yaml"
    config.write_text("linear-type: Rigid\nnonlinear_type_coarse: none\n"
                      "nonlinear_type_fine: none\nlinear_accuracy: low\ndownsample_factor: 2\n")
    out = tmp_path / "out.ome.zarr"
    argv = ["register", str(d / "phantom01_fixed.nii.gz"), str(d / "phantom01_moving.nii.gz"),
            "-o", str(out), "--config", str(config), "--downsample-factor", "4"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "coarse (level 2)" in text  # the option beat the config's downsample_factor
    summary = json.loads((out / "qc" / "summary.json").read_text())
    assert summary["coarse"]["stages"] == ["Rigid"]
    assert (out / "transforms" / "global_linear_transform.mat").is_file()
    # a second run into the same store is refused without --overwrite
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_register_refuses_bad_options(data_dir, tmp_path, cli_fails):
    d = data_dir / "greedy"
    base = ["register", str(d / "phantom01_fixed.nii.gz"), str(d / "phantom01_moving.nii.gz"),
            "-o", str(tmp_path / "out.ome.zarr")]
    cli_fails([*base, "--fine-accuracy", "best"], "fine_accuracy", "low, medium, high")
    cli_fails([*base, "--linear-type", "Rigidd"], "Rigid, Similarity")
    cli_fails([*base, "--chunk-size", "huge"], "chunk_size")
    cli_fails([*base, "--overlap-fraction", "lots"], "overlap_fraction")
    cli_fails([*base, "--block-levels", "1-64"], "LEVEL:SIZE")
    cli_fails([*base, "--block-levels", "0:32,1:64"], "coarse to fine")
    bad = tmp_path / "bad.yaml"
    bad.write_text("chunk_sise: 64\n")
    cli_fails([*base, "--config", str(bad)], "unknown key", "chunk_size")
    cli_fails([*base, "--config", str(tmp_path / "missing.yaml")], "no such file")
    assert not (tmp_path / "out.ome.zarr").exists()
