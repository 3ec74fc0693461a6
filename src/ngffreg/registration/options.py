"""The options of a registration, validated once, in one frozen object.

:class:`RegistrationOptions` is the single source of the defaults: :func:`ngffreg.register`
takes it (or the same names as keywords), the ``ngffreg register`` command line builds its
options and ``--config FILE.yaml`` keys from its fields (:data:`CLI_OPTIONS`), and
``ChunkedRegistration`` and the ``.reg`` accessor pass their keywords through it.

Values are checked when the object is made (names of types, accuracies, the backend and the
interpolator; ranges), so a mistake fails before any work, with a message that says what
to write instead. Text from the command line or a YAML file becomes typed values through
:meth:`RegistrationOptions.parse`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from . import ants_backend
from .backend import check_choice
from .methods import GREEDY_TYPES

ACCURACIES = ants_backend.ACCURACIES
BACKENDS = ("ants", "elastix")


@dataclass(frozen=True)
class RegistrationOptions:
    """Every option of :func:`ngffreg.register` that is not an input, the output or where to
    report progress. Frozen; checked when made; :meth:`replace` makes a changed copy.

    Attributes
    ----------
    downsample_factor, coarse_level, coarse_spacing, coarse_memory_budget
        The coarse level: ``coarse_level`` if given, else from a memory budget, a target
        spacing, or level 0's spacing × ``downsample_factor`` (default 4), coarser still
        when that level has more than 4 M voxels
        (:data:`~ngffreg.registration.coarse.COARSE_MAX_VOXELS`).
    fine_level, fine_spacing
        The fixed level the blocks register at (default 0, full resolution).
    chunk_size, overlap_fraction
        Block core size (voxels: int or z, y, x; or lengths such as ``"2 mm"``) and the
        overlap added per side as a fraction of it.
    block_memory
        With ``chunk_size="auto"``: the memory one block registration may use (per worker
        process); the block size is the largest that fits
        (:func:`ngffreg.blocks.auto_block_size`).
    block_levels
        Multi-resolution blocks: ``[(level, chunk_size), …]`` from coarse to fine, e.g.
        ``[(1, 64), (0, 32)]``; each pass registers its blocks through everything found so
        far and adds its blended field in front. Default: one pass on ``fine_level``.
    linear_type, nonlinear_type_coarse, nonlinear_type_fine
        ``Translation``/``Rigid``/``Similarity``/``Affine``; ``Greedy`` (the default: the
        compiled engine, :mod:`~ngffreg.registration.greedy`), ``GreedySVF`` (its
        stationary-velocity form), or the ANTs types ``SyNOnly``/``SyN``/``Elastic``; or
        ``None`` to skip that step.
    linear_accuracy, coarse_accuracy, fine_accuracy
        ``low``, ``medium`` or ``high`` (iteration schedules in
        :mod:`ngffreg.registration.ants_backend`).
    method
        The block method: a name (``"greedy"``, ``"ants-syn"``, ``"ants-affine"``,
        ``"elastix-bspline"``) or a callable ``(fixed, moving, initial, info) ->
        BlockResult``; default: the one ``nonlinear_type_fine`` names, at
        ``fine_accuracy``.
    backend
        The coarse step's registration: ``"ants"`` (default) or ``"elastix"`` (ITK-elastix;
        ``nonlinear_type_coarse`` ``"BSpline"`` or ``None``). Blocks choose via ``method``.
    interpolator, blend_sigma
        Interpolation of the registered image; half-width (voxels) of the blend across block
        faces (default: half the overlap).
    field_factor
        How much coarser than the blocks' grid the blended fine field is stored and used:
        ``"auto"`` (default) takes the largest of 2 and 4 for which linear interpolation
        reproduces the blend within 0.1 voxel at the 99th percentile, measured where block
        cores meet (:func:`~ngffreg.registration.reduce.choose_factor`), else 1; or a
        whole number (1: the blocks' grid itself).
    min_foreground
        Blocks with a smaller fraction of foreground voxels are skipped.
    workers, scheduler_address
        Where the blocks run (:mod:`~ngffreg.registration.execution`): the address of a
        dask scheduler; else a LocalCluster of ``workers`` single-threaded processes
        (default: as many as the CPUs and the memory allow; 1 runs them in this process).
    memory_budget
        Memory for the whole process tree (e.g. ``"8 GiB"``): sets the worker count, the
        block size (with ``chunk_size="auto"``) and the coarse level
        (:func:`~ngffreg.registration.execution.plan_resources`); too small for one block
        is refused with the smallest that would do.
    block_timeout
        Seconds one block may take; a block still running then is flagged failed (filled
        from its neighbours) and its worker restarted. Needs worker processes: with
        ``workers=1`` a one-worker LocalCluster is started.
    export_ants
        Write ``transforms/`` for ANTs (default: when the fine field is small enough).
    """

    downsample_factor: float | None = 4
    coarse_level: int | None = None
    coarse_spacing: Any = None
    coarse_memory_budget: Any = None
    fine_level: int | None = 0
    fine_spacing: Any = None
    chunk_size: Any = 64
    block_memory: Any = "1 GiB"
    overlap_fraction: float = 0.25
    block_levels: Any = None
    linear_type: str | None = "Affine"
    nonlinear_type_coarse: str | None = "Greedy"
    nonlinear_type_fine: str | None = "Greedy"
    method: Any = None
    linear_accuracy: str = "medium"
    coarse_accuracy: str = "medium"
    fine_accuracy: str = "medium"
    interpolator: str = "linear"
    backend: str = "ants"
    blend_sigma: float | None = None
    field_factor: Any = "auto"
    min_foreground: float = 0.02
    workers: int | None = None
    memory_budget: Any = None
    block_timeout: float | None = None
    scheduler_address: str | None = None
    export_ants: bool | None = None

    def __post_init__(self) -> None:
        from ..warp import interpolation_order

        interpolation_order(self.interpolator)
        for name in ("linear_accuracy", "coarse_accuracy", "fine_accuracy"):
            check_choice(name, getattr(self, name), ACCURACIES)
        if self.linear_type is not None:
            check_choice("linear_type", self.linear_type, ants_backend.LINEAR_TYPES)
        if self.backend not in BACKENDS:
            raise InputError(f"Unknown backend {self.backend!r}; use ants or elastix.")
        deformable = (*GREEDY_TYPES, *ants_backend.NONLINEAR_TYPES)
        if self.backend == "elastix":
            from .coarse import elastix_kinds

            elastix_kinds(self.linear_type, None if self.nonlinear_type_coarse in GREEDY_TYPES
                          else self.nonlinear_type_coarse)
        elif self.nonlinear_type_coarse is not None:
            check_choice("nonlinear_type_coarse", self.nonlinear_type_coarse, deformable)
        if self.nonlinear_type_fine is not None:
            check_choice("nonlinear_type_fine", self.nonlinear_type_fine, deformable)
        if not 0 <= self.overlap_fraction < 1:
            raise InputError(f"overlap_fraction must be in [0, 1); got {self.overlap_fraction}.")
        if not (self.field_factor == "auto" or (isinstance(self.field_factor, int)
                                                and self.field_factor >= 1)):
            raise InputError(f"field_factor must be auto or a whole number ≥ 1; got "
                             f"{self.field_factor!r}.")
        if self.block_timeout is not None and not float(self.block_timeout) > 0:
            raise InputError(f"block_timeout must be a positive number of seconds; got "
                             f"{self.block_timeout!r}.")

    def replace(self, **changes: Any) -> RegistrationOptions:
        """A copy with ``changes`` (validated again); unknown names are refused."""
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise InputError(f"Unknown registration options {unknown}; known: "
                             f"{', '.join(NAMES)}.")
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def parse(cls, key: str, value: Any, where: str) -> Any:
        """A command-line or YAML value of option ``key`` as the type the option takes
        (``none``/``null`` is None; ``block_levels`` ``1:64,0:32``; ``chunk_size`` ``64``,
        ``64,96,96``, ``2mm`` or ``auto``)."""
        kind = CLI_OPTIONS[key][0]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        if key == "block_levels":
            return _parse_block_levels(value, where)
        if key == "chunk_size":
            return _parse_chunk_size(value)
        if key == "field_factor":
            return int(value) if str(value).strip().isdigit() else str(value).strip()
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {key} must be {kind.__name__}; got {value!r}.") from None

    @classmethod
    def from_text(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Options given as text (``--config`` keys, with ``-`` or ``_``), typed; unknown
        keys are refused with the known ones."""
        out = {}
        for raw, value in values.items():
            key = str(raw).replace("-", "_")
            key = "method" if key == "block_method" else key
            if key not in CLI_OPTIONS:
                raise InputError(f"{where}: unknown key {raw!r}; known keys: "
                                 f"{', '.join(cli_name(k) for k in CLI_OPTIONS)}.")
            out[key] = cls.parse(key, value, where)
        return out


def _parse_block_levels(value: Any, where: str) -> list[tuple[int, Any]]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        parts = item if isinstance(item, (list, tuple)) else str(item).split(":")
        if len(parts) != 2 or not str(parts[0]).strip().isdigit():
            raise InputError(f"{where}: block_levels takes LEVEL:SIZE pairs such as "
                             f"1:64,0:32; got {value!r}.")
        size = str(parts[1]).strip()
        out.append((int(parts[0]), int(size) if size.isdigit() else size))
    return out


def _parse_chunk_size(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [int(v) if str(v).isdigit() else str(v) for v in value]
    text = str(value)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3:
        return [int(p) if p.isdigit() else p for p in parts]
    return int(text) if text.isdigit() else text


def cli_name(key: str) -> str:
    """The command-line (and ``--config``) name of option ``key``."""
    return "block_method" if key == "method" else key


#: Every option's name.
NAMES = tuple(f.name for f in dataclasses.fields(RegistrationOptions))
#: What the command line and ``--config`` say of the options they take: type and help (the
#: default is added from :class:`RegistrationOptions`).
_CLI_HELP: dict[str, tuple[type, str]] = {
    "downsample_factor": (float, "pyramid downsampling of the coarse level"),
    "coarse_level": (int, "pyramid level of the coarse step (overrides the factor)"),
    "fine_level": (int, "fixed level the blocks register at"),
    "chunk_size": (str, "block core size: voxels (64; or 64,96,96), a length (2mm) or auto"),
    "block_memory": (str, "with --chunk-size auto: memory per block registration"),
    "overlap_fraction": (float, "overlap per side as a fraction of the block"),
    "block_levels": (str, "multi-resolution blocks, coarse to fine: LEVEL:SIZE,… e.g. "
                     "1:64,0:32"),
    "linear_type": (str, "Translation, Rigid, Similarity, Affine or none"),
    "nonlinear_type_coarse": (str, "Greedy (the compiled engine), GreedySVF, or ANTs' SyN, "
                              "SyNOnly, Elastic; or none"),
    "nonlinear_type_fine": (str, "block registration: Greedy (the compiled engine), "
                            "GreedySVF, or ANTs' SyNOnly, SyN, Elastic; or none"),
    "method": (str, "the block registration by name: greedy (the default, from "
               "--nonlinear-type-fine), ants-syn, ants-affine or elastix-bspline"),
    "linear_accuracy": (str, "low, medium, high"),
    "coarse_accuracy": (str, "low, medium, high"),
    "fine_accuracy": (str, "low, medium, high"),
    "interpolator": (str, "linear, nearestNeighbor, bSpline"),
    "backend": (str, "coarse step: ants or elastix (nonlinear type BSpline)"),
    "blend_sigma": (float, "half-width of the blend across block faces, voxels (default: "
                    "half the overlap)"),
    "field_factor": (str, "store the fine field this many times coarser than the blocks' "
                     "grid: auto (2 or 4 where linear interpolation stays within 0.1 voxel, "
                     "else 1) or a whole number"),
    "min_foreground": (float, "skip blocks with less foreground than this fraction"),
    "workers": (int, "block worker processes of the local cluster (default: one per CPU, as "
                "memory allows; 1 runs blocks in this process)"),
    "memory_budget": (str, "memory for the whole run, all processes (e.g. 8GiB): sets the "
                      "worker count, block size (with --chunk-size auto) and coarse level"),
    "block_timeout": (float, "seconds one block may take; then it is flagged and filled from "
                      "its neighbours"),
    "scheduler_address": (str, "run the blocks on this dask scheduler (tcp://HOST:PORT) "
                          "instead of a local cluster"),
}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RegistrationOptions)}
#: The options the command line and ``--config`` take: ``{name: (type, help)}``, in the
#: order of :class:`RegistrationOptions`.
CLI_OPTIONS: dict[str, tuple[type, str]] = {
    name: (kind, text if _DEFAULTS[name] is None or "default" in text
           else f"{text} (default {_DEFAULTS[name]})")
    for name in NAMES if name in _CLI_HELP for kind, text in [_CLI_HELP[name]]}

__all__ = ["CLI_OPTIONS", "NAMES", "RegistrationOptions", "cli_name"]
