"""ANTs' transform lists (``reg["fwdtransforms"]``, ``transformlist=``), read and written,
and the command line's list of transform files of any kind (:func:`load_transform_files`);
the conventions are listed in :mod:`ngffreg.transforms.files`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import xarray as xr

from ...errors import InputError, TransformError
from ..base import Transform
from ..composite import Sequence
from ..field import DisplacementField, sample_field
from .c3d_bigwarp import _parse_matrix_text, bigwarp_transform, read_c3d_matrix
from .itk import (
    FIELD_SUFFIXES,
    ITK_TRANSFORM_SUFFIXES,
    _existing,
    _steps,
    _suffix,
    read_displacement_field,
    read_itk_transform,
    write_displacement_field,
    write_itk_transform,
)

__all__ = [
    "load_transform_files",
    "read_ants_transforms",
    "read_transform_file",
    "write_ants_transforms",
]


# ---------------------------------------------------------------------------
# ANTs registration outputs
# ---------------------------------------------------------------------------
def _invert_ants(t: Transform, path: Any) -> Transform:
    if not t.is_linear:
        raise TransformError(
            f"{path} is not linear; ANTs inverts only linear transforms. Pass the matching "
            "inverse warp instead (…1InverseWarp.nii.gz from reg['invtransforms']).")
    return t.inverse()


def _read_ants_one(path: Any) -> Transform:
    p = Path(path).expanduser()
    if _suffix(p) in FIELD_SUFFIXES:
        return read_displacement_field(p)
    if _suffix(p) in ITK_TRANSFORM_SUFFIXES:
        return read_itk_transform(p)
    _existing(p, "transform file")
    raise InputError(f"{p}: ANTs transforms are ITK transform files "
                     f"({', '.join(ITK_TRANSFORM_SUFFIXES)}) or warp images "
                     f"({', '.join(FIELD_SUFFIXES)}); rename or convert it.")


def read_ants_transforms(paths: list[str | Path], invert: list[bool] | None = None) -> Sequence:
    """ANTs' transform list (``reg["fwdtransforms"]``, ``reg["invtransforms"]`` or a
    ``transformlist=``) as one :class:`Sequence`, with ``invert`` like ANTs'
    ``whichtoinvert`` (one flag per path; ``reg["invtransforms"]`` needs
    ``[True, False]``).

    Convention (checked against ``ants.apply_transforms_to_points`` and
    ``ants.apply_transforms``): a point is pushed through the list from its first entry
    to its last, so the sequence keeps ANTs' order. For ``fwdtransforms`` the result maps
    fixed points to moving points; for ``invtransforms`` moving to fixed.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise TransformError("An empty ANTs transform list; pass at least one file.")
    flags = [False] * len(paths) if invert is None else [bool(f) for f in invert]
    if len(flags) != len(paths):
        raise TransformError(f"invert has {len(flags)} flags for {len(paths)} transforms; give "
                             "one per transform, as ANTs' whichtoinvert.")
    steps = []
    for path, flag in zip(paths, flags, strict=True):
        t = _read_ants_one(path)
        steps.append(_invert_ants(t, path) if flag else t)
    return Sequence(transforms=tuple(steps))


def write_ants_transforms(transform: Transform, prefix: str | Path, *,
                          like: xr.DataArray | DisplacementField | None = None) -> list[str]:
    """Write ``transform`` (fixed→moving) as files ANTs applies, and return the
    ``transformlist`` for ``ants.apply_transforms(fixed, moving, transformlist=...)`` /
    ``ants.apply_transforms_to_points``, in ANTs' (point) order.

    Linear runs become ``{prefix}{k}GenericAffine.mat``; displacement fields are written on
    their own grid as ``{prefix}{k}Warp.nii.gz``; any other non-linear step (a thin-plate
    spline) is sampled with :func:`~ngffreg.transforms.sample_field` on the grid of
    ``like`` (the fixed image), which must then cover the points that step sees. ``k``
    counts like ANTs' outputs: 0 for the last step applied.
    """
    steps = _steps(transform)
    prefix = str(Path(prefix).expanduser())
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    for i, step in enumerate(steps):
        k = len(steps) - 1 - i
        if step.is_linear:
            out.append(str(write_itk_transform(step, f"{prefix}{k}GenericAffine.mat")))
            continue
        if not isinstance(step, DisplacementField):
            if like is None:
                raise TransformError(
                    f"Step {i} ({type(step).__name__}) must be sampled onto a grid for ANTs; "
                    "pass like=<fixed image> to write_ants_transforms.")
            step = sample_field(step, like=like)
        out.append(str(write_displacement_field(step, f"{prefix}{k}Warp.nii.gz")))
    return out


# ---------------------------------------------------------------------------
# CLI entry
# ---------------------------------------------------------------------------
def _flatten(transforms: list[Transform]) -> list[Transform]:
    out: list[Transform] = []
    for t in transforms:
        out.extend(_flatten(list(t.transforms)) if isinstance(t, Sequence) and t.name is None
                   else [t])
    return out


_SPEC = re.compile(r"^\[\s*(?P<path>.+?)\s*,\s*(?P<flag>[01])\s*\]$")


def _parse_spec(spec: str) -> tuple[Path, bool]:
    spec = str(spec).strip()
    match = _SPEC.match(spec)
    if match:
        return Path(match["path"]).expanduser(), match["flag"] == "1"
    if spec.startswith("["):
        raise InputError(f"Cannot parse the transform {spec!r}; write [path,1] to invert a "
                         "file or [path,0] (or just the path) to use it as is.")
    return Path(spec).expanduser(), False


def read_transform_file(path: str | Path) -> Transform:
    """Read one transform file, detecting its kind: an ITK transform (``.mat``, ``.txt``,
    ``.tfm``, ``.h5``), a c3d / greedy matrix (a ``.mat`` / ``.txt`` holding 4 lines of 4
    numbers; fixed→moving), a displacement-field image (``.nii``, ``.nii.gz``, ``.nrrd``,
    ``.mha``, ``.mhd``) or BigWarp landmarks (``.csv``; least-squares affine)."""
    p = _existing(path, "transform file")
    suffix = _suffix(p)
    if suffix in FIELD_SUFFIXES:
        return read_displacement_field(p)
    if suffix == ".csv":
        return bigwarp_transform(p, kind="affine")
    if suffix in (".mat", ".txt") and _parse_matrix_text(p) is not None:
        return read_c3d_matrix(p)
    if suffix in ITK_TRANSFORM_SUFFIXES:
        return read_itk_transform(p)
    raise InputError(
        f"Cannot tell what kind of transform {p} holds from its name. Use an ITK/ANTs "
        f"transform ({', '.join(ITK_TRANSFORM_SUFFIXES)}), a c3d matrix (.mat/.txt), a "
        f"displacement field ({', '.join(FIELD_SUFFIXES)}) or BigWarp landmarks (.csv).")


def load_transform_files(specs: list[str]) -> Sequence:
    """The command line's transform files as one fixed→moving :class:`Sequence` named
    ``"registration"``.

    ``specs`` are given like ANTs' ``transformlist`` (e.g. ``reg["fwdtransforms"]``),
    in ANTs' own order: a fixed point goes through the first entry first (ANTs' image
    wording: the last entry moves the image first). Each may be written ``[path,1]`` to
    use the inverse of a linear transform (ANTs' syntax), or ``[path,0]``. The kind of
    each file is detected by :func:`read_transform_file`.
    """
    if isinstance(specs, (str, Path)):
        specs = [str(specs)]
    if not specs:
        raise InputError("No transform files given; pass at least one.")
    steps: list[Transform] = []
    for spec in specs:
        path, inverse = _parse_spec(spec)
        t = read_transform_file(path)
        steps.append(_invert_ants(t, path) if inverse else t)
    return Sequence(transforms=tuple(_flatten(steps)), name="registration")
