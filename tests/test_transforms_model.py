"""The transform model: linear types, fields, splines, sequences, bijections, inverses."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from ngffreg.errors import TransformError
from ngffreg.transforms import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Translation,
    bijection,
    compose,
    inverse_report,
    invert_field,
    sample_field,
)
from ngffreg.transforms.field import _sample_field

RNG = np.random.default_rng(7)


def _random_affine(**names) -> Affine:
    linear = np.eye(3) + 0.1 * RNG.normal(size=(3, 3))
    return Affine.from_matrix_offset(linear, RNG.normal(size=3) * 5, **names)


def _linear_field(shape=(20, 24, 28), spacing=(2.0, 1.0, 1.5), origin=(5.0, -3.0, 2.0),
                  chunks=(3, 8, 8, 8)):
    """A field whose displacement is an affine function of position: linear interpolation
    reproduces it exactly inside the grid, so every sampling path can be checked exactly."""
    b = np.array([[0.02, -0.01, 0.015], [0.01, 0.03, -0.02], [-0.015, 0.01, 0.02]])
    c = np.array([0.7, -0.4, 0.25])
    img = DisplacementField.from_array(np.zeros((3, *shape)), spacing=spacing, origin=origin,
                                       unit="mm")
    pts = img.grid_points()
    values = (pts @ b.T + c).reshape(*shape, 3)
    data = da.from_array(np.moveaxis(values, -1, 0).astype(np.float64), chunks=chunks)
    field = DisplacementField.from_array(data, spacing=spacing, origin=origin, unit="mm")
    return field, (lambda p: p @ b.T + c)


def _inside_points(field: DisplacementField, n: int, margin: float = 0.0) -> np.ndarray:
    lo = np.asarray(field.grid_points()[0]) + margin
    hi = np.asarray(field.grid_points()[-1]) - margin
    return RNG.uniform(lo, hi, size=(n, 3))


# -- linear ------------------------------------------------------------------------------
def test_linear_types_apply_and_invert_exactly():
    p = RNG.uniform(-50, 50, size=(500, 3))
    cases = [
        Identity(),
        Translation(translation=[1.0, -2.0, 3.5]),
        Scale(scale=[2.0, 0.5, 1.25]),
        _random_affine(),
    ]
    expected = [p, p + np.array([1.0, -2.0, 3.5]), p * np.array([2.0, 0.5, 1.25]), None]
    for t, exp in zip(cases, expected, strict=True):
        q = t.apply(p)
        if exp is not None:
            np.testing.assert_allclose(q, exp, rtol=0, atol=1e-12)
        np.testing.assert_allclose(t.inverse().apply(q), p, rtol=0, atol=1e-9)
        np.testing.assert_allclose(t.to_affine().apply(p), q, rtol=0, atol=1e-9)
        np.testing.assert_allclose(t.apply_inverse(q), p, rtol=0, atol=1e-9)


def test_transforms_are_immutable():
    a = _random_affine()
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 5.0
    with pytest.raises(AttributeError):
        a.name = "x"  # type: ignore[misc]


def test_sequence_applies_first_to_last_and_reduces_to_one_affine():
    t, s, a = Translation(translation=[1, 2, 3]), Scale(scale=[2, 3, 4]), _random_affine()
    seq = Sequence(transforms=(t, s, a))
    p = RNG.uniform(-10, 10, size=(100, 3))
    np.testing.assert_allclose(seq.apply(p), a.apply(s.apply(t.apply(p))), atol=1e-12)
    reduced = seq.simplify()
    assert isinstance(reduced, Affine)
    np.testing.assert_allclose(reduced.apply(p), seq.apply(p), atol=1e-9)
    np.testing.assert_allclose(seq.inverse().apply(seq.apply(p)), p, atol=1e-9)
    # compose flattens unnamed sequences; nested sequences flatten on simplify
    nested = compose(seq, Sequence(transforms=(t,)))
    np.testing.assert_allclose(nested.apply(p), t.apply(seq.apply(p)), atol=1e-12)


def test_sequence_keeps_fields_and_merges_linear_runs():
    field, _ = _linear_field()
    a1, a2 = _random_affine(), Translation(translation=[0.5, 0, 0])
    seq = Sequence(transforms=(a1, a2, field, Scale(scale=[1, 1, 1])))
    reduced = seq.simplify()
    assert isinstance(reduced, Sequence) and len(reduced.transforms) == 3
    p = _inside_points(field, 200)
    np.testing.assert_allclose(reduced.apply(p), seq.apply(p), atol=1e-9)
    with pytest.raises(TransformError, match="not linear"):
        _ = seq.matrix


def test_sequence_whose_coordinate_systems_do_not_chain_is_refused():
    a = _random_affine(input="fixed", output="mid")
    b = _random_affine(input="other", output="moving")
    with pytest.raises(TransformError, match="do not chain"):
        Sequence(transforms=(a, b))
    ok = Sequence(transforms=(a, b.renamed(input="mid")))
    assert (ok.input, ok.output) == ("fixed", "moving")
    assert (ok.inverse().input, ok.inverse().output) == ("moving", "fixed")


def test_bad_parameters_give_clear_errors():
    with pytest.raises(TransformError, match="3×4 or 4×4"):
        Affine(matrix=np.eye(3))
    with pytest.raises(TransformError, match="needs 3 values"):
        Translation(translation=[1, 2])
    with pytest.raises(TransformError, match="no inverse"):
        Scale(scale=[1, 0, 1]).inverse()
    with pytest.raises(TransformError, match="singular"):
        Affine(matrix=np.diag([1.0, 1.0, 0.0, 1.0])).inverse()
    with pytest.raises(TransformError, match=r"\(N, 3\)"):
        Identity().apply(np.zeros((4, 2)))
    with pytest.raises(TransformError, match="3 components"):
        DisplacementField.from_array(np.zeros((2, 4, 4, 4)), spacing=1)
    with pytest.raises(TransformError, match="outside"):
        DisplacementField.from_array(np.zeros((3, 4, 4, 4)), spacing=1, outside="wrap")


def test_bijection_uses_its_stored_inverse():
    a = _random_affine(input="fixed", output="moving")
    b = bijection(a)
    p = RNG.uniform(-10, 10, size=(50, 3))
    np.testing.assert_allclose(b.inverse().apply(b.apply(p)), p, atol=1e-9)
    np.testing.assert_allclose(b.apply_inverse(b.apply(p)), p, atol=1e-9)
    assert (b.inverse().input, b.inverse().output) == ("moving", "fixed")
    with pytest.raises(TransformError, match="does not undo"):
        Bijection(forward=a, inverse_transform=a)


# -- displacement fields ------------------------------------------------------------------
def test_field_interpolation_is_exact_for_a_linear_field_and_chunking_does_not_matter():
    field, truth = _linear_field()
    p = _inside_points(field, 5000)
    np.testing.assert_allclose(field.apply(p), p + truth(p), atol=1e-9)
    cidx = field.continuous_index(p)
    whole = _sample_field(field.field.data, cidx)
    by_chunk = _sample_field(field.field.data, cidx, region_bytes=0)
    np.testing.assert_array_equal(whole, by_chunk)
    # small batches give the same answer
    np.testing.assert_array_equal(field.apply(p, batch_size=333), field.apply(p))


def test_field_outside_rules_follow_itk():
    field, truth = _linear_field(shape=(10, 10, 10), spacing=(1, 1, 1), origin=(0, 0, 0))
    edge = np.array([[4.0, 4.0, 9.4]])  # within half a voxel past the last centre
    beyond = np.array([[4.0, 4.0, 9.6]])
    before = np.array([[-0.5, 4.0, 4.0]])  # exactly on the lower bound: inside for ITK
    clamp = truth(np.array([[4.0, 4.0, 9.0]]))
    np.testing.assert_allclose(field.displacement(edge), clamp, atol=1e-12)
    np.testing.assert_allclose(field.displacement(beyond), 0.0)
    np.testing.assert_allclose(field.displacement(before), truth(np.array([[0.0, 4, 4]])))
    nearest = DisplacementField(field=field.field, outside="nearest")
    np.testing.assert_allclose(nearest.displacement(beyond), clamp, atol=1e-12)
    nan = DisplacementField(field=field.field, outside="nan")
    assert np.isnan(nan.apply(beyond)).all()


def test_field_reads_only_the_chunks_its_points_need():
    reads: list[tuple] = []

    def make(block_info=None):
        loc = block_info[None]["array-location"]
        reads.append(tuple(loc))
        shape = tuple(b - a for a, b in loc)
        return np.full(shape, 0.5)

    data = da.map_blocks(make, chunks=((3,), (32,) * 8, (32,) * 8, (32,) * 8), dtype=float)
    field = DisplacementField.from_array(data, spacing=1.0)  # 256³ grid, 512 chunks
    p = RNG.uniform(0, 20, size=(10_000, 3))  # all in the first chunk (plus halo)
    q = field.apply(p)
    np.testing.assert_allclose(q, p + 0.5)
    assert 1 <= len(reads) <= 8, reads  # one chunk and its +1 halo neighbours, not 512


def test_apply_inverse_point_by_point():
    field, _ = _linear_field()
    p = _inside_points(field, 2000, margin=3.0)
    q = field.apply(p)
    back, residual = field.apply_inverse(q, return_residual=True)
    np.testing.assert_allclose(back, p, atol=1e-6)
    assert residual.max() < 1e-6
    seq = Sequence(transforms=(field, _random_affine()))
    p2 = seq.apply_inverse(seq.apply(p))  # through a Sequence: exact affine, iterated field
    np.testing.assert_allclose(p2, p, atol=1e-6)


def test_invert_field_lazily_chunk_by_chunk():
    field, _ = _linear_field(shape=(24, 30, 36), chunks=(3, 10, 10, 10))
    inv = invert_field(field)
    assert isinstance(inv.field.data, da.Array)
    assert inv.field.data.chunks[1:] == field.field.data.chunks[1:]
    report = inverse_report(inv)
    # the forward field is linear, so T⁻¹ is exact wherever its preimage is on the grid
    p = _inside_points(field, 3000, margin=4.0)
    back = inv.apply(field.apply(p))
    assert np.percentile(np.linalg.norm(back - p, axis=1), 99) < 1e-3
    assert report["median_voxels"] < 1e-3
    assert (inv.input, inv.output) == (field.output, field.input)


def test_sample_field_reproduces_the_transform_on_a_grid():
    a = _random_affine()
    field, _ = _linear_field()
    sampled = sample_field(a, like=field, chunks=7)
    assert sampled.field.data.chunks[1] == (7, 7, 6)
    pts = sampled.grid_points()[::37]
    np.testing.assert_allclose(sampled.apply(pts), a.apply(pts), atol=1e-4)  # float32 storage


def test_thin_plate_spline_hits_landmarks_and_is_affine_for_affine_landmarks():
    a = _random_affine()
    src = RNG.uniform(0, 100, size=(12, 3))
    tps = ThinPlateSpline(source=src, target=a.apply(src))
    np.testing.assert_allclose(tps.apply(src), a.apply(src), atol=1e-8)
    p = RNG.uniform(0, 100, size=(100, 3))
    np.testing.assert_allclose(tps.apply(p), a.apply(p), atol=1e-6)
    bent = ThinPlateSpline(source=src, target=src + RNG.normal(size=src.shape))
    np.testing.assert_allclose(bent.apply(src), bent.target, atol=1e-8)
    np.testing.assert_allclose(bent.apply_inverse(bent.target), src, atol=1e-5)
    with pytest.raises(TransformError, match="at least 4"):
        ThinPlateSpline(source=src[:3], target=src[:3])
    with pytest.raises(TransformError, match="pair up"):
        ThinPlateSpline(source=src, target=src[:5])


# -- a real SyN field ------------------------------------------------------------------
def test_inverse_of_an_ants_syn_field(ants_syn):
    """Iterative inverse of the SyN warp of mni ← ch2, checked on brain voxels:
    |T⁻¹(T(p)) − p| median < 0.05 voxel and 99th percentile < 0.2 voxel."""
    from ngffreg.io.read import open_image
    from ngffreg.transforms.files import read_displacement_field

    warp = read_displacement_field(ants_syn["fwdtransforms"][0]).compute()
    inv = invert_field(warp).compute()
    report = inverse_report(inv)
    brain = open_image(ants_syn["fixed"])
    values = np.asarray(brain.data.compute())
    idx = np.argwhere(values > np.percentile(values, 60))
    idx = idx[RNG.choice(len(idx), 20_000, replace=False)]
    p = np.stack([brain.coords[d].values[idx[:, k]] for k, d in enumerate("zyx")], axis=1)
    p = p + RNG.uniform(-0.5, 0.5, size=p.shape)  # between voxel centres too
    err = np.linalg.norm(inv.apply(warp.apply(p)) - p, axis=1) / min(warp.spacing)
    assert np.median(err) < 0.05, (np.median(err), report)
    assert np.percentile(err, 99) < 0.2, (np.percentile(err, 99), report)
    # point-wise inversion (no inverse field) is tighter still
    back = warp.apply_inverse(warp.apply(p))
    assert np.percentile(np.linalg.norm(back - p, axis=1), 99) < 1e-3
