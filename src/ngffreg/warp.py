"""Warp: lazy, output-chunk-driven resampling of a moving image onto a fixed grid.

Each output chunk computes its own fixed-space points, pushes them through the transform
(fixed → moving; a displacement field reads only the region those points need), takes
the bounding box of the mapped points plus the interpolator's footprint, reads only that
region of the moving image, and interpolates. No task holds a whole volume and the task
graph carries no arrays: a task is a function of its chunk's location.

Rules (ITK's, so results match ``ants.apply_transforms``): a mapped point is inside the
moving image while its continuous index lies in ``[-0.5, n - 0.5)``; neighbours past the
edge repeat the edge; points outside get ``fill_value``.

Two paths compute a chunk with the same rules. The compiled one (:mod:`ngffreg.kernels`,
numba) takes transforms made of linear steps (``Identity``, ``Translation``, ``Scale``,
``Affine``) and displacement fields, in any order and nesting (``Sequence``,
``Bijection``): it pushes each point through the chain and interpolates (nearest,
linear; B-spline goes through scipy on the computed indices) without building the
intermediate point arrays. Everything else (thin-plate splines, subclasses, a field or
moving region too large to hold) takes the reference path: ``transform.apply_grid`` then
:func:`ngffreg.sampling.sample`. Both read the moving image (and the fields) through a
per-process cache of decoded chunks scoped to the warp call
(:data:`ngffreg.sampling.CHUNK_CACHE`), so neighbouring output chunks do not decode the
same source chunks again.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import InputError
from .image import SPATIAL_DIMS, Grid, to_units, units
from .image import spacing as image_spacing
from .sampling import REGION_BYTES, footprint, read_region, sample
from .transforms import (
    Affine,
    DisplacementField,
    Identity,
    Scale,
    Transform,
    Translation,
    iter_steps,
)
from .transforms.field import _as_grid
from .units import unit_factor

#: The seed's interpolator names, and the spline order each stands for.
INTERPOLATORS = {"nearestNeighbor": 0, "linear": 1, "bSpline": 3}
#: Output chunk edge when the fixed image gives none.
DEFAULT_CHUNK = 128


def interpolation_order(interpolator: str) -> int:
    """The spline order of an interpolator name (``linear``, ``nearestNeighbor``,
    ``bSpline``; ``nearest`` and ``bspline`` are accepted too)."""
    aliases = {"nearest": "nearestNeighbor", "bspline": "bSpline", "cubic": "bSpline"}
    name = aliases.get(interpolator, interpolator)
    if name not in INTERPOLATORS:
        raise InputError(
            f"Unknown interpolator {interpolator!r}; choose one of {sorted(INTERPOLATORS)} "
            "(nearestNeighbor for label images).")
    return INTERPOLATORS[name]


_LINEAR_TYPES = (Identity, Translation, Scale, Affine)
#: dtypes the kernels interpolate (not float16, bool, complex: those go through scipy).
_KERNEL_DTYPES = frozenset("bBhHiIlLqQfd")


def _kernels() -> Any:
    """The :mod:`ngffreg.kernels` module, or None when numba is missing."""
    try:
        from . import kernels
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return kernels


def _flatten(transform: Transform) -> list[Transform] | None:
    """The steps of a chain of linear maps and displacement fields, or None for any other
    transform (exact types only: a subclass may change what a step does)."""
    steps = list(iter_steps(transform, exact=True))
    if all(type(t) in _LINEAR_TYPES or type(t) is DisplacementField for t in steps):
        return steps
    return None


def _index_params(grid: Grid) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
    """What the kernels need for a grid's continuous index: aligned?, Dᵀ, frame origin,
    and the spacing (7 values: spacing, 1 if every spacing is a power of two, the
    reciprocals; dividing by a power of two is multiplying by its exact reciprocal, so
    the kernel does that, bitwise the same). The reference skips the rotation on an
    axis-aligned grid; so do the kernels."""
    sp = np.asarray(grid.spacing, dtype=np.float64)
    pow2 = bool(np.all(np.frexp(sp)[0] == 0.5))
    return (grid.is_axis_aligned, np.ascontiguousarray(grid.direction.T, dtype=np.float64),
            np.asarray(grid.frame_origin, dtype=np.float64),
            np.concatenate([sp, [1.0 if pow2 else 0.0], 1.0 / sp]))


class _ChunkWarper:
    """The compiled path for one warp call: the chain's arrays, built once; :meth:`chunk`
    computes one output chunk (or returns None for the reference path to take it)."""

    def __init__(self, kernels: Any, steps: list[Transform], grid: Grid, mgrid: Grid,
                 mdtype: np.dtype, order: int, dtype: np.dtype, fill: np.ndarray,
                 cache: Any) -> None:
        self.k, self.order, self.dtype, self.fill, self.cache = kernels, order, dtype, fill, cache
        self.broken = False  # set when numba cannot compile the kernels for these types
        self.grid = (np.asarray(grid.frame_origin, dtype=np.float64),
                     np.asarray(grid.spacing, dtype=np.float64),
                     np.ascontiguousarray(grid.direction, dtype=np.float64)[None],
                     np.array([grid.is_axis_aligned]))
        s = len(steps)
        self.kinds = np.zeros(s, dtype=np.int64)
        self.mats = np.zeros((s, 3, 4))
        self.fids = np.full(s, -1, dtype=np.int64)
        self.fields: list[DisplacementField] = []
        for i, t in enumerate(steps):
            if isinstance(t, DisplacementField):
                self.kinds[i] = kernels.FIELD
                self.fids[i] = len(self.fields)
                self.fields.append(t)
            else:
                self.kinds[i] = kernels.LINEAR
                self.mats[i] = np.asarray(t.matrix, dtype=np.float64)[:3, :4]
        nf = max(len(self.fields), 1)
        self.faligned = np.ones(nf, dtype=np.bool_)
        self.fdt = np.tile(np.eye(3), (nf, 1, 1))
        self.ffo = np.zeros((nf, 3))
        self.fsp = np.ones((nf, 7))
        self.fn = np.ones((nf, 3), dtype=np.int64)
        self.fpolicy = np.zeros(nf, dtype=np.int64)
        for f, field in enumerate(self.fields):
            (self.faligned[f], self.fdt[f], self.ffo[f], self.fsp[f]) = _index_params(
                field.grid)
            self.fn[f] = field.grid.shape
            self.fpolicy[f] = kernels.POLICY_CODES[field.outside]
        # a field first, on an axis-aligned grid and field: the separable kernels
        self.separable = bool(s and self.kinds[0] == kernels.FIELD and grid.is_axis_aligned
                              and self.faligned[0])
        aligned, dt, fo, sp = _index_params(mgrid)
        self.n = np.asarray(mgrid.shape, dtype=np.int64)
        self.moving = (np.array([aligned]), dt[None], fo[None], sp[None], self.n[None])
        # how the kernels interpolate (None: scipy, on indices they computed)
        self.mode = None
        self.limits = (0.0, 0.0)
        if all(d.char in _KERNEL_DTYPES and d.isnative for d in (mdtype, dtype)):
            if order == 0:
                self.mode = kernels.NEAREST
            elif order == 1 and dtype.kind == "f":
                self.mode = kernels.LINEAR_FLOAT
            elif order == 1:
                info = np.iinfo(dtype)
                self.mode, self.limits = kernels.LINEAR_INT, (float(info.min), float(info.max))
        # placeholders for the arguments a kernel call does not use
        self._no_indices = (np.zeros((1, 3)), np.zeros(1, dtype=np.bool_))
        self._no_output = (np.zeros((1, 1, 1), dtype=np.uint8), np.zeros(3, dtype=np.int64),
                           np.zeros(1, dtype=np.uint8), np.uint8(0))

    def _fields(self, start: np.ndarray, shape: np.ndarray) -> tuple[Any, ...] | None:
        """Each field's region the chunk's points read, in chain order (each field's
        bounds come from the points pushed through the steps before it), as the kernels
        take them, and how many points read the first step's field; None when a region
        is too large to hold."""
        nf = max(len(self.fields), 1)
        flo = np.zeros((nf, 3), dtype=np.int64)
        fshape = np.ones((nf, 3), dtype=np.int64)
        foff = np.zeros(nf, dtype=np.int64)
        parts: list[np.ndarray] = []
        fdata = np.zeros(3)
        used = first_count = 0
        for s in range(len(self.kinds)):
            if self.kinds[s] != self.k.FIELD:
                continue
            f = int(self.fids[s])
            if s == 0 and self.separable:
                *ends, count = self.k.field_bounds_first(
                    start, shape, *self.grid[:2], self.ffo, self.fsp, self.fn, self.fpolicy)
            else:
                *ends, count = self.k.field_bounds(
                    start, shape, s, *self.grid, self.kinds, self.mats, self.fids,
                    self.faligned, self.fdt, self.ffo, self.fsp, self.fn, flo, fshape, foff,
                    self.fpolicy, fdata)
            if s == 0:
                first_count = count
            lo_c, hi_c = np.array(ends[:3]), np.array(ends[3:])
            foff[f] = used
            if count == 0:  # no point reads this field
                region = np.zeros((3, 1, 1, 1))
            else:
                n = self.fn[f]
                lo = np.clip(np.floor(lo_c), 0, n - 1).astype(np.int64)
                hi = np.clip(np.clip(np.floor(hi_c), 0, n - 1).astype(np.int64) + 2, 1, n)
                if 8 * 3 * math.prod(int(v) for v in hi - lo) > REGION_BYTES:
                    return None
                box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
                region = read_region(self.fields[f].field.data, box, cache=self.cache)
                region = np.ascontiguousarray(region, dtype=np.float64)
                flo[f] = lo
            fshape[f] = region.shape[1:]
            parts.append(region.reshape(-1))
            used += region.size
            fdata = np.concatenate(parts)
        return flo, fshape, foff, fdata, first_count

    def _box(self, ends: list[float]) -> tuple[np.ndarray, np.ndarray, bool]:
        """The moving region ``[lo, hi)`` that interpolating at indices within ``ends``
        (min z, y, x, max z, y, x) reads (as :func:`ngffreg.sampling.region_bounds`), and
        whether it is small enough to hold."""
        n = self.n
        lo_off, hi_off = footprint(self.order)
        lo = np.clip(np.clip(np.floor(ends[:3]), 0, n - 1).astype(np.int64) + lo_off, 0, n - 1)
        hi = np.clip(np.clip(np.floor(ends[3:]), 0, n - 1).astype(np.int64) + hi_off, 1, n)
        return lo, hi, 8 * math.prod(int(v) for v in hi - lo) <= REGION_BYTES

    def _read(self, source: Any, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        return np.ascontiguousarray(read_region(source, box, cache=self.cache))

    def chunk(self, loc: Any, source: Any, source4: Any) -> np.ndarray | None:
        k = self.k
        start = np.array([a for a, _ in loc], dtype=np.int64)
        shape = np.array([b - a for a, b in loc], dtype=np.int64)
        held = self._fields(start, shape)
        if held is None:
            return None
        flo, fshape, foff, fdata, first_count = held
        m = int(np.prod(shape))
        nsteps = len(self.kinds)
        chain = (self.kinds, self.mats, self.fids, self.faligned, self.fdt, self.ffo, self.fsp,
                 self.fn, flo, fshape, foff, self.fpolicy, fdata)
        dtype, fill, mode = self.dtype, self.fill, self.mode
        if self.separable and first_count:  # (no point reads the field: the general kernel)
            nx = int(shape[2])
            scratch = (np.empty((3, int(fshape[0, 2]))), np.empty(nx, dtype=np.int64),
                       np.empty(nx, dtype=np.int64), np.empty(nx), np.empty(nx, dtype=np.bool_))

            def run(*sink: Any) -> Any:
                return k.moving_indices_first(start, shape, nsteps, *self.grid[:2], *chain,
                                              *self.moving, *sink, *scratch)
        else:
            def run(*sink: Any) -> Any:
                return k.moving_indices(start, shape, nsteps, *self.grid, *chain, *self.moving,
                                        *sink)
        out = np.empty(m, dtype=dtype)
        if mode is not None:
            # One pass: the region from the indices of the chunk's faces (enough for a map
            # without folds); the kernel checks every point and gives up if one is not.
            *ends, finite = k.face_bounds(start, shape, nsteps, *self.grid, *chain,
                                          *self.moving[:4])
            if finite:
                lo, hi, small = self._box(ends)
                if small:
                    region = self._read(source, lo, hi)
                    *_, failed = run(*self._no_indices, region, lo, out, fill[()], mode,
                                     *self.limits)
                    if not failed:
                        return out
        # Two passes: the indices, then exactly the region the inside points read.
        cidx = np.empty((m, 3))
        inside = np.empty(m, dtype=np.bool_)
        *ends, count, _ = run(cidx, inside, *self._no_output, k.STORE, 0.0, 0.0)
        if count == 0:
            out[:] = fill
            return out
        lo, hi, small = self._box(ends)
        if mode is not None and small:
            region = self._read(source, lo, hi)
            k.interpolate(cidx, inside, self.moving[-1], region, lo, out, fill[()], mode,
                          *self.limits)
            return out
        # B-spline (or a region too large to hold): scipy on the computed indices
        everywhere = count == m
        values = sample(source4, cidx if everywhere else cidx[inside], order=self.order,
                        cache=self.cache)[:, 0]
        if self.order and np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.clip(np.rint(values), info.min, info.max)
        if everywhere:
            out[:] = values
        else:
            out[:] = fill
            out[inside] = values
        return out


def _output_chunks(like: Any, grid: Grid, chunks: Any) -> tuple[tuple[int, ...], ...]:
    if chunks is None and isinstance(like, xr.DataArray) and isinstance(like.data, da.Array):
        spatial = like.data.chunks[-3:]
        if max(max(c) for c in spatial) <= 4 * DEFAULT_CHUNK:
            return spatial
    return da.core.normalize_chunks(chunks or DEFAULT_CHUNK, grid.shape)


def warp(
    moving: xr.DataArray,
    transform: Transform,
    *,
    like: xr.DataArray | Grid | None = None,
    shape: Any = None,
    spacing: Any = None,
    origin: Any = None,
    direction: Any = None,
    unit: str | None = None,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: Any = None,
    dtype: Any = None,
    kernels: bool = True,
) -> xr.DataArray:
    """Resample ``moving`` through ``transform`` (fixed → moving points) onto a grid.

    Parameters
    ----------
    moving : xarray.DataArray
        The moving image (dims z, y, x), lazy or not; only the regions the output needs
        are read.
    transform : Transform
        Maps fixed-space points to moving-space points (a registration result), in the
        units of the output grid.
    like : image or Grid, optional
        The fixed image whose grid (shape, spacing, origin, direction, unit) the output
        takes; or give ``shape``, ``spacing``, ``origin``, ``direction``, ``unit``.
    interpolator : ``"linear"``, ``"nearestNeighbor"`` or ``"bSpline"``
        Nearest neighbour keeps the moving dtype (integer labels stay exact); the others
        give float32 (float64 for float64 input).
    fill_value : float
        The value of output voxels whose mapped point is outside the moving image.
    chunks : int or tuple, optional
        Output chunks (z, y, x); default the fixed image's dask chunks, else 128³.
    dtype : optional
        Output dtype (default as above).
    kernels : bool
        Use the compiled (numba) kernels where the transform allows (default); False takes
        the reference path (scipy per point), which tests and benchmarks compare with.

    Returns
    -------
    xarray.DataArray
        A lazy image on the output grid.
    """
    if not isinstance(moving, xr.DataArray) or tuple(moving.dims) != SPATIAL_DIMS:
        raise InputError(
            f"warp takes a 3-D moving image with dims (z, y, x); got dims "
            f"{getattr(moving, 'dims', type(moving).__name__)}. Warp each channel or time "
            "point separately (e.g. image.isel(c=0)).")
    if not isinstance(transform, Transform):
        raise InputError(f"warp needs an ngffreg Transform; got {type(transform).__name__}.")
    order = interpolation_order(interpolator)
    grid = _as_grid(like, shape, spacing, origin, direction, unit)
    if units(moving) != grid.unit:
        moving = to_units(moving, grid.unit)
    mgrid = Grid.of(moving)
    moving_data = (moving.data if isinstance(moving.data, da.Array)
                   else np.asarray(moving.data))
    source = moving_data[None]  # (1, z, y, x): the sampler's channel axis
    if dtype is None:
        dtype = moving.dtype if order == 0 else (
            np.float64 if moving.dtype == np.float64 else np.float32)
    dtype = np.dtype(dtype)
    fill = np.asarray(fill_value).astype(dtype)
    cache = f"warp-{uuid.uuid4().hex}"  # this call's entries in the chunk cache
    steps = _flatten(transform) if kernels else None
    compiled = _kernels() if steps is not None else None
    warper = (None if compiled is None else
              _ChunkWarper(compiled, steps, grid, mgrid, np.dtype(moving.dtype), order, dtype,
                            fill, cache))

    def block(block_info=None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        out_shape = tuple(b - a for a, b in loc)
        if warper is not None and not warper.broken:
            try:
                out = warper.chunk(loc, moving_data, source)
            except compiled.NumbaError:  # types the kernels do not compile: reference path
                warper.broken, out = True, None
            if out is not None:
                return out.reshape(out_shape)
        region = tuple(slice(a, b) for a, b in loc)
        cidx = mgrid.continuous_index(transform.apply_grid(grid, region))
        inside = mgrid.inside(cidx)
        everywhere = bool(inside.all())
        out = np.full(len(cidx), fill, dtype=dtype)
        if everywhere or inside.any():
            values = sample(source, cidx if everywhere else cidx[inside], order=order,
                            cache=cache)[:, 0]
            if order and np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                values = np.clip(np.rint(values), info.min, info.max)
            if everywhere:
                out[:] = values
            else:
                out[inside] = values
        return out.reshape(out_shape)

    data = da.map_blocks(block, chunks=_output_chunks(like, grid, chunks), dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype=dtype),
                         name=f"ngffreg-warp-{uuid.uuid4().hex}")
    attrs = {"warped_from": moving.attrs.get("source", moving.name),
             "interpolator": interpolator}
    return grid.image(data, name=moving.name or "image", attrs=attrs)


# ---------------------------------------------------------------------------
# pyramids and output stores
# ---------------------------------------------------------------------------
PYRAMID_MODES = ("downsample", "per-level")


def warp_covered(moving: xr.DataArray, transform: Transform, *, like: Any,
                 interpolator: str = "linear") -> tuple[xr.DataArray, np.ndarray]:
    """:func:`warp` computed now, with where its points fell inside the moving image: the
    image (0 outside, as ``warp`` fills by default) and a boolean mask of the voxels that
    read moving data (NaN voxels of the moving image count as outside)."""
    from .image import load

    dtype = np.float32 if interpolation_order(interpolator) == 0 else None
    out = load(warp(moving, transform, like=like, interpolator=interpolator,
                    fill_value=np.nan, dtype=dtype))
    covered = np.isfinite(out.values)
    out.values[~covered] = 0
    return out, covered


def _moving_levels(moving: Any) -> list[xr.DataArray]:
    if isinstance(moving, xr.DataTree):
        from .pyramid import levels

        return levels(moving)
    if isinstance(moving, xr.DataArray):
        return [moving]
    return list(moving)


def choose_moving_level(moving_levels: list[xr.DataArray], output_spacing: Any,
                        unit: str | None = None) -> tuple[int, str]:
    """The coarsest moving level whose voxels are no larger than ``output_spacing`` (in
    ``unit``, default the moving image's) on any axis, so the output is not under-sampled,
    and why."""
    from .pyramid import coarsest_level

    if len(moving_levels) == 1:
        return 0, "the moving image has one level"
    target = np.asarray(output_spacing, dtype=np.float64)
    unit = unit or units(moving_levels[0])
    spacings = [np.asarray(image_spacing(lv)) * unit_factor(units(lv), unit)
                for lv in moving_levels]
    best = coarsest_level(spacings, target, slack=1e-6)
    return best, (f"moving level {best} (spacing {np.round(spacings[best], 6).tolist()}) is "
                  f"the coarsest no coarser than the output's {np.round(target, 6).tolist()}")


def warp_pyramid(
    moving: Any,
    transform: Transform,
    *,
    like: xr.DataArray,
    n_levels: int | None = None,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: Any = DEFAULT_CHUNK,
) -> tuple[xr.DataTree, list[dict[str, Any]]]:
    """Warp every level of an output pyramid from the moving level whose spacing fits.

    The output levels are the fixed grid's own pyramid (:func:`ngffreg.to_pyramid`); each
    is warped directly from the coarsest moving level whose voxels are no larger than the
    output level's (``moving`` may be one image, a list of levels or a pyramid). Returns the
    lazy pyramid and, per level, which moving level it came from and why.
    """
    from .pyramid import levels, to_pyramid

    moving_levels = _moving_levels(moving)
    method = "nearest" if interpolation_order(interpolator) == 0 else "mean"
    grid0 = Grid.of(like)
    template = grid0.image(da.zeros(grid0.shape, dtype=np.uint8, chunks=chunks),
                           name=moving_levels[0].name or "image")
    pyramid = to_pyramid(template, n_levels=n_levels, method=method, chunks=chunks)
    report = []
    for k, level_grid in enumerate(levels(pyramid)):
        j, why = choose_moving_level(moving_levels, image_spacing(level_grid), grid0.unit)
        out = warp(moving_levels[j], transform, like=level_grid, interpolator=interpolator,
                   fill_value=fill_value, chunks=chunks)
        node = pyramid[f"scale{k}"]
        pyramid[f"scale{k}"] = xr.Dataset({template.name: out}, attrs=dict(node.attrs))
        report.append({"level": k, "moving_level": j, "reason": why})
    pyramid.attrs["method"] = f"warped per level ({interpolator})"
    return pyramid, report


def write_warped(
    moving: Any,
    transform: Transform,
    path: Any,
    *,
    like: xr.DataArray,
    interpolator: str = "linear",
    fill_value: float = 0.0,
    chunks: int = DEFAULT_CHUNK,
    n_levels: int | None = None,
    pyramid: str = "downsample",
    inverse: Transform | None = None,
    overwrite: bool = False,
    progress: bool = False,
    scheduler: Any = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Warp ``moving`` onto ``like``'s grid and write the registered pyramid as OME-Zarr 0.6,
    with ``transform`` stored beside it as the ``registration`` (fixed → moving; a bijection
    when ``inverse`` is given or ``transform`` is one): an OME-NGFF 0.6 scene whose image is
    ``registered/`` (see :mod:`ngffreg.transforms.scene`).

    ``pyramid="downsample"`` (default) warps level 0 once and derives each coarser level by
    downsampling what was written (block mean; centre pick for nearest-neighbour labels), so
    every voxel is interpolated once and the levels agree with each other.
    ``pyramid="per-level"`` warps each output level from the coarsest moving level whose
    spacing fits (see :func:`warp_pyramid`): less reading for a moving pyramid whose coarse
    levels exist, at the price of interpolating every level. The transform is written into
    the store before it is renamed into place, so a failure leaves nothing behind.

    ``scheduler``: a ``dask.distributed`` client to warp and write on (its workers must
    reach the inputs, the transform's fields and ``path``); default: threads here.

    Returns the store path and, per output level, its source and the reason.
    """
    from .io.write import to_ome_zarr
    from .transforms.ngff import write_registration
    from .transforms.scene import IMAGE, IMAGE_SYSTEM, start_scene

    if pyramid not in PYRAMID_MODES:
        raise InputError(f"pyramid must be one of {PYRAMID_MODES}; got {pyramid!r}.")
    moving_levels = _moving_levels(moving)
    method = "nearest" if interpolation_order(interpolator) == 0 else "mean"
    if pyramid == "per-level" and len(moving_levels) > 1:
        data, report = warp_pyramid(moving_levels, transform, like=like, n_levels=n_levels,
                                    interpolator=interpolator, fill_value=fill_value,
                                    chunks=chunks)
    else:
        data = warp(moving_levels[0], transform, like=like, interpolator=interpolator,
                    fill_value=fill_value, chunks=chunks)
        why = ("level 0 warped, then downsampled" if pyramid == "downsample" else
               "level 0 warped, then downsampled: the moving image has one level")
        report = [{"level": 0, "moving_level": 0, "reason": why}]

    def store_transform(tmp: Any) -> None:
        start_scene(tmp)
        write_registration(tmp, transform, inverse=inverse)

    out = to_ome_zarr(
        data, path, version="0.6", chunks=chunks, n_levels=n_levels, method=method,
        overwrite=overwrite, progress=progress, coordinate_system=IMAGE_SYSTEM,
        image_group=IMAGE,
        attributes={"warp": {"interpolator": interpolator, "fill_value": fill_value,
                             "pyramid": pyramid, "levels": report}},
        before_publish=store_transform, scheduler=scheduler)
    return out, report
