"""``ngffreg transform-points``: ANTs outputs, output stores, inverses, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ngffreg.cli import main
from ngffreg.transforms import Affine, DisplacementField, Sequence, bijection

RNG = np.random.default_rng(3)

ITK_2D = """#Insight Transform File V1.0
#Transform 0
Transform: AffineTransform_double_2_2
Parameters: 1 0 0 1 0 0
FixedParameters: 0 0
"""


def _points_csv(path: Path, pts: np.ndarray, **extra) -> Path:
    table = pd.DataFrame(pts, columns=["z", "y", "x"])
    for name, values in extra.items():
        table[name] = values
    table.to_csv(path, index=False)
    return path


def _fixed_points(ants_syn, n: int) -> np.ndarray:
    from ngffreg import physical_bbox
    from ngffreg.io.read import open_image

    lo, hi = physical_bbox(open_image(ants_syn["fixed"]))
    return RNG.uniform(lo + 10, hi - 10, size=(n, 3))


def test_ants_transform_files_match_ants(ants_syn, tmp_path, capsys):
    import ants

    pts = _fixed_points(ants_syn, 2000)
    src = _points_csv(tmp_path / "in.csv", pts, label=np.arange(len(pts)))
    out = tmp_path / "out.csv"
    assert main(["transform-points", *ants_syn["fwdtransforms"], "--points", str(src),
                 "-o", str(out)]) == 0
    assert "fixed → moving" in capsys.readouterr().out
    got = pd.read_csv(out)
    assert list(got.columns) == ["z", "y", "x", "label"]
    np.testing.assert_array_equal(got["label"], np.arange(len(pts)))
    xyz = pd.DataFrame(pts[:, ::-1], columns=["x", "y", "z"])
    ref = ants.apply_transforms_to_points(3, xyz, ants_syn["fwdtransforms"])
    expected = ref[["z", "y", "x"]].to_numpy()
    assert np.abs(got[["z", "y", "x"]].to_numpy() - expected).max() < 1e-3

    # --inverse maps them back (point-wise iteration through the warp, exact affine)
    back = tmp_path / "back.csv"
    assert main(["transform-points", *ants_syn["fwdtransforms"], "--points", str(out),
                 "-o", str(back), "--inverse"]) == 0
    assert np.abs(pd.read_csv(back)[["z", "y", "x"]].to_numpy() - pts).max() < 1e-3


def test_output_store_and_its_inverse(tmp_path, capsys):
    from ngffreg import make_image
    from ngffreg.io.write import to_ome_zarr
    from ngffreg.transforms.ngff import write_registration

    image = make_image(np.zeros((8, 9, 10), "uint8"), spacing=(2.0, 1.0, 1.0), unit="mm")
    store = to_ome_zarr(image, tmp_path / "reg.ome.zarr", version="0.6", chunks=8,
                        coordinate_system="fixed")
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(RNG.normal(0, 1.0, (3, 8, 9, 10)), (0, 2, 2, 2))
    smooth *= 0.4 / np.abs(smooth).max()  # at most 0.4 mm: invertible, no folds
    field = DisplacementField.from_array(smooth, spacing=(2, 1, 1), unit="mm", input="fixed",
                                         output="mid")
    affine = Affine.from_matrix_offset(np.eye(3) * 1.05, [1.0, 2.0, -1.0], input="mid",
                                       output="moving")
    forward = Sequence(transforms=(field, affine), name="registration")
    write_registration(store, forward)
    pts = RNG.uniform([1, 1, 1], [13, 7, 8], size=(300, 3))
    src = _points_csv(tmp_path / "in.csv", pts)
    out = tmp_path / "out.csv"
    assert main(["transform-points", str(store), "--points", str(src), "-o", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)[["z", "y", "x"]], forward.apply(pts), atol=1e-9)
    back = tmp_path / "back.csv"
    assert main(["transform-points", str(store), "--points", str(out), "-o", str(back),
                 "--inverse"]) == 0
    np.testing.assert_allclose(pd.read_csv(back)[["z", "y", "x"]], pts, atol=1e-5)
    capsys.readouterr()


def test_bijection_store_uses_the_stored_inverse(tmp_path):
    from ngffreg import make_image
    from ngffreg.io.write import to_ome_zarr
    from ngffreg.transforms.ngff import write_registration

    image = make_image(np.zeros((4, 4, 4), "uint8"), spacing=1.0, unit="mm")
    store = to_ome_zarr(image, tmp_path / "b.ome.zarr", version="0.6", chunks=4,
                        coordinate_system="fixed")
    a = Affine.from_matrix_offset(np.diag([1.0, 2.0, 0.5]), [3.0, 0.0, 1.0], input="fixed",
                                  output="moving")
    write_registration(store, bijection(a))
    pts = RNG.uniform(0, 3, size=(20, 3))
    src = _points_csv(tmp_path / "in.csv", pts)
    out = tmp_path / "out.csv"
    assert main(["transform-points", str(store), "--points", str(src), "-o", str(out),
                 "--inverse"]) == 0
    np.testing.assert_allclose(pd.read_csv(out)[["z", "y", "x"]], a.inverse().apply(pts),
                               atol=1e-12)


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("z,y\n1,2\n", ("lacks the column(s) x", "z,y,x")),
        ("z,y,x\n1,2,3\n4,five,6\n", ("line 3", "must be numbers")),
        ("", ("empty",)),
    ],
)
def test_bad_points_csv(tmp_path, cli_fails, content, needles):
    affine = tmp_path / "a.txt"
    affine.write_text(ITK_2D.replace("2_2", "3_3").replace(
        "Parameters: 1 0 0 1 0 0\nFixedParameters: 0 0",
        "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0"))
    src = tmp_path / "in.csv"
    src.write_text(content)
    out = tmp_path / "out.csv"
    cli_fails(["transform-points", str(affine), "--points", str(src), "-o", str(out)],
           *needles)
    assert not out.exists()


def test_bad_transforms(tmp_path, cli_fails):
    src = _points_csv(tmp_path / "in.csv", RNG.uniform(0, 5, size=(4, 3)))
    out = tmp_path / "out.csv"
    two_d = tmp_path / "two_d.txt"
    two_d.write_text(ITK_2D)
    cli_fails(["transform-points", str(two_d), "--points", str(src), "-o", str(out)],
           "3-D")
    cli_fails(["transform-points", str(tmp_path / "missing.mat"), "--points", str(src),
            "-o", str(out)], "missing.mat")
    import itk

    vec2 = itk.Image[itk.Vector[itk.F, 2], 3].New()
    vec2.SetRegions([4, 4, 4])
    vec2.Allocate()
    itk.imwrite(vec2, str(tmp_path / "warp2.nii.gz"))
    cli_fails(["transform-points", str(tmp_path / "warp2.nii.gz"), "--points", str(src),
            "-o", str(out)], "2")
    assert not out.exists()


def test_store_whose_sequence_does_not_chain(tmp_path, cli_fails):
    import json

    from ngffreg import make_image
    from ngffreg.io.write import to_ome_zarr
    from ngffreg.transforms.ngff import write_registration

    image = make_image(np.zeros((4, 4, 4), "uint8"), spacing=1.0, unit="mm")
    store = to_ome_zarr(image, tmp_path / "c.ome.zarr", version="0.6", chunks=4,
                        coordinate_system="fixed")
    a = Affine.from_matrix_offset(np.eye(3), [1.0, 0, 0], input="fixed", output="moving")
    write_registration(store, a)
    meta_path = Path(store) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    ms["coordinateSystems"].append({**ms["coordinateSystems"][-1], "name": "elsewhere"})
    reg = next(t for t in ms["coordinateTransformations"] if t.get("name") == "registration")
    step = {k: v for k, v in reg.items() if k not in ("name", "input", "output")}
    reg.clear()
    reg.update({
        "type": "sequence", "name": "registration",
        "input": {"name": "fixed"}, "output": {"name": "moving"},
        "transformations": [
            {**step, "input": {"name": "fixed"}, "output": {"name": "moving"}},
            {**step, "input": {"name": "elsewhere"}, "output": {"name": "moving"}},
        ],
    })
    meta_path.write_text(json.dumps(meta))
    src = _points_csv(tmp_path / "in.csv", RNG.uniform(0, 3, size=(4, 3)))
    cli_fails(["transform-points", str(store), "--points", str(src), "-o",
            str(tmp_path / "o.csv")], "chain")
