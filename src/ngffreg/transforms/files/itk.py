"""ITK transform files (``.mat``, ``.txt`` / ``.tfm``, composite ``.h5``) and ITK / ANTs
displacement-field images (``.nii.gz``, ``.nrrd``, ``.mha``), read and written; the
conventions are listed in :mod:`ngffreg.transforms.files`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ... import itk_bridge
from ...errors import InputError, InputNotFoundError, TransformError
from ..base import Transform
from ..composite import Bijection, Sequence
from ..field import DisplacementField
from ..linear import Affine

ITK_TRANSFORM_SUFFIXES = (".mat", ".txt", ".tfm", ".h5", ".hdf5")
FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

__all__ = [
    "FIELD_SUFFIXES",
    "ITK_TRANSFORM_SUFFIXES",
    "read_displacement_field",
    "read_itk_transform",
    "write_displacement_field",
    "write_itk_transform",
]


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
    from ...itk_bridge import read_image_io

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
    from ...io.read import open_image

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
