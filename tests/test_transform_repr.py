"""A transform's repr says what it is in physical terms (grid, spacing, unit, origin,
translation), never its arrays, and computes nothing."""

from __future__ import annotations

import dask.array as da
import numpy as np

from conftest import raise_if_dask_computes
from ngffreg.transforms import (
    Affine,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Translation,
    bijection,
    invert_field,
)

VALUE = 123.456  # a displacement no repr may show


def _lazy_field(**names) -> DisplacementField:
    data = da.full((3, 48, 96, 96), VALUE, chunks=(3, 16, 32, 32), dtype=np.float32)
    return DisplacementField.from_array(data, spacing=(2.0, 1.0, 1.0), origin=(10.0, -20.0, 5.0),
                                        unit="micrometer", **names)


def test_the_repr_of_a_lazy_field_shows_its_grid_and_computes_nothing():
    field = _lazy_field(name="fine", input="fixed", output="moving")
    with raise_if_dask_computes():
        text = repr(field)
    assert text == ("DisplacementField(name='fine', grid 48×96×96 at 2×1×1 micrometer, "
                    "origin (10, -20, 5), lazy, input='fixed', output='moving')")
    assert len(text) < 300
    assert "123" not in text and "array" not in text.lower()


def test_the_repr_of_a_field_in_memory_an_oblique_one_and_an_inverse():
    small = DisplacementField.from_array(np.full((3, 4, 5, 6), VALUE), spacing=(1, 1, 1),
                                         unit="mm", outside="nan").compute()
    text = repr(small)
    assert "grid 4×5×6 at 1×1×1 millimeter" in text
    assert "in memory" in text and "outside 'nan'" in text
    assert "123" not in text

    c, s = np.cos(0.3), np.sin(0.3)
    oblique = DisplacementField.from_array(
        da.zeros((3, 8, 8, 8), chunks=4), spacing=(1, 1, 1),
        direction=[[c, -s, 0], [s, c, 0], [0, 0, 1]])
    with raise_if_dask_computes():
        assert "oblique" in repr(oblique)

    inverse = invert_field(_lazy_field(name="fine"))  # measures its reach: computes once
    with raise_if_dask_computes():
        text = repr(inverse)
    assert "name='fine_inverse'" in text and "lazy" in text and "with residual" in text
    assert len(text) < 300


def test_linear_reprs_show_their_parameters():
    assert repr(Identity(input="a", output="b")) == (
        "Identity(name=None, input='a', output='b')")
    assert repr(Translation(translation=(1.5, -0.5, 2))) == (
        "Translation(name=None, translation (1.5, -0.5, 2), input=None, output=None)")
    assert repr(Scale(scale=(2, 1, 1))) == (
        "Scale(name=None, scale (2, 1, 1), input=None, output=None)")
    shift = Affine.from_matrix_offset(np.eye(3), (1.5, -0.5, 2))
    assert repr(shift) == ("Affine(name=None, 3-D, translation (1.5, -0.5, 2), linear part "
                           "identity, input=None, output=None)")
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = Affine.from_matrix_offset([[c, -s, 0], [s, c, 0], [0, 0, 1]], (0, 0, 0))
    assert "linear part rotation," in repr(rotation)
    assert "linear part scale (2, 1, 0.5)" in repr(Affine.from_matrix_offset(
        np.diag([2, 1, 0.5]), (0, 0, 0)))
    assert "general, singular values" in repr(Affine.from_matrix_offset(
        [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]], (0, 0, 0)))


def test_a_spline_shows_its_landmark_count_not_the_landmarks():
    src = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 5]], dtype=float)
    text = repr(ThinPlateSpline(source=src, target=src + VALUE))
    assert text == "ThinPlateSpline(name=None, 5 landmarks, input=None, output=None)"


def test_composites_show_their_steps_and_compute_nothing():
    field = _lazy_field(name="fine", input="fixed", output="mid")
    affine = Affine.from_matrix_offset(np.eye(3), (1, 2, 3), input="mid", output="moving")
    chain = Sequence(transforms=(field, affine), name="registration")
    with raise_if_dask_computes():
        text = repr(chain)
    assert text == (f"Sequence(name='registration', steps=[{field!r}, {affine!r}], "
                    "input='fixed', output='moving')")
    both = bijection(affine)
    assert repr(both) == (f"Bijection(name=None, forward={affine!r}, "
                          f"inverse={affine.inverse()!r}, input='mid', output='moving')")
