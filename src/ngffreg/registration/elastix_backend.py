"""ITK-elastix registration: the second backend (rigid, affine, B-spline).

:func:`run_elastix` runs a list of transform kinds (``"translation"``, ``"rigid"``,
``"similarity"``, ``"affine"``, ``"bspline"``) in sequence in one elastix call; each stage
starts from the previous ones. Parameter maps come from elastix's defaults
(``itk.ParameterObject.GetDefaultParameterMap``: adaptive stochastic gradient descent,
random-coordinate sampling, smoothing pyramid), with the schedule set by ``accuracy``:

========  ===========  ==========  ===============  ===============================
accuracy  resolutions  iterations  spatial samples  B-spline grid spacing schedule
========  ===========  ==========  ===============  ===============================
low       3            250         2048             2, 1.41, 1 × ``grid_spacing``
medium    3            500         2048             2, 1.41, 1 × ``grid_spacing``
high      4            1000        4096             2.83, 2, 1.41, 1 × ``grid_spacing``
========  ===========  ==========  ===============  ===============================

(iterations per resolution, the same for every stage; resolutions too coarse for the image
— fewer than :data:`MIN_LEVEL_VOXELS` voxels along its smallest axis — are dropped). The
B-spline stage adds elastix's bending-energy penalty (weight
:data:`BENDING_ENERGY_WEIGHT`) to the similarity metric; its final control-point spacing is
``grid_spacing`` (physical units), by default :data:`DEFAULT_GRID_VOXELS` fixed voxels.

Images go to elastix with their full physical grid (spacing, origin, direction, through
:mod:`ngffreg.itk_bridge`), on lengths multiplied by
:func:`~ngffreg.itk_bridge.ants_length_scale` as for ANTs, and the results come back in the
images' own space and unit as fixed → moving transforms: an
:class:`~ngffreg.transforms.linear.Affine` for linear kinds; with a B-spline stage a
``Sequence[DisplacementField, Affine]`` (points go through the field first), the field
sampled on the fixed grid and exact there (elastix composes its stages as
``T(p) = B(A(p))``; the field holds ``A⁻¹(B(A(p))) − p``), the affine alone outside it.

elastix is not thread-safe: run it in one thread of a process (ngffreg's block runner uses
processes). It logs nothing to the console here and writes its files into a temporary
folder only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .. import itk_bridge
from ..errors import InputError
from ..image import Grid, to_units, units
from ..transforms import Affine, DisplacementField, Sequence, Transform
from .backend import check_choice, in_memory, unscale

KINDS = ("translation", "rigid", "similarity", "affine", "bspline")
ACCURACIES = ("low", "medium", "high")
METRICS = ("AdvancedMattesMutualInformation", "AdvancedNormalizedCorrelation")

#: The schedule per accuracy (see the module docstring).
ELASTIX_SCHEDULES: dict[str, dict[str, int]] = {
    "low": {"resolutions": 3, "iterations": 250, "samples": 2048},
    "medium": {"resolutions": 3, "iterations": 500, "samples": 2048},
    "high": {"resolutions": 4, "iterations": 1000, "samples": 4096},
}
#: Fewest voxels along the smallest axis at the coarsest resolution kept.
MIN_LEVEL_VOXELS = 12
#: Default final B-spline control-point spacing, in fixed voxels.
DEFAULT_GRID_VOXELS = 8
#: Weight of elastix's ``TransformBendingEnergyPenalty`` beside the similarity metric.
BENDING_ENERGY_WEIGHT = 1.0

_DEFAULT_MAP = {"translation": "translation", "rigid": "rigid", "similarity": "rigid",
                "affine": "affine", "bspline": "bspline"}


@dataclass
class ElastixResult:
    """A registration's fixed→moving ``transform`` (in the images' own physical space and
    unit) and elastix's transform parameter maps (in elastix's x, y, z order and on the
    scaled lengths it ran on: for inspection only)."""

    transform: Transform
    parameter_maps: list[dict[str, tuple[str, ...]]] = field(default_factory=list)


def resolutions(accuracy: str, shape: Seq[int]) -> int:
    """The number of resolutions for ``accuracy`` on an image of ``shape``."""
    n = ELASTIX_SCHEDULES[check_choice("accuracy", accuracy, ACCURACIES)]["resolutions"]
    while n > 1 and min(shape) / 2 ** (n - 1) < MIN_LEVEL_VOXELS:
        n -= 1
    return n


def parameter_maps(kinds: Seq[str], accuracy: str = "medium", *, shape: Seq[int],
                   grid_spacing_xyz: Seq[float] | None = None,
                   metric: str = "AdvancedMattesMutualInformation",
                   random_seed: int | None = 1, masked: bool = False,
                   iterations: int | None = None) -> list[dict[str, list[str]]]:
    """elastix parameter maps for ``kinds`` (run in that order) at ``accuracy``.

    ``grid_spacing_xyz``: the B-spline's final control-point spacing, x, y, z (physical
    units as elastix sees them); needed when ``kinds`` holds ``"bspline"``. ``iterations``
    (per resolution) overrides the schedule's.
    """
    import itk

    if not kinds:
        raise InputError("run_elastix needs at least one transform kind.")
    for kind in kinds:
        check_choice("transform kind", kind, KINDS)
    check_choice("metric", metric, METRICS)
    schedule = ELASTIX_SCHEDULES[check_choice("accuracy", accuracy, ACCURACIES)]
    n = resolutions(accuracy, shape)
    maps = []
    for i, kind in enumerate(kinds):
        pm = {k: list(v) for k, v in
              dict(itk.ParameterObject.GetDefaultParameterMap(_DEFAULT_MAP[kind], 3)).items()}
        pm["NumberOfResolutions"] = [str(n)]
        pm["MaximumNumberOfIterations"] = [str(int(iterations or schedule["iterations"]))]
        pm["NumberOfSpatialSamples"] = [str(schedule["samples"])]
        pm["WriteResultImage"] = ["false"]
        pm["ResultImageFormat"] = ["nii"]
        if random_seed is not None:
            pm["RandomSeed"] = [str(int(random_seed))]
        if masked:
            pm["ErodeMask"] = ["false"]
            pm["ImageSampler"] = ["RandomSparseMask"]
        if kind == "similarity":
            pm["Transform"] = ["SimilarityTransform"]
        if kind in ("translation", "rigid", "similarity", "affine"):
            pm["Metric"] = [metric]
            # the first stage starts from the images' centres of mass (as ANTs does); later
            # ones from the stages before
            pm["AutomaticTransformInitialization"] = ["true" if i == 0 else "false"]
            pm["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
        if kind == "bspline":
            if grid_spacing_xyz is None:
                raise InputError("A B-spline stage needs a grid spacing.")
            pm["Metric"] = [metric, "TransformBendingEnergyPenalty"]
            pm["Metric0Weight"] = ["1.0"]
            pm["Metric1Weight"] = [repr(float(BENDING_ENERGY_WEIGHT))]
            pm["FinalGridSpacingInPhysicalUnits"] = [repr(float(v)) for v in grid_spacing_xyz]
            pm["GridSpacingSchedule"] = [repr(float(2 ** ((n - 1 - j) / 2))) for j in range(n)]
        maps.append(pm)
    return maps


def _image(image: xr.DataArray, k: float, dtype: Any = np.float32) -> Any:
    grid = Grid.of(image)
    return itk_bridge.to_itk(in_memory(image) if dtype == np.float32
                             else np.asarray(image.values), grid.spacing, grid.origin,
                             grid.direction, k, dtype)


def _mask(mask: xr.DataArray | None, like: xr.DataArray, k: float) -> Any:
    """An elastix mask (unsigned char, 1 where ``mask`` > 0.5) on ``like``'s grid."""
    if mask is None:
        return None
    a, b = Grid.of(mask), Grid.of(like)
    if a.shape != b.shape or not (np.allclose(a.spacing, b.spacing)
                                  and np.allclose(a.origin, b.origin)
                                  and np.allclose(a.direction, b.direction)):
        from ..transforms import Identity
        from ..warp import warp

        mask = warp(mask, Identity(), like=like, interpolator="nearestNeighbor")
    return _image(mask.copy(data=(np.asarray(mask.values) > 0.5).astype(np.uint8)), k, np.uint8)


def _parameter_object(maps: Seq[dict[str, Any]]) -> Any:
    import itk

    po = itk.ParameterObject.New()
    for pm in maps:
        po.AddParameterMap({k: tuple(str(v) for v in vals) for k, vals in pm.items()})
    return po


def _as_dicts(po: Any) -> list[dict[str, tuple[str, ...]]]:
    return [{k: tuple(v) for k, v in dict(po.GetParameterMap(i)).items()}
            for i in range(po.GetNumberOfParameterMaps())]


def transformix_points(maps: Seq[dict[str, Any]], like: Any, tmp: str) -> np.ndarray:
    """The deformation field ``(3, z, y, x)`` (z, y, x vectors) of the transform chain
    ``maps`` (applied first to last) on the grid of the last map (the fixed image), through
    transformix; ``like`` is an ITK image of the moving pixel type."""
    import itk

    chain = []
    for pm in maps:  # the chain is the list order; no files are looked up
        pm = dict(pm)
        pm["InitialTransformParameterFileName"] = ("NoInitialTransform",)
        chain.append(pm)
    tf = itk.TransformixFilter[type(like)].New(moving_image=like,
                                               transform_parameter_object=_parameter_object(
                                                   chain))
    tf.SetComputeDeformationField(True)
    tf.SetLogToConsole(False)
    tf.SetLogToFile(False)
    tf.SetOutputDirectory(tmp)
    tf.Update()
    return itk_bridge.vector_image_to_array(tf.GetOutputDeformationField())


def run_elastix(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    kinds: Seq[str],
    *,
    accuracy: str = "medium",
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initial_transform: Transform | None = None,
    grid_spacing: Any = None,
    metric: str = "AdvancedMattesMutualInformation",
    random_seed: int | None = 1,
    number_of_threads: int | None = None,
    iterations: int | None = None,
) -> ElastixResult:
    """Register ``moving`` to ``fixed`` (3-D, dims z, y, x, small enough to load) with the
    elastix stages ``kinds`` (see the module docstring).

    ``initial_transform``: a linear fixed → moving transform the first stage starts from
    (else elastix centres the images); ``grid_spacing``: the B-spline's final control-point
    spacing in the fixed image's unit, a number or z, y, x (default
    :data:`DEFAULT_GRID_VOXELS` fixed voxels); ``metric``: ``AdvancedMattesMutualInformation``
    or ``AdvancedNormalizedCorrelation``; masks: voxels > 0.5 count (resampled onto their
    image's grid); ``number_of_threads``: elastix's threads (default: ITK's);
    ``iterations``: per resolution, overriding the schedule's.

    The returned transform includes ``initial_transform`` (it maps fixed points all the way
    to moving points).
    """
    import itk

    kinds = [str(kind).lower() for kind in kinds]
    unit = units(fixed)
    if units(moving) != unit:
        moving = to_units(moving, unit)
    fgrid = Grid.of(fixed)
    k = itk_bridge.ants_length_scale(np.minimum(fgrid.spacing, Grid.of(moving).spacing))
    if grid_spacing is None:
        grid_zyx = fgrid.spacing * DEFAULT_GRID_VOXELS
    else:
        grid_zyx = np.broadcast_to(np.asarray(grid_spacing, dtype=np.float64), (3,))
        if not np.all(grid_zyx > 0):
            raise InputError(f"grid_spacing must be positive; got {grid_spacing}.")
    shape = np.minimum(fixed.shape[-3:], moving.shape[-3:])
    maps = parameter_maps(kinds, accuracy, shape=shape,
                          grid_spacing_xyz=itk_bridge.points_to_itk(grid_zyx * k),
                          metric=metric, random_seed=random_seed,
                          masked=fixed_mask is not None, iterations=iterations)
    if initial_transform is not None:
        m = np.array(initial_transform.to_affine().matrix, dtype=np.float64)
        m[:3, 3] *= k
        maps[0]["AutomaticTransformInitialization"] = ["false"]
    f_img, m_img = _image(fixed, k), _image(moving, k)
    f_mask, m_mask = _mask(fixed_mask, fixed, k), _mask(moving_mask, moving, k)
    with tempfile.TemporaryDirectory(prefix="ngffreg-elastix-") as tmp:
        reg = itk.ElastixRegistrationMethod[type(f_img), type(m_img)].New(
            fixed_image=f_img, moving_image=m_img, parameter_object=_parameter_object(maps))
        if f_mask is not None:
            reg.SetFixedMask(f_mask)
        if m_mask is not None:
            reg.SetMovingMask(m_mask)
        if initial_transform is not None:
            init = {**_geometry_entries(f_img), **itk_bridge.matrix_to_elastix_affine(m),
                    "InitialTransformParameterFileName": ["NoInitialTransform"],
                    "HowToCombineTransforms": ["Compose"],
                    "FixedImageDimension": ["3"], "MovingImageDimension": ["3"]}
            reg.SetInitialTransformParameterObject(_parameter_object([init]))
        reg.SetLogToConsole(False)
        reg.SetLogToFile(False)
        reg.SetOutputDirectory(tmp)
        if number_of_threads is not None:
            reg.SetNumberOfThreads(int(number_of_threads))
        reg.Update()
        result = _as_dicts(reg.GetTransformParameterObject())
        linear = np.eye(4)
        n_linear = 0
        for pm in result:  # elastix's chain: the first map is applied to points first
            if pm["Transform"][0] not in itk_bridge.ELASTIX_LINEAR:
                break
            linear = itk_bridge.elastix_linear_to_matrix(pm) @ linear
            n_linear += 1
        if n_linear == len(result):
            transform: Transform = Affine(matrix=linear)
        else:
            if any(pm["Transform"][0] in itk_bridge.ELASTIX_LINEAR
                   for pm in result[n_linear + 1:]):
                raise InputError("A linear stage after the B-spline is not supported; put "
                                 "the B-spline last.")
            disp = transformix_points(result, m_img, tmp)
            # points on the (scaled) fixed grid, and where the whole chain sends them
            sgrid = Grid.from_origin(fgrid.shape, fgrid.spacing * k, fgrid.origin * k,
                                     fgrid.direction)
            pts = sgrid.points()
            total = pts + disp.reshape(3, -1).T
            lin = Affine(matrix=linear)
            residual = (lin.inverse().apply(total) - pts).T.reshape(disp.shape)
            fld = DisplacementField.from_array(
                residual.astype(np.float32), spacing=sgrid.spacing, origin=sgrid.origin,
                direction=sgrid.direction, unit=unit)
            transform = Sequence(transforms=(fld, lin)) if n_linear else Sequence(
                transforms=(fld,))
    return ElastixResult(unscale(transform, k, unit), result)


def _geometry_entries(image: Any) -> dict[str, list[str]]:
    """The fixed-image geometry entries of an elastix transform parameter map."""
    import itk

    size = image.GetLargestPossibleRegion().GetSize()
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()))
    return {"Size": [str(int(size[i])) for i in range(3)], "Index": ["0", "0", "0"],
            "Spacing": [repr(float(image.GetSpacing()[i])) for i in range(3)],
            "Origin": [repr(float(image.GetOrigin()[i])) for i in range(3)],
            "Direction": [repr(float(v)) for v in direction.T.ravel()],
            "UseDirectionCosines": ["true"]}
