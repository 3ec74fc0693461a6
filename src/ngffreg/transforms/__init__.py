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
from .ngff import read_registration, read_transforms, write_registration, write_transforms

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
    "read_registration",
    "read_transforms",
    "sample_field",
    "write_registration",
    "write_transforms",
]
