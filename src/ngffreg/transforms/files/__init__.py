"""Transform files of other tools: ITK, ANTs, c3d / greedy and BigWarp.

Every function returns or takes :mod:`ngffreg.transforms` objects, which map physical
points in z, y, x order (ITK's LPS space, axes reordered), and every registration result
maps **fixed-space points to moving-space points** (the map used to resample the moving
image into the fixed space). The axis reordering happens in :mod:`ngffreg.itk_bridge`.

Conventions checked numerically in ``tests/test_transform_files.py``:

- ITK transform files hold maps from the fixed (virtual) space to the moving space; an
  ITK ``CompositeTransform`` applies its last-added transform first.
- ANTs' transform lists (``reg["fwdtransforms"]``, ``transformlist=``) are in point order:
  ``ants.apply_transforms_to_points`` and ``ants.apply_transforms`` push a fixed point
  through the **first** entry first. For ``[…1Warp.nii.gz, …0GenericAffine.mat]`` the
  point is displaced by the warp (defined on the fixed grid) and then mapped by the
  affine. (In ANTs' image-centred wording, "the last transform is applied first": the
  moving image is moved by the affine first.)
- ANTs / ITK displacement-field images store vectors in x, y, z physical (LPS)
  components on the field's own grid, direction included.
- c3d / greedy matrices are 4×4 in RAS space: ``M_lps = F·M·F``, ``F = diag(-1,-1,1,1)``.

Modules: :mod:`~ngffreg.transforms.files.itk` (ITK transform files and ITK / ANTs
displacement-field images), :mod:`~ngffreg.transforms.files.ants` (ANTs transform lists, and
the command line's list of transform files of any kind) and
:mod:`~ngffreg.transforms.files.c3d_bigwarp` (c3d / greedy matrices, BigWarp landmarks).
"""

from __future__ import annotations

from .ants import (
    load_transform_files,
    read_ants_transforms,
    read_transform_file,
    write_ants_transforms,
)
from .c3d_bigwarp import (
    MAPS,
    RAS_FLIP,
    bigwarp_transform,
    fit_affine,
    read_bigwarp_landmarks,
    read_c3d_matrix,
    write_bigwarp_landmarks,
    write_c3d_matrix,
)
from .itk import (
    FIELD_SUFFIXES,
    ITK_TRANSFORM_SUFFIXES,
    read_displacement_field,
    read_itk_transform,
    write_displacement_field,
    write_itk_transform,
)

__all__ = [
    "FIELD_SUFFIXES",
    "ITK_TRANSFORM_SUFFIXES",
    "MAPS",
    "RAS_FLIP",
    "bigwarp_transform",
    "fit_affine",
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
