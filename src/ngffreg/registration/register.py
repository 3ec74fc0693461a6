"""The registration pipeline, end to end: coarse → blocks → blend → warp → output store.

:func:`register` is the functional core the faces (``ChunkedRegistration``, the CLI, the
``.reg`` accessor) call. Its output store (``OUT.ome.zarr``):

- the registered image: moving resampled onto the fixed grid, an OME-Zarr 0.6 pyramid;
- ``coordinateTransformations``: the fixed → moving ``registration`` transform,
  ``sequence[fine field, coarse field, affine]`` (NGFF 0.6, readable without ngffreg);
- ``transforms/``: the same for ANTs users (``global_linear_transform.mat``,
  ``global_nonlinear_warp.nii.gz``, ``fine_warp.nii.gz``; ``ants_transformlist.json``
  lists them in the order ``ants.apply_transforms`` takes);
- ``blocks/``: each block's residual field and record (what a rerun resumes from);
- ``qc/``: ``blocks.csv`` (status, correlation before/after, Jacobian range, time per
  block), ``summary.json``.

While running, everything goes to ``OUT.ome.zarr.partial/``; finished blocks found there by
a rerun with the same parameters are not registered again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..blocks import BlockPlan, plan_blocks
from ..errors import OutputError
from ..image import Grid, spacing, to_units, units
from ..qc import field_report
from ..transforms import DisplacementField, Sequence, Transform, sample_field, steps_of
from ..warp import choose_moving_level
from .blockwise import block_table, run_blocks
from .coarse import CoarseResult, coarse_register, image_levels
from .execution import STAGE_MEMORY, block_client, stage_limits
from .options import RegistrationOptions
from .reduce import blend, choose_factor
from .resolve import RunPlan, default_workers, resolve, run_params
from .run_store import RunStore
from .staging import map_fields, small_chunk_warning, store_array

#: Fine fields with more voxels than this are not exported as NIfTI for ANTs (ITK would
#: hold them whole: 16 M voxels are about 0.4 GiB as float64).
ANTS_EXPORT_MAX_VOXELS = 2**24


@dataclass(frozen=True)
class RegistrationResult:
    """What :func:`register` produced.

    ``inputs`` records where the inputs came from (for ``ngffreg qc`` to open them again);
    ``keepalive`` holds the temporary folder the block fields live in when no output store
    was written.
    """

    transform: Transform
    coarse: CoarseResult
    plan: BlockPlan | None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    output: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    fine: DisplacementField | None = None
    fine_report: dict[str, Any] = field(default_factory=dict)
    n_fine: int = 1
    inputs: dict[str, Any] = field(default_factory=dict)
    #: Peak resident memory (GiB) of this process and its child processes per stage
    #: (coarse, blocks, blend, warp, report with the ANTs export, publish), complete once
    #: :func:`register` returns.
    memory: dict[str, float] = field(default_factory=dict)
    keepalive: Any = field(default=None, repr=False, compare=False)

    @property
    def table(self) -> list[dict[str, Any]]:
        return block_table(self.blocks)


def register(
    fixed: Any,
    moving: Any,
    output: str | Path | None = None,
    *,
    options: RegistrationOptions | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    fixed_voxel_size: Any = None,
    moving_voxel_size: Any = None,
    unit: str | None = None,
    client: Any = None,
    overwrite: bool = False,
    progress: Any = None,
    **option_values: Any,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: coarse at a pyramid level, fine on blocks, blended.

    Parameters
    ----------
    fixed, moving
        Paths (any format :func:`ngffreg.open_image` reads), images, pyramids
        (``xarray.DataTree``) or lists of levels, dims z, y, x.
    output : path, optional
        The output store ``OUT.ome.zarr`` (see the module docstring); without it nothing
        is written and the blocks run in a temporary folder.
    options : RegistrationOptions, optional
        Every option of the run (:class:`~ngffreg.registration.options.RegistrationOptions`);
        options may also be given by name as keywords (``chunk_size=64``), which win.
    fixed_mask, moving_mask
        Masks for the coarse step (any grid; resampled).
    fixed_voxel_size, moving_voxel_size, unit
        Voxel sizes (z, y, x) where a file has none, and their unit.
    client
        A ``dask.distributed`` client to run the blocks on.
    overwrite
        Replace an existing output store.
    progress
        A callable given each finished block's record.

    **option_values
        Any field of :class:`~ngffreg.registration.options.RegistrationOptions` by name (what
        each does is documented there), e.g. ``chunk_size=64, workers=2``.
    """
    t_start = time.perf_counter()
    opts = (options or RegistrationOptions()).replace(**option_values)
    fixed_levels = image_levels(fixed, voxel_size=fixed_voxel_size, unit=unit, name="fixed")
    fixed_unit = units(fixed_levels[0])
    moving_levels = [lv if units(lv) == fixed_unit else to_units(lv, fixed_unit) for lv in
                     image_levels(moving, voxel_size=moving_voxel_size, unit=unit,
                                  name="moving")]
    plan = resolve(opts, fixed_levels, client=client)
    log = _logger(progress)
    if plan.resources is not None:
        log(plan.resources.describe())
    output = Path(output).expanduser().resolve() if output is not None else None
    params = run_params(opts, plan, fixed, moving, fixed_levels, moving_levels)
    store = RunStore.open(output, params, overwrite)
    timings: dict[str, float] = {}
    try:
        with contextlib.ExitStack() as stack:
            memory = stack.enter_context(STAGE_MEMORY.watching())  # peak per stage
            stack.enter_context(stage_limits(plan.resources))  # blend, warp, QC threads
            if opts.scheduler_address and client is None:
                # reach the cluster before any work: a wrong address fails in seconds; the
                # blocks, the blend and the warp run there
                client = stack.enter_context(block_client(1, address=opts.scheduler_address,
                                                          log=log))
            t0 = time.perf_counter()
            STAGE_MEMORY.stage("coarse")
            coarse = store.load_coarse() or store.save_coarse(coarse_register(
                fixed_levels, moving_levels, linear_type=opts.linear_type,
                nonlinear_type=opts.nonlinear_type_coarse, linear_accuracy=opts.linear_accuracy,
                nonlinear_accuracy=opts.coarse_accuracy,
                downsample_factor=opts.downsample_factor, target_spacing=opts.coarse_spacing,
                memory_budget=plan.coarse_budget, level=plan.coarse_level,
                fixed_mask=fixed_mask, moving_mask=moving_mask, backend=opts.backend))
            timings["coarse_s"] = time.perf_counter() - t0
            passes = block_passes(fixed_levels, moving_levels, coarse, opts, plan, store.work,
                                  client=client, progress=progress, log=log, timings=timings)
            inputs = {"fixed": _input_record(fixed, fixed_voxel_size, unit),
                      "moving": _input_record(moving, moving_voxel_size, unit)}
            result = RegistrationResult(passes.transform, coarse, passes.plan, passes.records,
                                        None, timings, passes.fine, passes.fine_report,
                                        max(1, passes.n_fine), inputs, memory)
            if output is None:
                timings["total_s"] = time.perf_counter() - t_start
                return dataclasses.replace(result, keepalive=store.keepalive)
            return _write_output(result, store, fixed_levels, moving_levels, opts, progress,
                                 t_start, scheduler=client)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and output is not None:
            raise OutputError(
                f"The disk is full (or over quota) while writing {output} ({exc.strerror}). "
                f"Free some space and run the same command again: the blocks finished so "
                f"far are kept in {store.work} and will not be registered again; nothing was "
                f"written to {output}.") from exc
        raise
    finally:
        store.close()


@dataclass(frozen=True)
class BlockPasses:
    """What the block passes made: the full transform (the passes' fields, finest first,
    in front of the coarse steps), the last pass's plan, every block record, the finest
    field and its report, and how many fields the passes added."""

    transform: Transform
    plan: BlockPlan | None
    records: list[dict[str, Any]]
    fine: DisplacementField | None
    fine_report: dict[str, Any]
    n_fine: int


def block_passes(fixed_levels: list[xr.DataArray], moving_levels: list[xr.DataArray],
                 coarse: CoarseResult, opts: RegistrationOptions, plan: RunPlan, work: Path,
                 *, client: Any = None, progress: Any = None, log: Any = None,
                 timings: dict[str, float] | None = None) -> BlockPasses:
    """Blocks and blend, pass by pass from the coarse level to the fine one, each through
    everything found before it. Workers of a LocalCluster started here exit after each
    pass's blocks, before its blend; a cluster given (``client``, an address) is kept and
    also runs the blend."""
    steps = steps_of(coarse.transform)
    if plan.method is None:
        return BlockPasses(coarse.transform, None, [], None, {}, 0)
    timings = {} if timings is None else timings
    fields: list[DisplacementField] = []
    records: list[dict[str, Any]] = []
    fine_report: dict[str, Any] = {}
    block_plan = None
    foreground = fixed_levels[min(coarse.fixed_level, len(fixed_levels) - 1)]
    memory = plan.resources.block_memory * 5 // 4 if plan.resources else None
    one = len(plan.passes) == 1
    with block_client(plan.workers, client=client, address=opts.scheduler_address,
                      memory_limit=memory, need_cluster=opts.block_timeout is not None,
                      log=log or (lambda message: None)) as cluster:
        for k, (level, size) in enumerate(plan.passes):
            t0 = time.perf_counter()
            STAGE_MEMORY.stage(f"blocks{'' if one else k}")
            pass_work = work if one else work / f"pass{k}"
            block_plan, pass_records = run_pass(
                fixed_levels, moving_levels, level, size, opts.overlap_fraction, foreground,
                Sequence(transforms=(*fields[::-1], *steps)), plan.method, pass_work,
                min_foreground=opts.min_foreground, client=cluster,
                block_timeout=opts.block_timeout, progress=progress)
            for r in pass_records:
                r["pass"] = k
            timings[f"blocks_s{'' if one else k}"] = time.perf_counter() - t0
            if hasattr(cluster, "for_blocks"):  # a LocalCluster of ours: its workers exit
                cluster.close()  # before the blend (the next pass starts new ones)
            t0 = time.perf_counter()
            STAGE_MEMORY.stage(f"blend{'' if one else k}")
            field_k, fine_report = blend_pass(block_plan, pass_records, pass_work,
                                              opts.blend_sigma, "fine" if one else f"fine{k}",
                                              factor=opts.field_factor, scheduler=client)
            timings[f"blend_s{'' if one else k}"] = time.perf_counter() - t0
            if not one:
                fine_report["pass"] = k
            fields.append(field_k)
            records += pass_records
    return BlockPasses(Sequence(transforms=(*fields[::-1], *steps)), block_plan, records,
                       fields[-1], fine_report, len(fields))


def _write_output(result: RegistrationResult, store: RunStore, fixed_levels: list[xr.DataArray],
                  moving_levels: list[xr.DataArray], opts: RegistrationOptions, progress: Any,
                  t_start: float, scheduler: Any = None) -> RegistrationResult:
    """Warp (on ``scheduler``, a dask client, when given), write the store with its extras,
    publish it, and return the result reading its fields from the published store (not the
    work folder, which is removed)."""
    from ..transforms.ngff import read_registration
    from ..warp import write_warped

    t0 = time.perf_counter()
    STAGE_MEMORY.stage("warp")
    staged = store.staged()
    try:  # the blocks are lent to the store; a write that fails gives them back to the work
        write_warped(moving_levels, result.transform, staged, like=fixed_levels[0],
                     interpolator=opts.interpolator, progress=bool(progress),
                     scheduler=scheduler)
        result.timings["warp_s"] = time.perf_counter() - t0
        result.timings["total_s"] = time.perf_counter() - t_start
        STAGE_MEMORY.stage("report")
        store.lend(_block_moves(store.work))
        _write_extras(staged, result, opts.export_ants, (fixed_levels, moving_levels))
        output = store.publish(staged)
    except BaseException:
        store.take_back()
        shutil.rmtree(staged, ignore_errors=True)  # half written; its space back
        raise
    stored = read_registration(output)
    stored_steps = steps_of(getattr(stored, "forward", stored))
    n_fine = result.n_fine if result.fine is not None else 0  # the passes' fields
    fine = None
    if result.fine is not None:  # the finest pass's field comes first in the sequence
        fine = stored_steps[0] if len(stored_steps) > 1 else None
    # the coarse result must not read from the work folder either: its transform is the tail
    # of the stored sequence, its inverse (coarse level, small) is held in memory
    coarse = dataclasses.replace(
        result.coarse, transform=(Sequence(transforms=stored_steps[n_fine:])
                                  if len(stored_steps) - n_fine > 1 else stored_steps[n_fine]),
        inverse=map_fields(result.coarse.inverse, DisplacementField.compute))
    store.remove()
    return dataclasses.replace(result, transform=stored, output=output, fine=fine,
                               coarse=coarse)


def _logger(progress: Any) -> Any:
    if not progress:
        return lambda message: None
    return lambda message: print(message, file=sys.stderr, flush=True)


def run_pass(fixed_levels: list[xr.DataArray], moving_levels: list[xr.DataArray],
             level: int, chunk_size: Any, overlap_fraction: float, foreground: xr.DataArray,
             current: Transform, method: Any, work: Path, *, min_foreground: float = 0.02,
             client: Any = None, block_timeout: float | None = None,
             progress: Any = None) -> tuple[BlockPlan, list[dict[str, Any]]]:
    """One pass of blocks on fixed level ``level`` (the moving level whose spacing fits),
    registered through ``current``; the plan goes to ``work/plan.json``, the blocks to
    ``work/blocks``."""
    work.mkdir(parents=True, exist_ok=True)
    fixed = fixed_levels[level]
    moving = moving_levels[choose_moving_level(moving_levels, spacing(fixed),
                                               units(fixed))[0]]
    plan = plan_blocks(Grid.of(fixed), chunk_size, overlap_fraction, level=level,
                       foreground=foreground, min_foreground=min_foreground)
    (work / "plan.json").write_text(json.dumps(plan.to_dict()))
    grown = np.max([[r1 - r0 for r0, r1 in b.region] for b in plan.blocks], axis=0)
    scale = np.divide(spacing(fixed), spacing(moving))  # the moving region, as long
    for image, region, what in ((fixed, grown, "fixed"), (moving, grown * scale, "moving")):
        message = small_chunk_warning(image, np.ceil(region), len(plan.blocks), what)
        if message:
            warnings.warn(message, stacklevel=2)
    records = run_blocks(plan, fixed, moving, current, method, work, client=client,
                         block_timeout=block_timeout, progress=progress)
    return plan, records


def blend_pass(plan: BlockPlan, records: list[dict[str, Any]], work: Path,
               blend_sigma: float | None = None, name: str = "fine", *,
               factor: Any = "auto", scheduler: Any = None
               ) -> tuple[DisplacementField, dict[str, Any]]:
    """A pass's blocks blended into one field, stored in ``work`` (``factor`` times coarser
    than the blocks' grid; ``"auto"``: :func:`~ngffreg.registration.reduce.choose_factor`)
    and read back lazily, with its QC report (Jacobian, folds, seams, the storage factor).
    ``scheduler``: a dask client to compute it on (default: threads here)."""
    storage: dict[str, Any] = {}
    if factor == "auto":
        factor, storage = choose_factor(plan, records, work, blend_sigma=blend_sigma)
    field = _store_field(blend(plan, records, work, blend_sigma=blend_sigma, factor=factor),
                         work, name=name, scheduler=scheduler)
    edges = [[e // factor for e in axis] for axis in plan.edges] if factor > 1 else plan.edges
    report = field_report(field, edges)
    report["storage"] = {"factor": int(factor), "spacing": field.grid.spacing.tolist(),
                         **storage}
    return field, report


def _store_field(field: DisplacementField, work: Path, name: str = "fine",
                 scheduler: Any = None) -> DisplacementField:
    """Compute the blended field once into ``work/fine`` and return it read lazily."""
    grid = field.grid
    return DisplacementField.from_array(
        store_array(field.field.data, work / "fine", scheduler=scheduler),
        spacing=grid.spacing, origin=grid.origin, direction=grid.direction, unit=grid.unit,
        name=name)


def _block_moves(work: Path) -> list[tuple[str, str]]:
    """Where the block records and plans go in the output store (``blocks/``, a pass's
    under ``blocks/passN``), as (work path, store path) pairs."""
    moves = []
    if (work / "blocks").is_dir():
        moves.append(("blocks", "blocks"))
    passes = sorted(p.name for p in work.glob("pass*") if p.is_dir())  # multi-resolution
    for name in passes:
        for part, to in (("blocks", ""), ("plan.json", "/plan.json")):
            if (work / name / part).exists():
                moves.append((f"{name}/{part}", f"blocks/{name}{to}"))
    if (work / "plan.json").is_file():
        moves.append(("plan.json", "blocks/plan.json" if moves or passes else "plan.json"))
    return moves


def _write_extras(output: Path, result: RegistrationResult, export_ants: bool | None,
                  levels: tuple[Any, Any] = (None, None)) -> None:
    """QC table and summary, the QC report and the ANTs export, into the staged store
    (which holds the blocks by now)."""
    qc = output / "qc"
    qc.mkdir(exist_ok=True)
    rows = result.table
    if rows:
        with open(qc / "blocks.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v)
                                 for k, v in row.items()})
    statuses: dict[str, int] = {}
    for r in result.blocks:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = {"coarse": result.coarse.metrics, "coarse_level": result.coarse.fixed_level,
               "blocks": statuses, "timings": result.timings, "fine_field": result.fine_report,
               "flagged": [r["id"] for r in result.blocks
                           if r["status"] in ("failed", "rejected")],
               "inputs": result.inputs, "figures": []}
    (qc / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    _figures(qc, result, levels)  # the QC report; it lists its figures in summary.json
    fine = result.fine
    if export_ants is None:
        export_ants = fine is None or int(np.prod(fine.grid.shape)) <= ANTS_EXPORT_MAX_VOXELS
    if export_ants:
        export_ants_transforms(result, output / "transforms")
    # the peaks, once the report (which rewrote the summary) has had its own
    STAGE_MEMORY.stage("publish")
    doc = json.loads((qc / "summary.json").read_text())
    doc["memory_gib"] = {k: v for k, v in result.memory.items() if k != "publish"}
    (qc / "summary.json").write_text(json.dumps(doc, indent=1, default=float))


def _figures(qc: Path, result: RegistrationResult,
             levels: tuple[Any, Any] = (None, None)) -> list[str]:
    """The QC report (:func:`ngffreg.qc.write_report`) in ``qc/``: ``overlay.png``,
    ``checkerboard.png``, ``blocks.png``, ``block_layers.png``, ``jacobian.png`` and
    ``index.html``, from the levels this run registered. A report that fails is a warning
    (``ngffreg qc OUT`` retries it), never a failed registration."""
    from ..qc import write_report

    fixed, moving = levels
    try:
        write_report(qc.parent, fixed=fixed, moving=moving)
    except Exception as exc:
        warnings.warn(f"The QC report could not be written ({type(exc).__name__}: {exc}); "
                      f"run `ngffreg qc {qc.parent.name}` to try again.", stacklevel=2)
        return []
    return json.loads((qc / "summary.json").read_text()).get("figures", [])


def _input_record(image: Any, voxel_size: Any, unit: str | None) -> dict[str, Any]:
    """Where an input came from, for ``ngffreg qc`` to open it again: its path (``None``
    when it was in memory) and the voxel_size/unit options it was read with."""
    path = (str(Path(image).expanduser().resolve()) if isinstance(image, (str, os.PathLike))
            else None)
    return {"path": path, "voxel_size": None if voxel_size is None else
            np.asarray(voxel_size, dtype=np.float64).tolist(), "unit": unit}


def export_ants_transforms(result: RegistrationResult, folder: Path) -> list[str]:
    """The seed's file layout for ANTs users: ``global_linear_transform.mat``,
    ``global_nonlinear_warp.nii.gz`` (when the coarse step was deformable) and
    ``fine_warp.nii.gz`` (the blended fine field); returns the ``transformlist`` for
    ``ants.apply_transforms(fixed, moving, transformlist)`` (also written to
    ``ants_transformlist.json``)."""
    from ..transforms.files import write_displacement_field, write_itk_transform

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    steps = list(steps_of(result.transform))
    n_fine = result.n_fine if result.fine is not None else 0
    out = []
    if n_fine:
        fine = steps[0] if n_fine == 1 else sample_field(
            Sequence(transforms=tuple(steps[:n_fine])), like=result.fine)
        write_displacement_field(fine, folder / "fine_warp.nii.gz")
        out.append("fine_warp.nii.gz")
    for step in steps[n_fine:]:
        if step.is_linear:
            path = folder / "global_linear_transform.mat"
            write_itk_transform(step, path)
        else:
            path = folder / "global_nonlinear_warp.nii.gz"
            write_displacement_field(step, path)
        out.append(path.name)
    (folder / "ants_transformlist.json").write_text(json.dumps(out))
    return [str(folder / n) for n in out]


__all__ = ["RegistrationResult", "default_workers", "export_ants_transforms", "register",
           "steps_of"]
