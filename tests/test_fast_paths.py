"""The structured-grid and held-region fast paths give the generic paths' results."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from ngffreg.image import Grid
from ngffreg.sampling import region_bounds, sample
from ngffreg.transforms import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    Translation,
)
from ngffreg.transforms.field import _HeldField

RNG = np.random.default_rng(7)
OBLIQUE = np.array([[np.cos(0.3), -np.sin(0.3), 0.0], [np.sin(0.3), np.cos(0.3), 0.0],
                    [0.0, 0.0, 1.0]])


def _random_field(shape=(9, 11, 10), spacing=(3.0, 2.5, 4.0), origin=(-4.0, 1.5, -2.0),
                  direction=None, outside="zero", chunks=(3, 4, 5, 4)) -> DisplacementField:
    data = RNG.normal(scale=2.0, size=(3, *shape)).astype(np.float32)
    return DisplacementField.from_array(da.from_array(data, chunks=chunks), spacing=spacing,
                                        origin=origin, direction=direction, unit="um",
                                        outside=outside)


def _random_affine() -> Affine:
    m = np.eye(4)
    m[:3, :3] += RNG.normal(scale=0.05, size=(3, 3))
    m[:3, 3] = RNG.normal(scale=3.0, size=3)
    return Affine(matrix=m)


def _check(transform, grid: Grid, region, *, exact: bool = False) -> None:
    fast = transform.apply_grid(grid, region)
    slow = transform.apply(grid.points(region))
    assert fast.shape == slow.shape
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    if exact:
        np.testing.assert_array_equal(fast, slow)
    else:
        ok = ~np.isnan(slow)
        scale = max(1.0, float(np.abs(slow[ok]).max())) if ok.any() else 1.0
        np.testing.assert_allclose(fast[ok], slow[ok], rtol=1e-12, atol=1e-12 * scale)


GRIDS = [
    # overhanging the field on every side, finer than it
    Grid.from_origin((17, 23, 19), (1.3, 0.9, 1.7), (-9.0, -6.0, -8.0), unit="um"),
    # inside the field, a coarser spacing
    Grid.from_origin((5, 6, 7), (4.1, 3.3, 5.2), (0.0, 3.0, 1.0), unit="um"),
    # far outside the field along one axis
    Grid.from_origin((4, 5, 6), (1.0, 1.0, 1.0), (500.0, 0.0, 0.0), unit="um"),
]
REGIONS = [None, (slice(1, 4), slice(2, 5), slice(0, 3)), (slice(3, 4), slice(0, 5), slice(1, 6))]


@pytest.mark.parametrize("outside", ["zero", "nearest", "nan"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("region", REGIONS)
def test_field_apply_grid_equals_apply(outside, grid, region):
    field = _random_field(outside=outside)
    _check(field, grid, region)


@pytest.mark.parametrize("region", REGIONS)
def test_field_on_its_own_grid_is_a_plain_read(region):
    field = _random_field()
    grid = field.grid
    out = field.apply_grid(grid, region)
    region = region or tuple(slice(0, n) for n in grid.shape)
    expected = grid.points(region) + np.moveaxis(
        np.asarray(field.field.data[(slice(None), *region)], dtype=np.float64), 0, -1
    ).reshape(-1, 3)
    np.testing.assert_array_equal(out, expected)
    _check(field, grid, region)


def test_field_on_a_shifted_integer_grid_matches():
    field = _random_field(spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    grid = Grid.from_origin((6, 7, 8), (2.0, 2.0, 2.0), (4.0, -2.0, 6.0), unit="um")
    _check(field, grid, None)


def test_oblique_grid_or_field_falls_back():
    oblique_grid = Grid.from_origin((6, 7, 8), (1.5, 1.2, 1.1), (1.0, 2.0, 3.0), OBLIQUE,
                                    unit="um")
    _check(_random_field(), oblique_grid, (slice(1, 5), slice(0, 7), slice(2, 6)), exact=True)
    oblique_field = _random_field(direction=OBLIQUE)
    _check(oblique_field, GRIDS[0], REGIONS[1], exact=True)


@pytest.mark.parametrize("linear", [Identity(), Translation(translation=(1.5, -2.0, 0.25)),
                                    Scale(scale=(0.9, 1.1, 1.3)), "affine"])
@pytest.mark.parametrize("region", REGIONS)
def test_linear_apply_grid_is_bitwise_apply(linear, region):
    linear = _random_affine() if linear == "affine" else linear
    _check(linear, GRIDS[0], region, exact=True)
    oblique = Grid.from_origin((6, 7, 8), (1.5, 1.2, 1.1), (1.0, 2.0, 3.0), OBLIQUE, unit="um")
    _check(linear, oblique, None, exact=True)


@pytest.mark.parametrize("region", REGIONS)
def test_sequence_and_bijection_apply_grid(region):
    field = _random_field()
    affine = _random_affine()
    seq = Sequence(transforms=(field, affine))
    _check(seq, GRIDS[0], region)
    _check(Sequence(transforms=(affine, field)), GRIDS[0], region)
    bij = Bijection(forward=affine, inverse_transform=affine.inverse())
    _check(bij, GRIDS[0], region, exact=True)


@pytest.mark.parametrize("outside", ["zero", "nearest", "nan"])
def test_held_region_apply_equals_per_batch_apply(outside):
    """Many points (more than one batch) read the field region once; same values as
    batches of the generic per-point path."""
    field = _random_field(outside=outside)
    pts = RNG.uniform(-15, 45, size=(5000, 3))
    held = field.apply(pts, batch_size=700)
    generic = np.concatenate([field._apply(pts[s:s + 700]) for s in range(0, 5000, 700)])
    np.testing.assert_array_equal(np.isnan(held), np.isnan(generic))
    ok = ~np.isnan(generic)
    np.testing.assert_allclose(held[ok], generic[ok], rtol=0, atol=1e-12)


def test_held_region_is_used_and_sorted_path_still_works(monkeypatch):
    field = _random_field()
    pts = RNG.uniform(-5, 30, size=(3000, 3))
    seen = []
    original = _HeldField.displacement

    def spy(self, points):
        seen.append(len(points))
        return original(self, points)

    monkeypatch.setattr(_HeldField, "displacement", spy)
    a = field.apply(pts, batch_size=1000)
    assert seen == [1000, 1000, 1000]
    import ngffreg.transforms.field as model

    monkeypatch.setattr(model, "REGION_BYTES", 1)  # too large a region: the sorted path
    seen.clear()
    b = field.apply(pts, batch_size=1000)
    assert not seen
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_all_points_outside_the_field():
    field = _random_field()
    pts = RNG.uniform(1000, 2000, size=(300, 3))
    np.testing.assert_array_equal(field.apply(pts, batch_size=100), pts)
    grid = Grid.from_origin((4, 5, 6), (1.0, 1.0, 1.0), (1000.0, 1000.0, 1000.0), unit="um")
    np.testing.assert_array_equal(field.apply_grid(grid), grid.points())


def test_region_bounds_match_per_point_floor():
    n = np.array([20, 30, 25])
    for order in (0, 1, 3):
        cidx = RNG.uniform(-5, 35, size=(1000, 3))
        lo, hi = region_bounds(cidx, n, order)
        base = np.clip(np.floor(cidx).astype(np.int64), 0, n - 1)
        lo_off, hi_off = {0: (0, 2), 1: (0, 2), 3: (-11, 13)}[order]
        np.testing.assert_array_equal(lo, np.clip(base.min(0) + lo_off, 0, n - 1))
        np.testing.assert_array_equal(hi, np.clip(base.max(0) + hi_off, 1, n))
    with_nan = RNG.uniform(2, 5, size=(10, 3))
    with_nan[3, 1] = np.nan
    lo, hi = region_bounds(with_nan, n, 1)
    assert lo[1] == 0  # a NaN point counts as index 0, as before


def test_sample_unchanged_on_random_points():
    data = RNG.normal(size=(2, 12, 14, 13))
    cidx = RNG.uniform(-0.5, 12.5, size=(400, 3))
    a = sample(data, cidx, order=1)
    b = sample(data, cidx, order=1, region_bytes=1)  # chunk-by-chunk path
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
