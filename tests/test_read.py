"""Tests of ngffreg.open_image: every input format, read lazily with exact values and geometry.

Every input is built here in ``tmp_path`` from numpy (tifffile, itk, zarr, a small N5
writer and a small NIfTI-1 writer). Opening is checked to compute nothing and to read no
pixels: a dask callback counts computes and the pixel loaders are armed to fail.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import math
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from dask.callbacks import Callback

import ngffreg
from ngffreg.errors import InputError, InputNotFoundError, MissingSpacingError
from ngffreg.image import index_to_physical
from ngffreg.io import n5 as n5_module
from ngffreg.io import tiff as tiff_module

SHAPE = (13, 17, 19)  # z, y, x: odd on purpose


def _volume(dtype: str = "uint16", shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Unique values (where the dtype allows), so a value locates its voxel."""
    values = np.arange(int(np.prod(shape)))
    if np.dtype(dtype).kind in "iu":
        values = values % np.iinfo(dtype).max
    return values.astype(dtype).reshape(shape)


# --------------------------------------------------------------------------- guard


class _CountComputes(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def _start(self, dsk) -> None:
        self.n += 1


@pytest.fixture
def no_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[], contextlib.AbstractContextManager]:
    """A context manager under which any dask compute or pixel read fails the test."""
    import itk

    armed = {"on": False}

    def wrap(orig):
        @functools.wraps(orig)
        def guarded(*args, **kwargs):
            if armed["on"]:
                raise AssertionError(f"pixel data read while opening ({orig.__qualname__})")
            return orig(*args, **kwargs)

        return guarded

    for owner, attr in [
        (tifffile, "imread"),
        (tifffile.TiffFile, "asarray"),
        (tifffile.TiffPage, "asarray"),
        (itk, "imread"),
        (n5_module.N5Array, "read_block"),
        (zarr.Array, "__getitem__"),
    ]:
        monkeypatch.setattr(owner, attr, wrap(getattr(owner, attr)))

    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        counter = _CountComputes()
        armed["on"] = True
        try:
            with counter:
                yield
        finally:
            armed["on"] = False
        assert counter.n == 0, f"opening computed {counter.n} dask graph(s)"

    return guard


def _open(guard, path: Path, **kwargs):
    with guard():
        img = ngffreg.open_image(path, **kwargs)
    assert isinstance(img.data, da.Array)
    return img


def _assert_indexing(img, src: np.ndarray) -> None:
    """Integer, strided and list selections (dask fuses them into the reader's getter)."""
    lead = (slice(None),) * (src.ndim - 3)
    cases = [
        ({"z": 5}, (5,)),
        ({"y": 3, "x": 11}, (slice(None), 3, 11)),
        ({"z": slice(1, None, 3), "x": slice(None, None, -2)}, (slice(1, None, 3), slice(None),
                                                                slice(None, None, -2))),
        ({"z": [7, 2, 9], "y": [0, 16]}, (np.array([7, 2, 9])[:, None], np.array([0, 16]))),
    ]
    for sel, key in cases:
        np.testing.assert_array_equal(img.isel(sel).values, src[(*lead, *key)], err_msg=str(sel))


def _assert_geometry(img, spacing, origin, unit) -> None:
    np.testing.assert_allclose(ngffreg.spacing(img), spacing, rtol=1e-6)
    np.testing.assert_allclose(ngffreg.origin(img), origin, rtol=1e-6, atol=1e-9)
    assert ngffreg.units(img) == unit


# --------------------------------------------------------------------------- TIFF


def test_tiff_without_metadata_needs_voxel_size(tmp_path: Path, no_read) -> None:
    src = _volume()
    f = tmp_path / "plain.tif"
    tifffile.imwrite(f, src)
    with pytest.raises(MissingSpacingError, match="voxel size"):
        ngffreg.open_image(f)
    img = _open(no_read, f, voxel_size=(3, 2, 1), unit="um")
    assert img.dims == ("z", "y", "x")
    _assert_geometry(img, (3, 2, 1), (0, 0, 0), "micrometer")
    assert img.dtype == src.dtype
    np.testing.assert_array_equal(img.values, src)
    _assert_indexing(img, src)


def test_tiff_reads_only_the_planes_of_a_chunk(tmp_path: Path, monkeypatch) -> None:
    src = _volume()
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, src)
    plane_bytes = SHAPE[1] * SHAPE[2] * src.itemsize
    monkeypatch.setattr(tiff_module, "_PLANES_TARGET_BYTES", 4 * plane_bytes)
    img = ngffreg.open_image(f, voxel_size=1, unit="um")
    assert img.data.chunks[0] == (4, 4, 4, 1)
    calls = []
    orig = tifffile.TiffPage.asarray

    def counting(self, *args, **kwargs):
        calls.append(self.index)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", counting)
    np.testing.assert_array_equal(img.isel(z=5).values, src[5])
    assert sorted(calls) == [4, 5, 6, 7] or calls == [5]
    _assert_indexing(img, src)


def test_tiff_2d_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "plane.tif"
    tifffile.imwrite(f, _volume(shape=(17, 19)))
    with pytest.raises(InputError, match="3-D"):
        ngffreg.open_image(f, voxel_size=1, unit="um")


def test_imagej_tiff_spacing(tmp_path: Path, no_read) -> None:
    src = _volume()
    f = tmp_path / "ij.tif"
    tifffile.imwrite(
        f, src, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"spacing": 2.0, "unit": "um"}
    )
    img = _open(no_read, f)
    assert img.dims == ("z", "y", "x")
    _assert_geometry(img, (2.0, 0.5, 0.5), (0, 0, 0), "micrometer")
    np.testing.assert_array_equal(img.values, src)
    _assert_indexing(img, src)
    # the user's voxel size wins over the file's
    img2 = ngffreg.open_image(f, voxel_size=(4, 3, 2))
    _assert_geometry(img2, (4, 3, 2), (0, 0, 0), "micrometer")


def test_imagej_hyperstack_channels(tmp_path: Path, no_read) -> None:
    nz, nc, ny, nx = 5, 3, 17, 19
    src = _volume(shape=(nz, nc, ny, nx))
    f = tmp_path / "hyper.tif"
    tifffile.imwrite(
        f, src, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZCYX", "spacing": 1.5, "unit": "um"},
    )
    img = _open(no_read, f)
    assert img.dims == ("c", "z", "y", "x")
    assert img.shape == (nc, nz, ny, nx)
    _assert_geometry(img, (1.5, 0.25, 0.25), (0, 0, 0), "micrometer")
    values = img.values
    for c in range(nc):
        np.testing.assert_array_equal(values[c], src[:, c])
        np.testing.assert_array_equal(img.sel(c=c).values, src[:, c])


def test_imagej_uncalibrated_pixel_unit(tmp_path: Path) -> None:
    """ImageJ's unit "pixel" means uncalibrated: the user's voxel size must be usable."""
    src = _volume()
    f = tmp_path / "ij_pixel.tif"
    tifffile.imwrite(f, src, imagej=True, metadata={"spacing": 1.0, "unit": "pixel"})
    with pytest.raises(MissingSpacingError):
        ngffreg.open_image(f)
    with pytest.warns(UserWarning, match="micrometer"):
        img = ngffreg.open_image(f, voxel_size=(3, 2, 1))
    _assert_geometry(img, (3, 2, 1), (0, 0, 0), "micrometer")


def test_ome_tiff_spacing(tmp_path: Path, no_read) -> None:
    src = _volume()
    f = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        f, src, ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.3, "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.4, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": 1.5, "PhysicalSizeZUnit": "µm",
        },
    )
    img = _open(no_read, f)
    assert img.dims == ("z", "y", "x")
    _assert_geometry(img, (1.5, 0.4, 0.3), (0, 0, 0), "micrometer")
    np.testing.assert_array_equal(img.values, src)


def test_ome_tiff_nanometer_and_missing_z(tmp_path: Path) -> None:
    src = _volume()
    f = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        f, src, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 300.0, "PhysicalSizeXUnit": "nm",
                  "PhysicalSizeY": 400.0, "PhysicalSizeYUnit": "nm"},
    )
    with pytest.raises(MissingSpacingError):
        ngffreg.open_image(f)
    img = ngffreg.open_image(f, voxel_size=(1000, 400, 300))
    _assert_geometry(img, (1000, 400, 300), (0, 0, 0), "nanometer")


def _write_planes(folder: Path, src: np.ndarray, pattern: str = "p_{}.tif") -> None:
    folder.mkdir()
    for z, plane in enumerate(src):
        tifffile.imwrite(folder / pattern.format(z + 1), plane)


def test_tiff_folder_natural_order(tmp_path: Path, no_read, monkeypatch) -> None:
    src = _volume(shape=(12, 17, 19))
    folder = tmp_path / "planes"
    _write_planes(folder, src)
    monkeypatch.setattr(tiff_module, "_PLANES_TARGET_BYTES", 5 * src[0].nbytes)
    with pytest.raises(MissingSpacingError):
        ngffreg.open_image(folder)
    img = _open(no_read, folder, voxel_size=(2, 1, 1), unit="um")
    assert img.dims == ("z", "y", "x")
    assert img.shape == src.shape
    assert img.data.chunks[0] == (5, 5, 2)
    _assert_geometry(img, (2, 1, 1), (0, 0, 0), "micrometer")
    np.testing.assert_array_equal(img.values, src)  # p_10 after p_9, not after p_1
    _assert_indexing(img, src)


def test_tiff_folder_plane_of_another_shape(tmp_path: Path) -> None:
    src = _volume(shape=(5, 17, 19))
    folder = tmp_path / "planes"
    _write_planes(folder, src)
    tifffile.imwrite(folder / "p_3.tif", np.zeros((17, 18), "uint16"))
    with pytest.raises(InputError, match="shape"):
        ngffreg.open_image(folder, voxel_size=1, unit="um").values  # noqa: B018


def test_folder_without_tiff(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="folder"):
        ngffreg.open_image(folder)


# --------------------------------------------------------------------------- ITK formats

ITK_SPACING_XYZ = (0.5, 0.7, 1.1)
ITK_ORIGIN_XYZ = (3.0, -4.0, 5.0)
_C, _S = math.cos(math.radians(30)), math.sin(math.radians(30))
DIRECTIONS_XYZ = {
    "identity": np.eye(3),
    "swap_flip": np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]),
    "cycle_flip": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),  # not symmetric
    "oblique": np.array([[_C, -_S, 0.0], [_S, _C, 0.0], [0.0, 0.0, 1.0]]),
}


def _itk_write(path: Path, src: np.ndarray, direction_xyz: np.ndarray):
    import itk

    image = itk.image_from_array(np.ascontiguousarray(src))
    image.SetSpacing(ITK_SPACING_XYZ)
    image.SetOrigin(ITK_ORIGIN_XYZ)
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction_xyz)))
    itk.imwrite(image, str(path))
    return itk.imread(str(path))  # the file's own geometry, as ITK reads it


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("case", list(DIRECTIONS_XYZ))
def test_itk_formats_place_every_voxel(tmp_path: Path, no_read, suffix: str, case: str) -> None:
    src = _volume()
    f = tmp_path / f"vol{suffix}"
    ref = _itk_write(f, src, DIRECTIONS_XYZ[case])
    img = _open(no_read, f)
    assert img.dims == ("z", "y", "x")
    assert ngffreg.units(img) == "millimeter"
    assert img.dtype == src.dtype
    ours = img.values
    assert sorted(ours.shape) == sorted(src.shape)
    d_zyx = DIRECTIONS_XYZ[case][::-1, ::-1]
    if case == "oblique":
        np.testing.assert_allclose(ngffreg.direction(img), d_zyx, atol=1e-6)
        np.testing.assert_array_equal(ours, src)
    else:
        np.testing.assert_allclose(ngffreg.direction(img), np.eye(3), atol=1e-12)
        assert np.all(np.diff(img.z.values) > 0)
        assert np.all(np.diff(img.x.values) > 0)
    rng = np.random.default_rng(7)
    for _ in range(50):
        i, j, k = (int(rng.integers(n)) for n in SHAPE[::-1])  # ITK index order x, y, z
        expected = np.asarray(ref.TransformIndexToPhysicalPoint((i, j, k)), dtype=np.float64)[::-1]
        hit = np.argwhere(ours == src[k, j, i])
        assert len(hit) == 1
        a, b, c = hit[0]
        np.testing.assert_allclose(index_to_physical(img, hit[0])[0], expected, atol=1e-5)
        if case != "oblique":
            got = (img.z.values[a], img.y.values[b], img.x.values[c])
            np.testing.assert_allclose(got, expected, atol=1e-5)
        else:
            assert (a, b, c) == (k, j, i)


def test_itk_2d_is_refused(tmp_path: Path) -> None:
    import itk

    f = tmp_path / "slice.nrrd"
    itk.imwrite(itk.image_from_array(_volume(shape=(17, 19))), str(f))
    with pytest.raises(InputError, match="3-D"):
        ngffreg.open_image(f)


@pytest.mark.parametrize("nt", [1, 2])
def test_itk_4d(tmp_path: Path, nt: int) -> None:
    import itk

    src = _volume("float32", (nt, 3, 4, 5))
    f = tmp_path / "vol4d.nrrd"
    itk.imwrite(itk.image_from_array(src), str(f))
    img = ngffreg.open_image(f)
    assert img.dims == (("z", "y", "x") if nt == 1 else ("t", "z", "y", "x"))
    np.testing.assert_array_equal(img.values, src[0] if nt == 1 else src)


def _write_nifti_int8(path: Path, src: np.ndarray, spacing_xyz, origin_xyz) -> None:
    """A minimal NIfTI-1 file (int8) whose sform makes ITK's (LPS) direction the identity."""
    assert src.dtype == np.int8
    nz, ny, nx = src.shape
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hhh", hdr, 70, 256, 8, 0)  # datatype DT_INT8, bitpix, slice_start
    struct.pack_into("<8f", hdr, 76, 1.0, *spacing_xyz, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<3f", hdr, 108, 352.0, 0.0, 0.0)  # vox_offset, scl_slope, scl_inter
    hdr[123] = 2  # xyzt_units: millimeter
    struct.pack_into("<hh", hdr, 252, 0, 1)  # qform_code, sform_code
    sx, sy, sz = spacing_xyz
    ox, oy, oz = origin_xyz
    # RAS = diag(-1, -1, 1) · LPS
    struct.pack_into("<4f", hdr, 280, -sx, 0.0, 0.0, -ox)
    struct.pack_into("<4f", hdr, 296, 0.0, -sy, 0.0, -oy)
    struct.pack_into("<4f", hdr, 312, 0.0, 0.0, sz, oz)
    hdr[344:348] = b"n+1\x00"
    path.write_bytes(bytes(hdr) + b"\x00" * 4 + src.tobytes(order="C"))


def test_nifti_int8(tmp_path: Path, no_read) -> None:
    src = (np.arange(int(np.prod(SHAPE))) % 256 - 128).astype(np.int8).reshape(SHAPE)
    f = tmp_path / "labels.nii"
    _write_nifti_int8(f, src, (0.5, 0.75, 2.0), (1.0, 2.0, 3.0))
    img = _open(no_read, f)
    assert img.dtype == np.int8
    np.testing.assert_allclose(ngffreg.direction(img), np.eye(3), atol=1e-6)
    _assert_geometry(img, (2.0, 0.75, 0.5), (3.0, 2.0, 1.0), "millimeter")
    np.testing.assert_array_equal(img.values, src)
    _assert_indexing(img, src)


# --------------------------------------------------------------------------- Zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array(tmp_path: Path, no_read, zarr_format: int) -> None:
    src = _volume()
    path = tmp_path / f"v{zarr_format}.zarr"
    arr = zarr.create_array(
        store=str(path), shape=src.shape, chunks=(5, 7, 6), dtype=src.dtype, zarr_format=zarr_format
    )
    arr[:] = src
    with pytest.raises(MissingSpacingError):
        ngffreg.open_image(path)
    img = _open(no_read, path, voxel_size=(3, 2, 1), unit="nm")
    assert img.dims == ("z", "y", "x")
    _assert_geometry(img, (3, 2, 1), (0, 0, 0), "nanometer")
    # tasks gather the tiny stored chunks (whole multiples, here the whole volume)
    assert img.data.chunksize == src.shape and img.attrs["stored_chunks"] == [5, 7, 6]
    np.testing.assert_array_equal(img.values, src)
    _assert_indexing(img, src)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_group_without_ome_lists_arrays(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("raw", shape=(3, 4, 5), dtype="uint8")
    group.create_array("labels", shape=(3, 4, 5), dtype="uint8")
    with pytest.raises(InputError, match="group") as info:
        ngffreg.open_image(path, voxel_size=1, unit="um")
    assert "raw" in str(info.value) and "labels" in str(info.value)


@pytest.mark.parametrize(("zarr_format", "meta"), [(2, ".zarray"), (3, "zarr.json")])
def test_zarr_corrupted_metadata(tmp_path: Path, zarr_format: int, meta: str) -> None:
    path = tmp_path / "broken.zarr"
    arr = zarr.create_array(
        store=str(path), shape=(3, 4, 5), chunks=(3, 4, 5), dtype="uint8", zarr_format=zarr_format
    )
    arr[:] = 1
    (path / meta).write_text("{ this is not json")
    with pytest.raises(InputError) as info:
        ngffreg.open_image(path, voxel_size=1, unit="um")
    message = str(info.value).lower()
    assert "corrupted" in message or "cannot" in message


# --------------------------------------------------------------------------- N5


def _write_n5(
    path: Path,
    src: np.ndarray,
    block_zyx: tuple[int, int, int],
    *,
    compression: str = "raw",
    attrs: dict | None = None,
    skip: tuple[int, int, int] | None = None,
) -> None:
    """A small N5 writer: dimensions in x, y, z; blocks ``i/j/k`` (x, y, z grid) with header."""
    path.mkdir(parents=True)
    meta = {
        "dimensions": list(src.shape[::-1]),
        "blockSize": list(block_zyx[::-1]),
        "dataType": src.dtype.name,
        "compression": {"type": compression, **({"level": -1} if compression == "gzip" else {})},
        **(attrs or {}),
    }
    (path / "attributes.json").write_text(json.dumps(meta))
    grid = [math.ceil(n / b) for n, b in zip(src.shape, block_zyx, strict=True)]
    for gz, gy, gx in np.ndindex(*grid):
        if skip is not None and (gx, gy, gz) == skip:
            continue
        block = src[
            gz * block_zyx[0] : (gz + 1) * block_zyx[0],
            gy * block_zyx[1] : (gy + 1) * block_zyx[1],
            gx * block_zyx[2] : (gx + 1) * block_zyx[2],
        ]
        header = struct.pack(">HH", 0, 3) + struct.pack(">3I", *block.shape[::-1])
        body = block.astype(block.dtype.newbyteorder(">")).tobytes(order="C")
        if compression == "gzip":
            body = gzip.compress(body)
        f = path / str(gx) / str(gy) / str(gz)
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(header + body)


@pytest.mark.parametrize("compression", ["raw", "gzip"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_n5_dataset(tmp_path: Path, no_read, compression: str, dtype: str) -> None:
    src = _volume(dtype)
    path = tmp_path / "data.n5"
    _write_n5(
        path, src, (5, 7, 6), compression=compression,
        attrs={"pixelResolution": {"dimensions": [0.3, 0.4, 1.5], "unit": "um"}},
    )
    img = _open(no_read, path)
    assert img.dims == ("z", "y", "x")
    assert img.dtype == src.dtype
    _assert_geometry(img, (1.5, 0.4, 0.3), (0, 0, 0), "micrometer")
    # tasks gather the tiny stored chunks (whole multiples, here the whole volume)
    assert img.data.chunksize == src.shape and img.attrs["stored_chunks"] == [5, 7, 6]
    np.testing.assert_array_equal(img.values, src)
    _assert_indexing(img, src)
    # an unaligned window across block borders
    np.testing.assert_array_equal(img.isel(z=slice(3, 11), y=slice(6, 15), x=slice(5, 13)).values,
                                  src[3:11, 6:15, 5:13])


def test_n5_missing_block_reads_zeros(tmp_path: Path) -> None:
    src = _volume() + 1  # no zero in the source
    path = tmp_path / "holes.n5"
    _write_n5(path, src, (5, 7, 6), attrs={"resolution": [1.0, 1.0, 2.0], "unit": "um"},
              skip=(1, 2, 0))
    img = ngffreg.open_image(path)
    _assert_geometry(img, (2.0, 1.0, 1.0), (0, 0, 0), "micrometer")
    expected = src.copy()
    expected[0:5, 14:17, 6:12] = 0  # block x=1, y=2, z=0
    np.testing.assert_array_equal(img.values, expected)


def test_n5_multiscale_group(tmp_path: Path, no_read) -> None:
    src = _volume()
    root = tmp_path / "pyr.n5"
    root.mkdir()
    (root / "attributes.json").write_text(json.dumps(
        {"n5": "2.5.1", "pixelResolution": {"dimensions": [0.3, 0.4, 1.5], "unit": "um"}}
    ))
    _write_n5(root / "s0", src, (5, 7, 6))
    s1 = src[::2, ::2, ::2].copy()
    _write_n5(root / "s1", s1, (3, 5, 4), compression="gzip",
              attrs={"downsamplingFactors": [2, 2, 2]})
    img0 = _open(no_read, root)
    _assert_geometry(img0, (1.5, 0.4, 0.3), (0, 0, 0), "micrometer")
    np.testing.assert_array_equal(img0.values, src)
    img1 = _open(no_read, root, level=1)
    _assert_geometry(img1, (3.0, 0.8, 0.6), (0, 0, 0), "micrometer")
    np.testing.assert_array_equal(img1.values, s1)
    with pytest.raises(InputError, match="s2"):
        ngffreg.open_image(root, level=2)


def test_n5_without_resolution_needs_voxel_size(tmp_path: Path) -> None:
    src = _volume("uint8", (3, 4, 5))
    path = tmp_path / "bare.n5"
    _write_n5(path, src, (2, 3, 4))
    with pytest.raises(MissingSpacingError):
        ngffreg.open_image(path)
    img = ngffreg.open_image(path, voxel_size=(2, 1, 1), unit="um")
    np.testing.assert_array_equal(img.values, src)


# --------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("version", ["0.4", "0.5", "0.6"])
def test_ome_zarr_levels(tmp_path: Path, no_read, version: str) -> None:
    src = _volume(shape=(7, 9, 131))
    image = ngffreg.make_image(src, spacing=(2, 1, 0.5), origin=(1, 2, 3), unit="um")
    path = ngffreg.to_ome_zarr(image, tmp_path / "img.ome.zarr", version=version, chunks=8,
                               n_levels=3)
    expected = ngffreg.levels(ngffreg.to_pyramid(image, n_levels=3, chunks=8))
    assert len(expected) == 3
    for k, level in enumerate(expected):
        img = _open(no_read, path, level=k)
        assert img.dims == ("z", "y", "x")
        assert img.shape == level.shape
        _assert_geometry(img, ngffreg.spacing(level), ngffreg.origin(level), "micrometer")
        np.testing.assert_allclose(img.x.values, level.x.values)
        if k == 0:
            np.testing.assert_array_equal(img.values, src)
        else:
            np.testing.assert_array_equal(img.values, level.values)
    assert ngffreg.spacing(ngffreg.open_image(path, level=2)) != ngffreg.spacing(
        ngffreg.open_image(path, level=0)
    )
    with pytest.raises(InputError, match="level 3"):
        ngffreg.open_image(path, level=3)


def test_ome_zarr_corrupted_array_metadata(tmp_path: Path) -> None:
    image = ngffreg.make_image(_volume(), spacing=1, unit="um")
    path = ngffreg.to_ome_zarr(image, tmp_path / "img.ome.zarr", version="0.5", n_levels=1)
    metas = sorted(path.rglob("zarr.json"), key=lambda p: len(p.parts))
    metas[-1].write_text("{ garbage")
    with pytest.raises(InputError):
        ngffreg.open_image(path).values  # noqa: B018
    metas[0].write_text("{ garbage")
    with pytest.raises(InputError, match=r"(?i)corrupted|cannot"):
        ngffreg.open_image(path)


# --------------------------------------------------------------------------- paths


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="No such"):
        ngffreg.open_image(tmp_path / "nope.tif")


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InputError, match="empty"):
        ngffreg.open_image(folder)


def test_unknown_suffix(tmp_path: Path) -> None:
    f = tmp_path / "volume.xyz"
    f.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="Unknown file type"):
        ngffreg.open_image(f)


@pytest.mark.parametrize("kind", ["tiff", "zarr", "n5"])
def test_level_beyond_a_single_level_format_is_refused(tmp_path, kind):
    data = np.arange(4 * 5 * 6, dtype="uint16").reshape(4, 5, 6)
    if kind == "tiff":
        path = tmp_path / "s.tif"
        tifffile.imwrite(path, data, photometric="minisblack")
    elif kind == "zarr":
        path = tmp_path / "a.zarr"
        zarr.create_array(str(path), shape=data.shape, chunks=(2, 2, 2), dtype=data.dtype)[:] = data
    else:
        path = tmp_path / "d.n5"
        _write_n5(path, data, (3, 3, 3))
    with pytest.raises(InputError, match="level 1 does not exist"):
        ngffreg.open_image(path, voxel_size=(1, 1, 1), unit="um", level=1)
