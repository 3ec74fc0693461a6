"""Physical round trip on the real volumes: source (as ITK sees it) → `ngffreg convert` →
OME-Zarr read with ngff-zarr alone. Every sampled voxel must hold the same value at the same
physical position, in z, y, x order, at every OME-Zarr version."""

from __future__ import annotations

from pathlib import Path

import itk
import ngff_zarr
import numpy as np
import pytest
import tifffile

from ngffreg.cli import main

VERSIONS = ("0.4", "0.5", "0.6")
BRAIN_SPACING_ZYX = (50.0, 40.0, 40.0)


def _itk_source(name: str, path: Path):
    """The source as ITK reports it: pixel array (z, y, x) and the ITK image for positions."""
    if name == "brainreg/brain":
        stack = np.stack([tifffile.imread(f) for f in sorted(path.glob("*.tif"))])
        image = itk.image_from_array(stack)
        image.SetSpacing([BRAIN_SPACING_ZYX[2], BRAIN_SPACING_ZYX[1], BRAIN_SPACING_ZYX[0]])
        return stack, image
    image = itk.imread(str(path))
    return itk.array_from_image(image), image


def _sample_indices(array: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n voxel indices (z, y, x): half inside the signal, half anywhere, plus the corners."""
    nonzero = np.argwhere(array != 0)
    picks = [nonzero[rng.integers(0, len(nonzero), n // 2)]]
    picks.append(np.stack([rng.integers(0, s, n - n // 2) for s in array.shape], axis=1))
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in array.shape], indexing="ij"))
    picks.append(corners.reshape(3, -1).T)
    return np.concatenate(picks)


def _convert(src: Path, out: Path, version: str, extra: list[str]) -> None:
    argv = ["convert", str(src), str(out), "--ngff-version", version, "--quiet", *extra]
    assert main(argv) == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "name",
    ["ants/mni", "ants/ch2", "greedy/phantom01_fixed", "brainreg/brain"],
)
def test_convert_keeps_every_voxel_at_its_physical_position(name, version, dataset, tmp_path):
    src = dataset(name)
    extra = ["--chunks", "64"]
    if name == "brainreg/brain":
        extra += ["--voxel-size", *map(str, BRAIN_SPACING_ZYX), "--unit", "micrometer"]
    out = tmp_path / "out.ome.zarr"
    _convert(src, out, version, extra)

    ms = ngff_zarr.from_ngff_zarr(str(out), validate=True)
    level0 = ms.images[0]
    assert tuple(level0.dims) == ("z", "y", "x")
    scale = np.array([level0.scale[d] for d in "zyx"])
    translation = np.array([level0.translation[d] for d in "zyx"])
    written = np.asarray(level0.data)

    array, itk_image = _itk_source(name, src)
    assert written.size == array.size
    rng = np.random.default_rng(7)
    for z, y, x in _sample_indices(array, 2000, rng):
        p_xyz = itk_image.TransformIndexToPhysicalPoint([int(x), int(y), int(z)])
        p_zyx = np.array([p_xyz[2], p_xyz[1], p_xyz[0]])
        index = (p_zyx - translation) / scale
        assert np.allclose(index, np.round(index), atol=1e-6), (p_zyx, index)
        k = tuple(int(v) for v in np.round(index))
        assert written[k] == array[z, y, x], (name, (z, y, x), p_zyx)


def test_direction_flips_are_applied_not_dropped(dataset, tmp_path):
    """ch2's direction flips x and y: the stored array must be the flipped source."""
    src = dataset("ants/ch2")
    out = tmp_path / "ch2.ome.zarr"
    _convert(src, out, "0.5", [])
    written = np.asarray(ngff_zarr.from_ngff_zarr(str(out)).images[0].data)
    source = itk.array_from_image(itk.imread(str(src)))
    assert not np.array_equal(written, source)
    np.testing.assert_array_equal(written, source[:, ::-1, ::-1])


@pytest.mark.parametrize("version", ["0.5", "0.6"])
def test_sharded_store_validates_and_matches(version, dataset, tmp_path):
    src = dataset("greedy/phantom01_fixed")
    out = tmp_path / "sharded.ome.zarr"
    _convert(src, out, version, ["--chunks", "16", "--shards", "2"])
    import zarr

    arr = zarr.open_array(str(out / "scale0" / "image"), mode="r")
    assert arr.shards == (32, 32, 32) and arr.chunks == (16, 16, 16)
    ms = ngff_zarr.from_ngff_zarr(str(out), validate=True)
    source = itk.array_from_image(itk.imread(str(src)))
    np.testing.assert_array_equal(np.asarray(ms.images[0].data), source)
