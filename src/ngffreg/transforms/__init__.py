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
