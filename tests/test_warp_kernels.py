"""The compiled warp path (ngffreg.kernels) gives the reference path's results, and the
chunk cache serves the same bytes as a direct read."""

from __future__ import annotations

import importlib

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

import ngffreg.kernels as kernels
from ngffreg import make_image
from ngffreg.image import Grid
from ngffreg.sampling import CHUNK_CACHE, ChunkCache, _zarr_source, read_region
from ngffreg.transforms import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Translation,
)
from ngffreg.warp import warp

warp_module = importlib.import_module("ngffreg.warp")  # (ngffreg.warp is also the function)
RNG = np.random.default_rng(2024)


def _rotation(angle: float, axes: tuple[int, int]) -> np.ndarray:
    r = np.eye(3)
    a, b = axes
    r[a, a] = r[b, b] = np.cos(angle)
    r[a, b], r[b, a] = -np.sin(angle), np.sin(angle)
    return r


OBLIQUE = _rotation(0.3, (1, 2)) @ _rotation(-0.2, (0, 2))


def _moving(dtype, direction=None, shape=(21, 26, 23)):
    smooth = ndimage.gaussian_filter(RNG.normal(size=shape), 1.5)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    if np.issubdtype(dtype, np.integer):
        values = np.round(smooth * (np.iinfo(dtype).max if np.dtype(dtype).itemsize == 1
                                    else 3000)).astype(dtype)
    else:
        values = (smooth * 100).astype(dtype)
    data = da.from_array(values, chunks=(8, 9, 10))
    return make_image(data, spacing=(1.5, 1.0, 1.25), origin=(-2.0, 1.0, 0.5),
                      direction=direction, unit="um")


def _field(outside="zero", direction=None, spacing=(4.0, 3.5, 3.0), origin=(-6.0, -4.0, -5.0),
           shape=(9, 10, 11), scale=1.5) -> DisplacementField:
    disp = ndimage.gaussian_filter(RNG.normal(size=(3, *shape)), (0, 1, 1, 1))
    disp *= scale / np.abs(disp).max()
    return DisplacementField.from_array(
        da.from_array(disp.astype(np.float32), chunks=(3, 4, 5, 4)), spacing=spacing,
        origin=origin, direction=direction, unit="um", outside=outside)


def _affine(scale: float = 0.04) -> Affine:
    m = np.eye(4)
    m[:3, :3] = _rotation(RNG.normal(scale=0.1), (1, 2)) + RNG.normal(scale=scale, size=(3, 3))
    m[:3, 3] = RNG.normal(scale=1.5, size=3)
    return Affine(matrix=m)


def _both(monkeypatch, moving, transform, grid, **kwargs):
    fast = warp(moving, transform, like=grid, **kwargs).values
    slow = warp(moving, transform, like=grid, kernels=False, **kwargs).values
    assert fast.dtype == slow.dtype and fast.shape == slow.shape
    return fast, slow


def _compare(fast, slow, order):
    if order == 0:
        np.testing.assert_array_equal(fast, slow)
    elif np.issubdtype(fast.dtype, np.integer):
        # the same value up to float64 rounding: a tie of rint may go either way
        diff = np.abs(fast.astype(np.int64) - slow.astype(np.int64))
        assert diff.max() <= 1
        assert np.mean(diff == 0) >= 0.999
    else:
        tol = 1e-6 if order == 3 or fast.dtype == np.float32 else 1e-9
        scale = float(np.nanmax(np.abs(slow))) or 1.0
        np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
        np.testing.assert_allclose(fast, slow, rtol=0, atol=tol * scale)


# a grid overhanging the moving image and the fields on every side
GRID = Grid.from_origin((19, 22, 24), (1.4, 1.3, 1.2), (-6.0, -3.0, -4.0), unit="um")
OBLIQUE_GRID = Grid.from_origin((17, 20, 18), (1.3, 1.2, 1.4), (-1.0, 2.0, -3.0), OBLIQUE,
                                unit="um")


def _chains(outside):
    f1, f2, a = _field(outside), _field(outside, direction=OBLIQUE, scale=2.0), _affine()
    return {
        "affine": a,
        "field": f1,
        "field-affine": Sequence(transforms=(f1, a)),
        "affine-field": Sequence(transforms=(a, f1)),
        "oblique field": Sequence(transforms=(f2, a)),
        "two fields, nested": Sequence(transforms=(
            Sequence(transforms=(f1, Translation(translation=(0.5, -0.3, 0.2)))),
            Bijection(forward=Sequence(transforms=(Scale(scale=(1.02, 0.98, 1.0)), f2)),
                      inverse_transform=Identity()))),
    }


@pytest.mark.parametrize("outside", ["zero", "nearest", "nan"])
@pytest.mark.parametrize("grid", [GRID, OBLIQUE_GRID], ids=["aligned", "oblique"])
@pytest.mark.parametrize(("interpolator", "order"),
                         [("nearestNeighbor", 0), ("linear", 1), ("bSpline", 3)])
def test_compiled_equals_reference(monkeypatch, outside, grid, interpolator, order):
    moving = _moving(np.float64)
    for name, transform in _chains(outside).items():
        fast, slow = _both(monkeypatch, moving, transform, grid, interpolator=interpolator,
                           chunks=(7, 9, 11), fill_value=-5.0)
        _compare(fast, slow, order)
        assert np.any(slow == -5.0), name  # some points fall outside the moving image


# (moving dtype, output dtype): each pair compiles its own kernels, so a few of them
@pytest.mark.parametrize(("dtype", "out_dtype"), [(np.uint8, None), (np.uint16, np.float64),
                                                  (np.int16, np.uint16), (np.float32, None),
                                                  (">u2", None)])
@pytest.mark.parametrize(("interpolator", "order"), [("nearestNeighbor", 0), ("linear", 1)])
def test_compiled_equals_reference_dtypes(monkeypatch, dtype, out_dtype, interpolator, order):
    moving = _moving(dtype, direction=OBLIQUE)
    transform = Sequence(transforms=(_field(), _affine()))
    fast, slow = _both(monkeypatch, moving, transform, GRID, interpolator=interpolator,
                       chunks=(10, 8, 12), fill_value=7, dtype=out_dtype)
    _compare(fast, slow, order)
    if out_dtype is None and order == 0:
        assert fast.dtype == np.dtype(dtype)


def test_linear_chain_nearest_is_exact_on_ties(monkeypatch):
    """A linear chain computes the reference's points bitwise, so nearest-neighbour ties
    (indices at exactly k + 0.5) round the same way."""
    moving = make_image(np.arange(16 * 16 * 16, dtype=np.int32).reshape(16, 16, 16),
                        spacing=1.0, unit="um")
    grid = Grid.from_origin((8, 8, 8), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5), unit="um")
    for transform in (Identity(), Translation(translation=(1.0, 0.0, -2.0)),
                      Sequence(transforms=(Scale(scale=(1.0, 1.0, 1.0)), Identity()))):
        fast, slow = _both(monkeypatch, moving, transform, grid, interpolator="nearest",
                           chunks=4)
        np.testing.assert_array_equal(fast, slow)


def test_folded_field_falls_back_to_two_passes(monkeypatch):
    """A field that pushes the middle of a chunk past its faces: the one-pass kernel finds
    a point outside the region read from the faces' bounds, and the chunk is redone."""
    disp = np.zeros((3, 5, 5, 5))
    disp[:, 2, 2, 2] = 12.0  # a spike in the middle: interior points reach beyond the faces
    field = DisplacementField.from_array(disp, spacing=4.0, unit="um")
    moving = _moving(np.float32)
    grid = Grid.from_origin((16, 16, 16), 1.0, (0.0, 0.0, 0.0), unit="um")
    calls = []
    original = kernels.interpolate

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(kernels, "interpolate", spy)
    fast, slow = _both(monkeypatch, moving, Sequence(transforms=(field, _affine(0.0))), grid,
                       chunks=16)
    _compare(fast, slow, 1)
    assert calls, "the two-pass path did not run"


def test_region_too_large_takes_the_other_paths(monkeypatch):
    moving = _moving(np.float64)
    transform = Sequence(transforms=(_field(), _affine()))
    expected = warp(moving, transform, like=GRID, chunks=8).values
    monkeypatch.setattr(warp_module, "REGION_BYTES", 3000)  # the moving region: scipy
    np.testing.assert_allclose(warp(moving, transform, like=GRID, chunks=8).values, expected,
                               rtol=0, atol=1e-9 * np.abs(expected).max())
    monkeypatch.setattr(warp_module, "REGION_BYTES", 10)  # the field region: reference path
    np.testing.assert_allclose(warp(moving, transform, like=GRID, chunks=8).values, expected,
                               rtol=0, atol=1e-9 * np.abs(expected).max())


def test_chunk_far_outside_everything(monkeypatch):
    moving = _moving(np.uint16)
    grid = Grid.from_origin((6, 6, 6), 1.0, (500.0, 500.0, 500.0), unit="um")
    transform = Sequence(transforms=(_field(), _affine()))
    fast, slow = _both(monkeypatch, moving, transform, grid, fill_value=9,
                       interpolator="nearest")
    assert (fast == 9).all() and (slow == 9).all()


def test_unsupported_transforms_take_the_reference_path(monkeypatch):
    src = RNG.uniform(0, 20, size=(8, 3))
    spline = ThinPlateSpline(source=src, target=src + RNG.normal(scale=0.5, size=(8, 3)))
    assert warp_module._flatten(spline) is None
    assert warp_module._flatten(Sequence(transforms=(_affine(), spline))) is None
    moving = _moving(np.float32)
    fast, slow = _both(monkeypatch, moving, spline, GRID, chunks=10)
    np.testing.assert_array_equal(fast, slow)


# -- the chunk cache ----------------------------------------------------------------------
def test_chunk_cache_is_bounded_and_least_recently_used():
    cache = ChunkCache(1000)
    blocks = {i: np.full(40, i, dtype=np.float64) for i in range(5)}  # 320 bytes each
    for i in range(3):
        cache.put(i, blocks[i])
    assert cache.nbytes == 960
    assert cache.get(0) is blocks[0]  # 0 is now the most recent
    cache.put(3, blocks[3])
    assert cache.get(1) is None and cache.get(0) is not None and cache.nbytes == 960
    cache.put(9, np.zeros(200))  # larger than the whole cache: not kept
    assert cache.get(9) is None


@pytest.mark.parametrize("source", ["dask", "zarr"])
def test_cached_read_equals_plain_read(tmp_path, source):
    values = RNG.normal(size=(3, 30, 41, 37)).astype(np.float32)
    if source == "zarr":
        import zarr

        z = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, chunks=(3, 8, 16, 9),
                              dtype=values.dtype)
        z[...] = values
        data = da.from_zarr(z)
        assert _zarr_source(data) is z  # read from Zarr directly
        assert _zarr_source(data + 1) is None
    else:
        data = da.from_array(values, chunks=((3,), (7, 13, 10), (20, 21), (5, 30, 2)))
    for _ in range(20):
        lo = RNG.integers(0, [1, 29, 40, 36])
        hi = lo + RNG.integers(1, 25, size=4)
        box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(lo[1:], hi[1:],
                                                                    strict=True)))
        np.testing.assert_array_equal(read_region(data, box, cache="t"), values[box])
    CHUNK_CACHE.clear()


def test_cache_is_scoped_to_the_warp_call(tmp_path):
    """A store rewritten under the same path between two warps is read afresh."""
    import zarr

    from ngffreg.io.read import open_image

    path = tmp_path / "m.zarr"
    for value in (3, 11):
        z = zarr.create_array(path, shape=(16, 16, 16), chunks=(8, 8, 8), dtype="uint16",
                              overwrite=True)
        z[...] = value
        moving = open_image(path, voxel_size=(1, 1, 1), unit="um")
        out = warp(moving, Translation(translation=(0.5, 0.25, 0.0)), like=moving, chunks=8)
        assert (out.values[:-1, :-1] == value).all()


def test_kernels_that_do_not_compile_fall_back(monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(1)
        raise kernels.NumbaError("no such signature")

    moving = _moving(np.float32)
    transform = Sequence(transforms=(_field(), _affine()))
    expected = warp(moving, transform, like=GRID, chunks=8).values
    monkeypatch.setattr(kernels, "moving_indices_first", refuse)
    np.testing.assert_allclose(warp(moving, transform, like=GRID, chunks=8).values, expected,
                               rtol=0, atol=1e-5 * np.abs(expected).max())
    assert 1 <= len(calls) < 27 // 2  # tried once per thread, then the reference path


def test_threads_share_the_chunks_they_decode():
    """Threads reading overlapping regions at once decode each chunk once (the others
    wait for it) and all get the right values."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    values = RNG.normal(size=(40, 40, 40))
    decoded = []
    lock = threading.Lock()

    def load(block_info=None):
        loc = block_info[None]["array-location"]
        with lock:
            decoded.append(tuple(map(tuple, loc)))
        time.sleep(0.02)  # a slow decode, so the threads overlap
        return values[tuple(slice(a, b) for a, b in loc)]

    data = da.map_blocks(load, chunks=((10,) * 4,) * 3, dtype=np.float64)
    boxes = [tuple(slice(int(a), int(a) + 15) for a in RNG.integers(0, 25, size=3))
             for _ in range(24)]
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda box: read_region(data, box, cache="threads"), boxes))
    for box, part in zip(boxes, parts, strict=True):
        np.testing.assert_array_equal(part, values[box])
    assert len(decoded) == len(set(decoded))  # no chunk decoded twice
    CHUNK_CACHE.clear()
