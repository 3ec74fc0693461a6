"""ANTs registration (antspyx), driven stage by stage with schedules chosen here.

ngffreg builds the ``antsRegistration`` command itself instead of calling
``ants.registration(type_of_transform=…)``: the wrapper's presets fix shrink factors and
run no full-resolution SyN iterations by default (``reg_iterations=(40, 20, 0)``), while
a block registration only pays when it iterates at the block's own resolution. The
schedules are in :data:`LINEAR_SCHEDULES` and :data:`NONLINEAR_SCHEDULES`.

Images go to ANTs with their full physical grid (spacing, origin, direction, through
:mod:`ngffreg.itk_bridge`); lengths are multiplied by
:func:`~ngffreg.itk_bridge.ants_length_scale` (ANTs misbehaves below ~1e-3 spacing) and
the results are scaled back, so what comes back is a fixed→moving transform in the
images' own physical space and unit.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .. import itk_bridge
from ..errors import InputError
from ..image import Grid, units
from ..transforms import Affine, DisplacementField, Sequence, Transform
from .backend import check_choice, in_memory, unscale

LINEAR_TYPES = ("Translation", "Rigid", "Similarity", "Affine")
NONLINEAR_TYPES = ("SyNOnly", "SyN", "Elastic")
ACCURACIES = ("low", "medium", "high")
METRICS = ("CC", "MI", "MeanSquares")

#: Iterations per level of the linear stages (shrink 8, 4, 2, 1; smoothing 3, 2, 1, 0 vox).
LINEAR_SCHEDULES = {
    "low": (500, 250, 100, 0),
    "medium": (1000, 500, 250, 0),
    "high": (1000, 500, 250, 100),
}
#: Iterations per level of a deformable stage; the last level is the image's own
#: resolution (shrink 2^(n-1) … 1, smoothing n-1 … 0 vox).
NONLINEAR_SCHEDULES = {
    "low": (40, 20, 10),
    "medium": (70, 50, 20),
    "high": (100, 70, 50, 20),
}
#: Fewest voxels along the smallest axis of a shrunken level; coarser levels are dropped.
MIN_LEVEL_VOXELS = 12


@dataclass(frozen=True)
class Stage:
    """One ``antsRegistration`` stage.

    ``transform``: an ANTs transform name (``Translation``, ``Rigid``, ``Similarity``,
    ``Affine``, ``SyN``, ``GaussianDisplacementField``); ``metric`` ``CC`` (parameter =
    radius), ``MI`` (parameter = bins) or ``MeanSquares``; ``iterations`` per level, coarse
    to fine, the last at full resolution.
    """

    transform: str
    iterations: tuple[int, ...]
    metric: str = "MI"
    metric_parameter: int = 32
    gradient_step: float = 0.1
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    sampling: float | None = 0.25

    @property
    def linear(self) -> bool:
        return self.transform in LINEAR_TYPES


def linear_stages(linear_type: str, accuracy: str = "medium") -> list[Stage]:
    """The stages of a linear registration: ``Affine`` is preceded by ``Rigid`` (as in
    ``antsRegistrationSyN.sh``), the others run alone. Mutual information, 32 bins."""
    check_choice("linear_type", linear_type, LINEAR_TYPES)
    iterations = LINEAR_SCHEDULES[check_choice("accuracy", accuracy, ACCURACIES)]
    kinds = ["Rigid", "Affine"] if linear_type == "Affine" else [linear_type]
    return [Stage(kind, iterations) for kind in kinds]


def nonlinear_stage(nonlinear_type: str, accuracy: str = "medium", *, metric: str = "CC",
                    radius: int = 2, iterations: Seq[int] | None = None) -> Stage:
    """A deformable stage: ``SyN``/``SyNOnly`` → ``SyN[0.2, 3, 0]``; ``Elastic`` → a
    Gaussian displacement field with total-field smoothing (``[0.25, 3, 1]``). Metric
    ``CC`` (neighbourhood radius ``radius``) by default, as ``antsRegistrationSyN[s]``."""
    check_choice("nonlinear_type", nonlinear_type, NONLINEAR_TYPES)
    check_choice("metric", metric, METRICS)
    schedule = NONLINEAR_SCHEDULES[check_choice("accuracy", accuracy, ACCURACIES)]
    its = tuple(int(i) for i in (iterations or schedule))
    parameter = radius if metric == "CC" else 32
    if nonlinear_type == "Elastic":
        return Stage("GaussianDisplacementField", its, metric, parameter, 0.25, 3.0, 1.0, None)
    return Stage("SyN", its, metric, parameter, 0.2, 3.0, 0.0, None)


def _levels(iterations: Seq[int], shape: Seq[int], linear: bool) -> tuple[list[int], list[int],
                                                                          list[int]]:
    """Iterations, shrink factors and smoothing sigmas, without levels too coarse for the
    image (fewer than ``MIN_LEVEL_VOXELS`` along its smallest axis)."""
    n = len(iterations)
    shrink = [8, 4, 2, 1][-n:] if linear and n <= 4 else [2 ** (n - 1 - i) for i in range(n)]
    sigmas = [3, 2, 1, 0][-n:] if linear and n <= 4 else [n - 1 - i for i in range(n)]
    keep = [i for i in range(n) if min(shape) / shrink[i] >= MIN_LEVEL_VOXELS] or [n - 1]
    return ([int(iterations[i]) for i in keep], [shrink[i] for i in keep],
            [sigmas[i] for i in keep])


def _stage_args(stage: Stage, fixed: str, moving: str, shape: Seq[int], mask: str) -> list[str]:
    its, shrink, sigmas = _levels(stage.iterations, shape, stage.linear)
    if stage.metric == "CC":
        metric = f"CC[{fixed},{moving},1,{stage.metric_parameter}]"
    elif stage.metric == "MI":
        metric = f"MI[{fixed},{moving},1,{stage.metric_parameter}"
        metric += f",Regular,{stage.sampling}]" if stage.sampling else "]"
    else:
        metric = f"MeanSquares[{fixed},{moving},1,0]"
    if stage.linear:
        transform = f"{stage.transform}[{stage.gradient_step}]"
        convergence = f"[{'x'.join(map(str, its))},1e-6,10]"
    else:
        transform = (f"{stage.transform}[{stage.gradient_step},{stage.flow_sigma},"
                     f"{stage.total_sigma}]")
        convergence = f"[{'x'.join(map(str, its))},1e-7,8]"
    return ["--transform", transform, "--metric", metric, "--convergence", convergence,
            "--shrink-factors", "x".join(map(str, shrink)),
            "--smoothing-sigmas", "x".join(map(str, sigmas)) + "vox", "--masks", mask]


@dataclass
class AntsResult:
    """A registration's fixed→moving ``transform`` and, when ANTs wrote one, its
    ``inverse`` (moving→fixed); both in the images' own physical space and unit."""

    transform: Transform
    inverse: Transform | None = None
    files: dict[str, list[str]] = field(default_factory=dict)


def _ants_image(image: xr.DataArray, scale: float) -> Any:
    grid = Grid.of(image)
    return itk_bridge.to_ants(in_memory(image), grid.spacing, grid.origin, grid.direction,
                              scale)


def read_outputs(paths: Seq[str], invert: Seq[bool] | None = None) -> Sequence:
    """ANTs' own output files (``…Warp.nii.gz``, ``…GenericAffine.mat``) read with ANTsPy,
    already loaded in this process, as a :class:`Sequence` in the order given (``invert``
    flags the linear ones to invert). The same transforms as
    :func:`ngffreg.transforms.files.read_ants_transforms`, without paying ITK's transform
    IO import (~10 s in each new worker process)."""
    import ants

    from ..itk_bridge import geometry_from_itk, matrix_from_itk, matrix_offset_to_homogeneous

    steps: list[Transform] = []
    for path, flag in zip(paths, invert or [False] * len(paths), strict=True):
        if path.endswith(".mat"):
            t = ants.read_transform(path)
            params = np.asarray(t.parameters, dtype=np.float64)
            linear = params[:9].reshape(3, 3)
            center = np.asarray(t.fixed_parameters, dtype=np.float64)
            offset = params[9:12] + center - linear @ center
            step: Transform = Affine(matrix=matrix_from_itk(
                matrix_offset_to_homogeneous(linear, offset)))
            steps.append(step.inverse() if flag else step)
            continue
        img = ants.image_read(path)
        if img.components != 3 or img.dimension != 3:
            raise RuntimeError(f"{path} is not a 3-D displacement field")
        spacing, origin, direction = geometry_from_itk(img.spacing, img.origin, img.direction)
        xyz = img.numpy()  # (x, y, z, 3): components x, y, z
        data = np.ascontiguousarray(xyz[..., ::-1].transpose(3, 2, 1, 0))
        steps.append(DisplacementField.from_array(data, spacing=spacing, origin=origin,
                                                  direction=direction, unit="millimeter"))
    return Sequence(transforms=tuple(steps))


def run_ants(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    stages: Seq[Stage],
    *,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initialize: str = "center-of-mass",
    initial_transform: Transform | None = None,
    random_seed: int | None = 1,
    inverse: bool = True,
) -> AntsResult:
    """Register ``moving`` to ``fixed`` (both 3-D, in memory or small enough to load)
    with ``stages`` run in one ``antsRegistration`` call.

    ``initialize``: ``"center-of-mass"`` (ANTs' ``[fixed, moving, 1]``), ``"geometric"``
    (image centres) or ``"identity"``; ``initial_transform`` (a linear transform, fixed →
    moving) overrides it. Returns the fixed→moving transform, ANTs' list order kept
    (``[warp, affine]``), and its inverse when ``inverse`` and the stages allow.
    """
    import ants
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    if not stages:
        raise InputError("run_ants needs at least one stage.")
    unit = units(fixed)
    if units(moving) != unit:
        from ..image import to_units

        moving = to_units(moving, unit)
    k = itk_bridge.ants_length_scale(np.minimum(Grid.of(fixed).spacing,
                                                Grid.of(moving).spacing))
    f_img, m_img = _ants_image(fixed, k), _ants_image(moving, k)
    keep = [f_img, m_img]  # the pointer strings below must outlive the call
    f_str, m_str = get_pointer_string(f_img), get_pointer_string(m_img)

    def mask_string(mask: xr.DataArray | None, like: Any) -> str:
        if mask is None:
            return "NA"
        img = _ants_image(mask.astype(np.float32), k)
        img = ants.threshold_image(img, 0.5, 1e30, 1, 0)
        keep.append(img)
        return get_pointer_string(img)

    masks = f"[{mask_string(fixed_mask, f_img)},{mask_string(moving_mask, m_img)}]"
    with tempfile.TemporaryDirectory(prefix="ngffreg-ants-") as tmp:
        prefix = os.path.join(tmp, "reg_")
        args: list[str] = ["--dimensionality", "3", "--float", "1",
                           "--collapse-output-transforms", "1"]
        if initial_transform is not None:
            from ..transforms.files import write_itk_transform

            init = initial_transform.to_affine()
            m = np.array(init.matrix, dtype=np.float64)
            m[:3, 3] *= k
            path = write_itk_transform(Affine(matrix=m), Path(tmp) / "initial.mat")
            args += ["--initial-moving-transform", str(path)]
        elif initialize in ("center-of-mass", "geometric"):
            how = 1 if initialize == "center-of-mass" else 0
            args += ["--initial-moving-transform", f"[{f_str},{m_str},{how}]"]
        elif initialize != "identity":
            raise InputError(f"Unknown initialize {initialize!r}; use center-of-mass, "
                             "geometric or identity.")
        shape = np.minimum(fixed.shape[-3:], moving.shape[-3:])
        for stage in stages:
            args += _stage_args(stage, f_str, m_str, shape, masks)
        warped = f_img.clone()
        warped_back = m_img.clone()
        keep += [warped, warped_back]
        args += ["--output", f"[{prefix},{get_pointer_string(warped)},"
                             f"{get_pointer_string(warped_back)}]"]
        if random_seed is not None:
            args += ["--random-seed", str(int(random_seed))]
        status = get_lib_fn("antsRegistration")(
            process_arguments(args))
        if status != 0:
            raise RuntimeError(f"antsRegistration failed with exit code {status}")
        affine = sorted(glob.glob(prefix + "*[0-9]GenericAffine.mat"))
        warp = sorted(glob.glob(prefix + "*[0-9]Warp.nii.gz"))
        inv_warp = sorted(glob.glob(prefix + "*[0-9]InverseWarp.nii.gz"))
        forward_files = [*warp, *affine]
        if not forward_files:
            raise RuntimeError("antsRegistration wrote no transform")
        forward = unscale(read_outputs(forward_files), k, unit)
        backward = None
        if inverse and (inv_warp or not warp):
            inverse_files = [*affine, *inv_warp]
            backward = unscale(read_outputs(
                inverse_files, invert=[True] * len(affine) + [False] * len(inv_warp)), k, unit)
    return AntsResult(forward, backward,
                      {"fwdtransforms": [Path(p).name for p in forward_files]})
