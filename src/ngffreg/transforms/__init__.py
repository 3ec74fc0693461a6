"""Transforms in physical z, y, x space, their NGFF 0.6 metadata and ITK/ANTs interop.

Modules: :mod:`~ngffreg.transforms.base` (:class:`Transform`, points),
:mod:`~ngffreg.transforms.linear` (identity, translation, scale, affine),
:mod:`~ngffreg.transforms.field` (displacement fields, :func:`sample_field`,
:func:`invert_field`), :mod:`~ngffreg.transforms.spline` (thin-plate splines),
:mod:`~ngffreg.transforms.composite` (sequences, bijections, and walking a transform's
steps), :mod:`~ngffreg.transforms.ngff` (OME-NGFF 0.6 metadata),
:mod:`~ngffreg.transforms.files` (ITK, ANTs, c3d, BigWarp files) and
:mod:`~ngffreg.transforms.graph` (points between any two systems of a store).
"""

from __future__ import annotations

from .base import Transform, as_points
from .composite import Bijection, Sequence, bijection, compose, iter_steps, map_fields, steps_of
from .field import DisplacementField, inverse_report, invert_field, sample_field
from .linear import Affine, Identity, Scale, Translation
from .ngff import read_registration, read_transforms, write_registration, write_transforms
from .spline import ThinPlateSpline

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
    "iter_steps",
    "map_fields",
    "read_registration",
    "read_transforms",
    "sample_field",
    "steps_of",
    "write_registration",
    "write_transforms",
]

# ITK / ANTs / c3d / BigWarp transform files
from .files import (
    bigwarp_transform,
    load_transform_files,
    read_ants_transforms,
    read_bigwarp_landmarks,
    read_c3d_matrix,
    read_displacement_field,
    read_itk_transform,
    read_transform_file,
    write_ants_transforms,
    write_bigwarp_landmarks,
    write_c3d_matrix,
    write_displacement_field,
    write_itk_transform,
)

__all__ += [
    "bigwarp_transform",
    "load_transform_files",
    "read_ants_transforms",
    "read_bigwarp_landmarks",
    "read_c3d_matrix",
    "read_displacement_field",
    "read_itk_transform",
    "read_transform_file",
    "write_ants_transforms",
    "write_bigwarp_landmarks",
    "write_c3d_matrix",
    "write_displacement_field",
    "write_itk_transform",
]
