"""Transforms in physical z, y, x space, their NGFF 0.6 metadata and ITK/ANTs interop."""

from __future__ import annotations

from .model import (
    Affine,
    Bijection,
    DisplacementField,
    Identity,
    Scale,
    Sequence,
    ThinPlateSpline,
    Transform,
    Translation,
    as_points,
    bijection,
    compose,
    inverse_report,
    invert_field,
    sample_field,
)

__all__ = [
    "Affine",
    "Bijection",
    "DisplacementField",
    "Identity",
    "Scale",
    "Sequence",
    "ThinPlateSpline",
    "Transform",
    "Translation",
    "as_points",
    "bijection",
    "compose",
    "inverse_report",
    "invert_field",
    "sample_field",
]
