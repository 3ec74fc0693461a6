"""The one place where ngffreg's z, y, x order meets ITK's and ANTs' x, y, z order.

Both sides use the same physical space (ITK's LPS space, in the units of the image);
only the order of the axes differs. Everything here is a pure reordering:

- points: ``(N, 3)`` arrays, column order reversed;
- 4×4 homogeneous matrices: ``P · M · P`` with ``P`` the reversal of the first three
  axes (``P`` is its own inverse, so the same function converts both ways);
- displacement vectors: the component axis reversed;
- image geometry: spacing and origin reversed, direction ``P₃ · D · P₃`` (ITK's
  direction matrix has one column per index axis, x, y, z; ours one per z, y, x).

It also turns ITK transform and image objects into arrays in z, y, x order and back
(``itk`` is imported only by the functions that need it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError, TransformError

#: Reverses the three spatial axes of a homogeneous 4-vector and keeps the 1.
P4 = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: Reverses the three spatial axes of a 3-vector.
P3 = P4[:3, :3].copy()


# ---------------------------------------------------------------------------
# points, matrices, vectors
# ---------------------------------------------------------------------------
def read_image_io(path: Any, error: type[InputError] = InputError) -> Any:
    """An ITK ImageIO with the header of ``path`` read (no pixels); ``error`` is raised,
    with ITK's reason, when the file is not an image ITK can read."""
    import itk

    try:
        io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    except Exception as exc:  # itk raises RuntimeError subclasses with C++ text
        raise error(f"ITK cannot read {path}: {exc}") from exc
    if io is None:
        raise error(f"ITK cannot read {path}: the file is not a readable image.")
    io.SetFileName(str(path))
    try:
        io.ReadImageInformation()
    except Exception as exc:
        raise error(f"ITK cannot read the header of {path}: {exc}") from exc
    return io


def points_to_itk(points_zyx: Any) -> np.ndarray:
    """``(N, 3)`` z, y, x points as x, y, z points (a new float64 array)."""
    return np.ascontiguousarray(np.asarray(points_zyx, dtype=np.float64)[..., ::-1])


def points_from_itk(points_xyz: Any) -> np.ndarray:
    """``(N, 3)`` x, y, z points (ITK / ANTs) as z, y, x points."""
    return np.ascontiguousarray(np.asarray(points_xyz, dtype=np.float64)[..., ::-1])


def matrix_to_itk(matrix_zyx: Any) -> np.ndarray:
    """A 4×4 homogeneous z, y, x matrix as the x, y, z matrix of the same map (``P·M·P``)."""
    m = np.asarray(matrix_zyx, dtype=np.float64)
    if m.shape != (4, 4):
        raise TransformError(f"A 4×4 homogeneous matrix is needed; got shape {m.shape}.")
    return P4 @ m @ P4


def matrix_from_itk(matrix_xyz: Any) -> np.ndarray:
    """A 4×4 homogeneous x, y, z matrix (ITK) as the z, y, x matrix of the same map."""
    return matrix_to_itk(matrix_xyz)


def matrix_offset_to_homogeneous(linear: Any, offset: Any) -> np.ndarray:
    """``[[linear, offset], [0, 0, 0, 1]]`` (same axis order as the inputs)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(linear, dtype=np.float64).reshape(3, 3)
    m[:3, 3] = np.asarray(offset, dtype=np.float64).reshape(3)
    return m


def vectors_to_itk(components_first: Any, axis: int = 0) -> Any:
    """Reverse the vector-component ``axis`` (z, y, x → x, y, z); works on dask arrays."""
    data = components_first
    index = [slice(None)] * data.ndim
    index[axis] = slice(None, None, -1)
    return data[tuple(index)]


def vectors_from_itk(components_first: Any, axis: int = 0) -> Any:
    """Reverse the vector-component ``axis`` (x, y, z → z, y, x); works on dask arrays."""
    return vectors_to_itk(components_first, axis)


# ---------------------------------------------------------------------------
# image geometry
# ---------------------------------------------------------------------------
def geometry_from_itk(
    spacing_xyz: Any, origin_xyz: Any, direction_xyz: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK spacing, origin and direction (x, y, z; direction column j = index axis j)
    as z, y, x ``(spacing, origin, direction)``."""
    spacing = np.asarray(spacing_xyz, dtype=np.float64).reshape(3)[::-1].copy()
    origin = np.asarray(origin_xyz, dtype=np.float64).reshape(3)[::-1].copy()
    d = np.asarray(direction_xyz, dtype=np.float64).reshape(3, 3)
    return spacing, origin, P3 @ d @ P3


def geometry_to_itk(
    spacing_zyx: Any, origin_zyx: Any, direction_zyx: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z, y, x spacing, origin and direction as ITK's x, y, z ones."""
    return geometry_from_itk(spacing_zyx, origin_zyx, direction_zyx)


def image_geometry(image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(spacing, origin, direction, shape)`` of an ITK image, all in z, y, x order."""
    import itk

    spacing, origin, direction = geometry_from_itk(
        [image.GetSpacing()[i] for i in range(3)], [image.GetOrigin()[i] for i in range(3)],
        itk.array_from_matrix(image.GetDirection()))
    size = image.GetLargestPossibleRegion().GetSize()
    return spacing, origin, direction, tuple(int(size[i]) for i in range(3))[::-1]


def set_image_geometry(image: Any, spacing_zyx: Any, origin_zyx: Any, direction_zyx: Any) -> None:
    """Give an ITK image the z, y, x ``spacing``, ``origin`` and ``direction``."""
    import itk

    spacing, origin, direction = geometry_to_itk(spacing_zyx, origin_zyx, direction_zyx)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))


# ---------------------------------------------------------------------------
# vector (displacement) images
# ---------------------------------------------------------------------------
def vector_image_to_array(image: Any) -> np.ndarray:
    """A 3-D ITK vector image (components x, y, z) as a ``(3, z, y, x)`` z, y, x array."""
    import itk

    arr = np.array(itk.array_view_from_image(image), copy=True)  # (z, y, x, 3) as x, y, z
    return np.ascontiguousarray(vectors_from_itk(np.moveaxis(arr, -1, 0)))


def array_to_vector_image(
    data_zyx: np.ndarray, spacing_zyx: Any, origin_zyx: Any, direction_zyx: Any,
    dtype: Any = np.float32,
) -> Any:
    """A ``(3, z, y, x)`` array of z, y, x vectors as an ITK ``Image[Vector[T, 3], 3]``
    (components x, y, z), the pixel type ITK's and ANTs' displacement fields use."""
    import itk

    dtype = np.dtype(dtype)
    component = {np.dtype(np.float32): itk.F, np.dtype(np.float64): itk.D}[dtype]
    arr = np.ascontiguousarray(np.moveaxis(vectors_to_itk(np.asarray(data_zyx)), 0, -1),
                               dtype=dtype)
    image = itk.Image[itk.Vector[component, 3], 3].New()
    image.SetRegions([int(n) for n in arr.shape[:3][::-1]])
    image.Allocate()
    itk.array_view_from_image(image)[...] = arr
    set_image_geometry(image, spacing_zyx, origin_zyx, direction_zyx)
    return image


# ---------------------------------------------------------------------------
# linear transforms
# ---------------------------------------------------------------------------
def linear_itk_transform_to_matrix(transform: Any) -> np.ndarray:
    """The 4×4 z, y, x matrix of a linear ITK transform.

    ``MatrixOffsetTransformBase`` subclasses (affine, Euler, versor, similarity, scale)
    give ``GetMatrix`` and ``GetOffset``; ITK has already folded the centre into the
    offset (``offset = t + c − A c``). Other linear transforms (``TranslationTransform``)
    are probed at the origin and the three unit points, which is exact for a linear map.
    """
    import itk

    if hasattr(transform, "GetMatrix") and hasattr(transform, "GetOffset"):
        linear = itk.array_from_matrix(transform.GetMatrix()).astype(np.float64)
        offset = np.array([transform.GetOffset()[i] for i in range(3)], dtype=np.float64)
        return matrix_from_itk(matrix_offset_to_homogeneous(linear, offset))
    base = np.asarray(transform.TransformPoint([0.0, 0.0, 0.0]), dtype=np.float64)
    linear = np.stack(
        [np.asarray(transform.TransformPoint(list(e)), dtype=np.float64) - base
         for e in np.eye(3)], axis=1)
    return matrix_from_itk(matrix_offset_to_homogeneous(linear, base))


def matrix_to_itk_affine(matrix_zyx: Any) -> Any:
    """An ITK ``AffineTransform[D, 3]`` (centre 0) for a 4×4 z, y, x matrix."""
    import itk

    m = matrix_to_itk(matrix_zyx)
    t = itk.AffineTransform[itk.D, 3].New()
    t.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(m[:3, :3])))
    t.SetTranslation([float(v) for v in m[:3, 3]])
    return t


# ---------------------------------------------------------------------------
# ANTs images
# ---------------------------------------------------------------------------
def ants_length_scale(spacing_zyx: Any) -> float:
    """The power of ten that brings the smallest voxel size into ``[0.3, 3)``.

    ANTs misbehaves on tiny physical coordinates (voxel sizes below about 1e-3, e.g.
    micrometre data in metres or millimetres); its registrations therefore run on
    coordinates multiplied by this factor, and their results are scaled back. For 1 mm
    MRI the factor is exactly 1.
    """
    smallest = float(np.min(np.asarray(spacing_zyx, dtype=np.float64)))
    return float(10.0 ** -np.round(np.log10(smallest)))


def to_ants(data_zyx: Any, spacing_zyx: Any, origin_zyx: Any, direction_zyx: Any,
            scale: float = 1.0) -> Any:
    """A float32 ANTs image of a z, y, x array with its physical grid; physical
    coordinates (spacing and origin) are multiplied by ``scale``."""
    import ants

    arr = np.asarray(data_zyx, dtype=np.float32)
    spacing, origin, direction = geometry_to_itk(
        np.asarray(spacing_zyx, dtype=np.float64) * scale,
        np.asarray(origin_zyx, dtype=np.float64) * scale, direction_zyx)
    # ANTs' numpy view is indexed [x, y, z]
    return ants.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0)),
                           origin=[float(v) for v in origin],
                           spacing=[float(v) for v in spacing],
                           direction=np.ascontiguousarray(direction))


def from_ants(image: Any) -> np.ndarray:
    """The z, y, x array of an ANTs image (its grid is the one it was made with)."""
    return np.ascontiguousarray(image.numpy().transpose(2, 1, 0))


# ---------------------------------------------------------------------------
# scalar images and elastix parameter maps
# ---------------------------------------------------------------------------
def to_itk(data_zyx: Any, spacing_zyx: Any, origin_zyx: Any, direction_zyx: Any,
           scale: float = 1.0, dtype: Any = np.float32) -> Any:
    """A 3-D ITK image (a copy, pixel type ``dtype``) of a z, y, x array with its physical
    grid; physical coordinates (spacing and origin) are multiplied by ``scale``."""
    import itk

    arr = np.ascontiguousarray(np.asarray(data_zyx), dtype=dtype)
    image = itk.image_from_array(arr)  # ITK's index x, y, z is the array's last axis first
    set_image_geometry(image, np.asarray(spacing_zyx, dtype=np.float64) * scale,
                       np.asarray(origin_zyx, dtype=np.float64) * scale, direction_zyx)
    return image


def _itk_parameters(values: Any) -> Any:
    import itk

    values = [float(v) for v in values]
    p = itk.OptimizerParameters[itk.D](len(values))
    for i, v in enumerate(values):
        p[i] = v
    return p


#: elastix linear transform names and their parameter counts in 3-D.
ELASTIX_LINEAR = {"TranslationTransform": 3, "EulerTransform": 6, "SimilarityTransform": 7,
                  "AffineTransform": 12}


def elastix_linear_to_matrix(parameter_map: Any) -> np.ndarray:
    """The 4×4 z, y, x matrix of a linear elastix transform parameter map.

    Like ANTs, elastix's ``TransformParameters`` map fixed-space points to moving-space
    points. Layouts (all x, y, z), about ``CenterOfRotationPoint`` ``c``:
    ``TranslationTransform`` (tx, ty, tz); ``EulerTransform`` (θx, θy, θz, tx, ty, tz; ITK's
    Euler3DTransform, rotation order from ``ComputeZYX``); ``SimilarityTransform`` (versor
    3, translation 3, scale; ITK's Similarity3DTransform); ``AffineTransform`` (the 3×3
    matrix row by row, then the translation). The point map is ``A (p − c) + c + t``.
    """
    import itk

    pm = {k: tuple(v) for k, v in dict(parameter_map).items()}
    kind = pm.get("Transform", ("",))[0]
    if kind not in ELASTIX_LINEAR:
        raise TransformError(f"Not a linear elastix transform: {kind!r}.")
    params = np.array([float(v) for v in pm.get("TransformParameters", ())], dtype=np.float64)
    if params.size != ELASTIX_LINEAR[kind]:
        raise TransformError(f"{kind} needs {ELASTIX_LINEAR[kind]} parameters; "
                             f"got {params.size}.")
    if kind == "TranslationTransform":
        return matrix_from_itk(matrix_offset_to_homogeneous(np.eye(3), params))
    center = [float(v) for v in pm.get("CenterOfRotationPoint", ("0", "0", "0"))]
    if kind == "EulerTransform":
        t = itk.Euler3DTransform[itk.D].New()
        t.SetComputeZYX(pm.get("ComputeZYX", ("false",))[0].lower() == "true")
    elif kind == "SimilarityTransform":
        t = itk.Similarity3DTransform[itk.D].New()
    else:
        t = itk.AffineTransform[itk.D, 3].New()
    t.SetCenter(center)
    t.SetParameters(_itk_parameters(params))
    return linear_itk_transform_to_matrix(t)


def matrix_to_elastix_affine(matrix_zyx: Any) -> dict[str, list[str]]:
    """The ``Transform``, ``TransformParameters`` and ``CenterOfRotationPoint`` entries of an
    elastix ``AffineTransform`` parameter map for a 4×4 z, y, x matrix (centre 0)."""
    m = matrix_to_itk(matrix_zyx)
    values = [*m[:3, :3].ravel(), *m[:3, 3]]
    return {"Transform": ["AffineTransform"], "NumberOfParameters": ["12"],
            "TransformParameters": [repr(float(v)) for v in values],
            "CenterOfRotationPoint": ["0", "0", "0"]}
