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
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import itk_bridge
from ..errors import InputError, InputNotFoundError, TransformError
from .model import (
    Affine,
    Bijection,
    DisplacementField,
    Sequence,
    ThinPlateSpline,
    Transform,
    as_points,
    sample_field,
)

ITK_TRANSFORM_SUFFIXES = (".mat", ".txt", ".tfm", ".h5", ".hdf5")
FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: RAS ↔ LPS flip of x and y (homogeneous).
RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
MAPS = ("fixed_to_moving", "moving_to_fixed")


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for long in (".nii.gz", ".nhdr", ".hdf5"):
        if name.endswith(long):
            return long
    return path.suffix.lower()


def _existing(path: Any, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFoundError(f"No {what} at {p}. Check the path.")
    return p


def _flatten(transforms: list[Transform]) -> list[Transform]:
    out: list[Transform] = []
    for t in transforms:
        out.extend(_flatten(list(t.transforms)) if isinstance(t, Sequence) and t.name is None
                   else [t])
    return out


def _steps(transform: Transform) -> list[Transform]:
    """``transform`` as a flat list of steps (first applied first), linear runs merged."""
    if not isinstance(transform, Transform):
        raise TransformError(f"Expected an ngffreg transform; got {type(transform).__name__}.")
    simple = transform.simplify()
    steps = list(simple.flattened()) if isinstance(simple, Sequence) else [simple]
    return [s.forward if isinstance(s, Bijection) else s for s in steps]


# ---------------------------------------------------------------------------
# ITK transform files
# ---------------------------------------------------------------------------
def _itk_message(exc: Exception) -> str:
    """The informative line of an ITK exception (not the C++ location nor type lists)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln.split("):", 1)[-1].strip() for ln in lines if "ITK ERROR" in ln]
    return (found[0] if found else (lines[0] if lines else type(exc).__name__))[:300]


def _itk_read_list(path: Path) -> list[Any]:
    import itk

    try:
        return itk.transformread(str(path))
    except Exception as exc:  # itk raises RuntimeError with C++ text
        fallback = _read_matrix_offset_file(path)
        if fallback is not None:
            return [fallback]
        raise TransformError(
            f"ITK cannot read the transform file {path}: {_itk_message(exc)}. Pass an ITK "
            "transform file (.mat, .txt, .tfm, .h5) written by ITK, ANTs or SimpleITK.") from exc


class _MatrixOffset:
    """A ``MatrixOffsetTransformBase`` (ITK's Python factory does not register it, yet
    older ANTs versions write it): the same parameters as an ``AffineTransform``."""

    def __init__(self, name: str, parameters: np.ndarray, fixed: np.ndarray, dim: int) -> None:
        self.name, self.parameters, self.fixed, self.dim = name, parameters, fixed, dim

    def GetNameOfClass(self) -> str:
        return "MatrixOffsetTransformBase"

    def GetInputSpaceDimension(self) -> int:
        return self.dim

    GetOutputSpaceDimension = GetInputSpaceDimension

    def IsLinear(self) -> bool:
        return True

    def matrix_xyz(self) -> np.ndarray:
        """``offset = t + c − A c`` (ITK's MatrixOffsetTransformBase::ComputeOffset)."""
        a = self.parameters[:9].reshape(3, 3)
        t = self.parameters[9:12]
        c = self.fixed[:3] if len(self.fixed) >= 3 else np.zeros(3)
        return itk_bridge.matrix_offset_to_homogeneous(a, t + c - a @ c)


_MO_NAME = re.compile(r"^MatrixOffsetTransformBase_(double|float)_(\d)_(\d)$")


def _read_matrix_offset_file(path: Path) -> _MatrixOffset | None:
    """Parse a one-transform file holding a ``MatrixOffsetTransformBase``, or None."""
    if _suffix(path) == ".mat":
        from scipy import io as sio

        try:
            content = sio.loadmat(str(path))
        except Exception:  # not a MATLAB file
            return None
        names = [k for k in content if _MO_NAME.match(k)]
        if len(names) != 1:
            return None
        name = names[0]
        params = np.asarray(content[name], dtype=np.float64).reshape(-1)
        fixed = np.asarray(content.get("fixed", np.zeros(0)), dtype=np.float64).reshape(-1)
    elif _suffix(path) in (".txt", ".tfm"):
        fields: dict[str, list[str]] = {}
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Transform", "Parameters", "FixedParameters"):
                fields.setdefault(key.strip(), []).append(value.strip())
        if len(fields.get("Transform", [])) != 1 or not _MO_NAME.match(fields["Transform"][0]):
            return None
        name = fields["Transform"][0]
        try:
            params = np.array(fields.get("Parameters", [""])[0].split(), dtype=np.float64)
            fixed = np.array(fields.get("FixedParameters", [""])[0].split(), dtype=np.float64)
        except ValueError:
            return None
    else:
        return None
    dim = int(_MO_NAME.match(name)[2])
    if dim == 3 and params.size != 12:
        raise TransformError(f"{path}: a 3-D {name} needs 12 parameters; got {params.size}. "
                             "The file is damaged; write it again.")
    return _MatrixOffset(name, params, fixed, dim)


def _from_itk(t: Any, path: Path) -> Transform:
    """One ITK transform object (down-cast) as an ngffreg transform (z, y, x)."""
    import itk

    dims = (int(t.GetInputSpaceDimension()), int(t.GetOutputSpaceDimension()))
    cls = t.GetNameOfClass()
    if dims != (3, 3):
        raise TransformError(
            f"{path} holds a {dims[0]}-D {cls}; ngffreg needs a 3-D transform. Register the "
            "3-D volumes (or write the transform as 3-D) and pass that file.")
    if cls == "CompositeTransform":
        subs = [_from_itk(itk.down_cast(t.GetNthTransform(i)), path)
                for i in range(t.GetNumberOfTransforms())]
        if not subs:
            raise TransformError(f"{path} holds an empty CompositeTransform; pass a real one.")
        # ITK applies the last-added transform first; a Sequence applies first to last.
        return Sequence(transforms=tuple(reversed(subs)))
    if "DisplacementFieldTransform" in cls:
        image = t.GetDisplacementField()
        spacing, origin, direction, _ = itk_bridge.image_geometry(image)
        return DisplacementField.from_array(
            itk_bridge.vector_image_to_array(image), spacing=spacing, origin=origin,
            direction=direction, unit="millimeter")
    if isinstance(t, _MatrixOffset):
        return Affine(matrix=itk_bridge.matrix_from_itk(t.matrix_xyz()))
    if t.IsLinear():
        return Affine(matrix=itk_bridge.linear_itk_transform_to_matrix(t))
    raise TransformError(
        f"{path} holds an ITK {cls}, which ngffreg does not read. Convert it to a displacement "
        "field image first (e.g. antsApplyTransforms -o [field.nii.gz,1] -t <file> -r <fixed>) "
        "and pass that.")


def read_itk_transform(path: str | Path) -> Transform:
    """Read an ITK transform file: ``.mat`` (ITK/ANTs MATLAB binary, e.g. ANTs'
    ``0GenericAffine.mat``), ``.txt`` / ``.tfm`` (ITK text) or ``.h5`` / ``.hdf5``.

    Convention: the file's transform maps fixed (virtual) points to moving points, in
    ITK's x, y, z LPS space; the result maps the same points in z, y, x order. Centres of
    rotation (fixed parameters) are honoured (``offset = t + c − A c``). A
    ``CompositeTransform`` applies its last-added transform first, so it becomes a
    :class:`Sequence` of its transforms in reverse order. Linear types (affine, Euler,
    versor, similarity, scale, translation, …) become an :class:`Affine`; a
    ``DisplacementFieldTransform`` becomes an in-memory :class:`DisplacementField` (mm).

    Raises
    ------
    InputNotFoundError
        No such file.
    TransformError
        Not readable by ITK, not 3-D, or a transform type ngffreg does not model.
    """
    p = _existing(path, "ITK transform file")
    transforms = [_from_itk(t, p) for t in _itk_read_list(p)]
    if not transforms:
        raise TransformError(f"{p} holds no transform. Pass a file written by ITK or ANTs.")
    if len(transforms) == 1:
        return transforms[0]
    # Several top-level transforms without a composite: ITK's list order, read as a
    # composite queue (the last one applied first), as antsApplyTransforms does.
    return Sequence(transforms=tuple(reversed(transforms)))


def _to_itk(step: Transform) -> Any:
    import itk

    if step.is_linear:
        return itk_bridge.matrix_to_itk_affine(step.matrix)
    if isinstance(step, DisplacementField):
        grid = step.grid
        image = itk_bridge.array_to_vector_image(
            np.asarray(step.field.data), grid.spacing, grid.origin, grid.direction,
            dtype=np.float64)
        t = itk.DisplacementFieldTransform[itk.D, 3].New()
        t.SetDisplacementField(image)
        return t
    raise TransformError(
        f"A {type(step).__name__} cannot be written to an ITK file. Sample it onto a grid "
        "first with ngffreg.transforms.sample_field(transform, like=fixed_image).")


def write_itk_transform(transform: Transform, path: str | Path) -> Path:
    """Write ``transform`` (fixed→moving, z, y, x) as an ITK transform file.

    A linear transform is written as one ``AffineTransform_double_3_3`` (centre 0) in
    x, y, z order to ``.mat``, ``.txt``, ``.tfm`` or ``.h5``. A sequence holding
    displacement fields is written as an ITK ``CompositeTransform`` to ``.h5`` only
    (its transforms added last-applied first, so ITK applies them in our order); fields
    are computed into memory. A thin-plate spline must be sampled to a field first.
    """
    p = Path(path).expanduser()
    suffix = _suffix(p)
    if suffix not in ITK_TRANSFORM_SUFFIXES:
        raise InputError(f"Cannot tell the ITK transform format of {p}; name it "
                         f"with one of {', '.join(ITK_TRANSFORM_SUFFIXES)}.")
    import itk

    steps = _steps(transform)
    if len(steps) == 1 and steps[0].is_linear:
        items = [_to_itk(steps[0])]
    else:
        if suffix not in (".h5", ".hdf5"):
            raise TransformError(
                f"{p.name}: a {suffix} file holds one linear transform; this transform has "
                f"{len(steps)} steps including a displacement field. Write it to a .h5 file, "
                "or with write_ants_transforms.")
        composite = itk.CompositeTransform[itk.D, 3].New()
        for step in reversed(steps):
            composite.AddTransform(_to_itk(step))
        items = [composite]
    p.parent.mkdir(parents=True, exist_ok=True)
    itk.transformwrite(items, str(p))
    return p


# ---------------------------------------------------------------------------
# displacement-field images
# ---------------------------------------------------------------------------
def _field_header(path: Path) -> tuple[int, int]:
    from ..itk_bridge import read_image_io

    io = read_image_io(path, TransformError)
    return int(io.GetNumberOfDimensions()), int(io.GetNumberOfComponents())


def read_displacement_field(path: str | Path) -> DisplacementField:
    """Read an ITK / ANTs displacement-field image (e.g. ANTs' ``1Warp.nii.gz``), lazily.

    Convention: each pixel holds the physical displacement ``d`` (x, y, z components, ITK
    LPS space, in the file's length unit, mm for NIfTI) at that pixel's physical position,
    and the field maps ``p → p + d(p)`` (fixed→moving for ANTs' forward warp). The grid
    keeps the file's spacing, origin and direction; the components are reordered to
    z, y, x. The pixels are read only when the field is evaluated; ITK reads such a file
    whole, so each evaluation reads it again: call ``.compute()`` on the result to keep
    it in memory when many batches of points go through it.

    Raises
    ------
    TransformError
        The image is not 3-D, or its pixels do not hold exactly 3 components.
    """
    from ..io.read import open_image

    p = _existing(path, "displacement-field image")
    ndim, components = _field_header(p)
    if components != 3:
        raise TransformError(
            f"{p} has {components} component(s) per pixel; a 3-D displacement field needs 3 "
            "(x, y, z). Pass the warp image written by ANTs or ITK (e.g. …1Warp.nii.gz).")
    if ndim != 3:
        raise TransformError(f"{p} is a {ndim}-D image; a displacement field must be a 3-D "
                             "vector image. Pass the 3-D warp written by ANTs or ITK.")
    image = open_image(p, name="displacement")
    field = itk_bridge.vectors_from_itk(image).assign_coords(c=[0, 1, 2])
    return DisplacementField(field=field, name=p.name)


def write_displacement_field(field: DisplacementField, path: str | Path, *,
                             dtype: Any = np.float32) -> Path:
    """Write ``field`` as an ITK / ANTs displacement-field image (``.nii.gz``, ``.nrrd``,
    ``.mha``): an ``Image[Vector[float, 3], 3]`` with x, y, z components on the field's
    grid (direction included), which ``ants.apply_transforms`` accepts as a warp.

    The field is computed into memory to write it (ITK writes whole images).
    """
    if not isinstance(field, DisplacementField):
        raise TransformError(f"Expected a DisplacementField; got {type(field).__name__}. "
                             "Sample other transforms with ngffreg.transforms.sample_field.")
    p = Path(path).expanduser()
    if _suffix(p) not in FIELD_SUFFIXES:
        raise InputError(f"Cannot tell the image format of {p}; name it with one of "
                         f"{', '.join(FIELD_SUFFIXES)}.")
    import itk

    grid = field.grid
    data = field.field.data
    data = np.asarray(data.compute() if hasattr(data, "compute") else data)
    image = itk_bridge.array_to_vector_image(data, grid.spacing, grid.origin, grid.direction,
                                             dtype=dtype)
    p.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(image, str(p), compression=True)
    return p


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
# c3d / greedy matrices
# ---------------------------------------------------------------------------
def _parse_matrix_text(path: Path) -> np.ndarray | None:
    """The 4×4 matrix in a c3d text file, or None when the file is not one."""
    try:
        text = path.read_bytes().decode("ascii")
    except (UnicodeDecodeError, OSError):
        return None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        m = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError:
        return None
    return m if m.shape == (4, 4) else None


def _check_maps(maps: str) -> None:
    if maps not in MAPS:
        raise InputError(f"maps must be one of {MAPS}; got {maps!r}.")


def read_c3d_matrix(path: str | Path, *, maps: str = "fixed_to_moving") -> Affine:
    """Read a c3d / greedy 4×4 text matrix (RAS physical space) as an :class:`Affine`.

    Convention: the file holds ``M`` in RAS; in ITK's LPS space the same map is
    ``M_lps = F·M·F`` with ``F = diag(-1, -1, 1, 1)``, then reordered to z, y, x. Greedy
    writes registration results mapping fixed points to moving points
    (``maps="fixed_to_moving"``, the default; the matrix is returned as is). A matrix that
    maps moving points to fixed points (e.g. one that generated the moving image from
    the fixed one, ``moving(p) = fixed(M p)``) is read with ``maps="moving_to_fixed"``
    and inverted, so the result always maps fixed → moving.
    """
    _check_maps(maps)
    p = _existing(path, "c3d matrix file")
    m = _parse_matrix_text(p)
    if m is None:
        raise TransformError(f"{p} is not a c3d matrix: it must hold 4 lines of 4 numbers. "
                             "Pass the text matrix written by greedy or c3d_affine_tool.")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise TransformError(f"{p}: the last row of a c3d matrix must be 0 0 0 1; got "
                             f"{m[3].tolist()}. Check that the file is an affine matrix.")
    m[3] = [0.0, 0.0, 0.0, 1.0]
    affine = Affine(matrix=itk_bridge.matrix_from_itk(RAS_FLIP @ m @ RAS_FLIP), name=p.name)
    return affine if maps == "fixed_to_moving" else affine.inverse().renamed(name=p.name)


def write_c3d_matrix(affine: Transform, path: str | Path, *,
                     maps: str = "fixed_to_moving") -> Path:
    """Write a linear transform (fixed→moving, z, y, x) as a c3d / greedy RAS 4×4 text
    matrix (``M = F·M_lps·F``); ``maps="moving_to_fixed"`` writes its inverse instead."""
    _check_maps(maps)
    if not affine.is_linear:
        raise TransformError(f"A c3d matrix holds a linear transform; got a "
                             f"{type(affine).__name__}. Write it with write_ants_transforms.")
    m = affine.matrix if maps == "fixed_to_moving" else np.linalg.inv(affine.matrix)
    ras = RAS_FLIP @ itk_bridge.matrix_to_itk(m) @ RAS_FLIP
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in ras))
    return p


# ---------------------------------------------------------------------------
# BigWarp landmarks
# ---------------------------------------------------------------------------
def _landmark_row(row: list[str], n: int, path: Path) -> tuple[bool, np.ndarray] | None:
    cells = [c.strip() for c in row]
    if not any(cells):
        return None
    if len(cells) in (6, 7):
        raise TransformError(
            f"{path} line {n}: {len(cells)} columns, a 2-D BigWarp landmark file; ngffreg "
            "needs 3-D landmarks (name, active, moving x y z, fixed x y z). Place the "
            "landmarks in BigWarp on the 3-D volumes.")
    if len(cells) not in (8, 9):
        raise TransformError(
            f"{path} line {n}: {len(cells)} columns; a 3-D BigWarp landmark row has 8 (name, "
            "active, moving x y z, fixed x y z). Export the landmarks from BigWarp "
            "(File > Export landmarks).")
    active = cells[1].lower()
    if active not in ("true", "false"):
        raise TransformError(f"{path} line {n}: the active column holds {cells[1]!r}, not "
                             "true/false. Export the landmarks from BigWarp again.")
    try:
        values = np.array([float(v) for v in cells[-6:]], dtype=np.float64)
    except ValueError as exc:
        raise TransformError(f"{path} line {n}: a coordinate is not a number ({exc}). Fix the "
                             "row or export the landmarks from BigWarp again.") from exc
    return active == "true", values


def read_bigwarp_landmarks(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a BigWarp landmark CSV; returns ``(fixed_zyx, moving_zyx)``, each ``(N, 3)``.

    Format, as BigWarp's ``LandmarkTableModel.save`` writes it (checked in its source,
    saalfeldlab/bigwarp): no header; one quoted row per landmark,
    ``"Pt-0","true", mx, my, mz, fx, fy, fz`` -- the name, whether it is active, the
    moving-image point, then the fixed ("target") point, in physical x, y, z (the
    images' calibrated units). Newer BigWarp versions may add an integer id column after
    ``active`` (9 columns); it is accepted. Inactive rows are skipped. BigWarp itself
    renders the moving image with the thin-plate spline fitted from the target
    (fixed) points to the moving points, i.e. the fixed→moving map.
    """
    p = _existing(path, "BigWarp landmark file")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TransformError(f"{p} is not a readable CSV file ({exc}). Pass the landmark file "
                             "exported by BigWarp.") from exc
    fixed, moving = [], []
    for n, row in enumerate(rows, start=1):
        parsed = _landmark_row(row, n, p)
        if parsed is None or not parsed[0]:
            continue
        values = parsed[1]
        if not np.all(np.isfinite(values)):
            raise TransformError(f"{p} line {n}: an active landmark without both points. "
                                 "Complete or deactivate it in BigWarp.")
        moving.append(values[:3][::-1])
        fixed.append(values[3:][::-1])
    if not fixed:
        raise TransformError(f"{p} holds no active landmark. Place landmark pairs in BigWarp "
                             "and export them.")
    return np.array(fixed), np.array(moving)


def fit_affine(source_zyx: Any, target_zyx: Any) -> Affine:
    """The least-squares affine mapping ``source`` points onto ``target`` points."""
    src = as_points(source_zyx, "source landmarks")
    dst = as_points(target_zyx, "target landmarks")
    if len(src) != len(dst):
        raise TransformError(f"{len(src)} source but {len(dst)} target landmarks; they must "
                             "pair up.")
    design = np.hstack([src, np.ones((len(src), 1))])
    if len(src) < 4 or np.linalg.matrix_rank(design) < 4:
        raise TransformError(
            f"An affine needs at least 4 landmark pairs not all in one plane; got {len(src)}. "
            "Add landmarks spread through the volume.")
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return Affine(matrix=np.vstack([solution.T, [0.0, 0.0, 0.0, 1.0]]))


def bigwarp_transform(path: str | Path, kind: str = "affine") -> Transform:
    """The fixed→moving transform given by a BigWarp landmark file.

    ``kind="affine"``: the least-squares affine mapping the fixed points onto the moving
    points; ``kind="tps"``: ``ThinPlateSpline(source=fixed, target=moving)``, exact at the
    landmarks (BigWarp's own transform). See :func:`read_bigwarp_landmarks`.
    """
    fixed, moving = read_bigwarp_landmarks(path)
    name = Path(path).name
    if kind == "affine":
        return fit_affine(fixed, moving).renamed(name=name)
    if kind == "tps":
        return ThinPlateSpline(source=fixed, target=moving, name=name)
    raise InputError(f"kind must be 'affine' or 'tps'; got {kind!r}.")


def write_bigwarp_landmarks(path: str | Path, fixed_zyx: Any, moving_zyx: Any) -> Path:
    """Write landmark pairs (z, y, x) as a BigWarp CSV (moving point first, then the fixed
    point, each in x, y, z; all rows active; see :func:`read_bigwarp_landmarks`)."""
    fixed = as_points(fixed_zyx, "fixed landmarks")
    moving = as_points(moving_zyx, "moving landmarks")
    if len(fixed) != len(moving):
        raise TransformError(f"{len(fixed)} fixed but {len(moving)} moving landmarks; they "
                             "must pair up.")
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i, (f, m) in enumerate(zip(fixed, moving, strict=True)):
            writer.writerow([f"Pt-{i}", "true", *(repr(float(v)) for v in m[::-1]),
                             *(repr(float(v)) for v in f[::-1])])
    return p


# ---------------------------------------------------------------------------
# CLI entry
# ---------------------------------------------------------------------------
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

