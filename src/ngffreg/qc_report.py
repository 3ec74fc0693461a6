"""The QC report of a registration output store: figures, and one HTML page that gathers them.

:func:`write_report` (``ngffreg qc OUT.ome.zarr``; :func:`ngffreg.register` calls it) writes
into ``OUT.ome.zarr/qc/``:

- ``overlay.png``: the fixed image (magenta) over the moving one (green) on three
  orthogonal planes through the centre, before registration (the moving image resampled
  onto the fixed grid through the identity: where it lies in physical space) and after
  (the registered image of the store); aligned structures turn grey-white;
- ``checkerboard.png``: the same pairs as alternating square tiles (fixed, moving, …);
- ``blocks.png``: each block's improvement of the normalised cross-correlation
  (``ncc_after − ncc_before``) on the block layer through the centre, per axis, over the
  fixed image; ``block_layers.png``: every layer of the block grid (one pass per row group);
  failed, rejected, skipped blocks are hatched;
- ``jacobian.png``: the Jacobian determinant of the stored transform's first displacement
  field (the fine field) on three planes, a diverging colour map centred on 1, folds
  (≤ 0) in bright green, block faces dashed;
- ``index.html``: the figures, the numbers of ``summary.json`` and the block table
  (``blocks.csv``) with flagged rows highlighted; the images are referenced relatively, so
  the ``qc/`` folder (or the store) can be moved or copied as a whole.

Everything is drawn in physical coordinates (axes in the image's unit, the aspect ratio
from the spacing) at a coarse level of the registered pyramid (the finest with at most
:data:`MAX_VOXELS` voxels), and only the three planes are computed: the cost does not grow
with the volume. A grid whose direction is a signed permutation is shown in physical axes
(z up in the y and x planes; in the z plane, y grows downwards); an oblique one in its own
grid axes.
"""

from __future__ import annotations

import csv
import datetime
import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .blocks import BlockPlan, subgrid
from .errors import InputError, InputNotFoundError
from .image import Grid, is_signed_permutation, to_units, units
from .qc import jacobian_determinant, ncc

#: The report level: the finest level of the registered pyramid with at most this many voxels.
MAX_VOXELS = 8_000_000
#: Names of the display axes (physical z, y, x).
AXES = ("z", "y", "x")
#: Per plane (its normal, a display axis): (vertical axis, horizontal axis, vertical axis
#: growing downwards).
LAYOUT = {0: (1, 2, True), 1: (0, 2, False), 2: (0, 1, False)}
#: Statuses drawn as flagged.
FLAGGED = ("failed", "rejected")
#: A seam ratio (largest displacement gradient at block faces over the largest inside)
#: above this is marked in the page.
SEAM_WARNING = 1.5
#: Figure files, in the order of the page.
FIGURES = ("overlay.png", "checkerboard.png", "blocks.png", "block_layers.png", "jacobian.png")
_SHORT_UNITS = {"millimeter": "mm", "micrometer": "µm", "nanometer": "nm", "meter": "m",
                "centimeter": "cm", "angstrom": "Å"}
_DPI = 100


def short_unit(unit: str) -> str:
    """``millimeter`` → ``mm``, ``micrometer`` → ``µm`` (other names as they are)."""
    return _SHORT_UNITS.get(unit, unit)


# ---------------------------------------------------------------------------------------
# display space
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """How a grid's index axes lie in the display space: grid axis ``k`` runs along display
    axis ``perm[k]``, its index ``i`` at coordinate ``start[k] + sign[k] * step[k] * i``.
    Display axes are the physical z, y, x for a grid whose direction is a signed permutation
    (the identity included), else the grid's own frame (``oblique``)."""

    shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    sign: tuple[float, float, float]
    start: tuple[float, float, float]
    step: tuple[float, float, float]
    oblique: bool = False

    @classmethod
    def of(cls, grid: Grid) -> Frame:
        d = grid.direction
        fo, sp = grid.frame_origin, grid.spacing
        if is_signed_permutation(d):
            perm = tuple(int(np.argmax(np.abs(d[:, k]))) for k in range(3))
            sign = tuple(float(np.sign(d[perm[k], k])) for k in range(3))
            start = tuple(sign[k] * float(fo[k]) for k in range(3))
            return cls(grid.shape, perm, sign, start, tuple(map(float, sp)))  # type: ignore
        return cls(grid.shape, (0, 1, 2), (1.0, 1.0, 1.0), tuple(map(float, fo)),  # type: ignore
                   tuple(map(float, sp)), oblique=True)

    def axis(self, q: int) -> int:
        """The grid axis along display axis ``q``."""
        return self.perm.index(q)

    def coord(self, k: int, index: Any) -> Any:
        """Display coordinate (along ``perm[k]``) of index ``index`` of grid axis ``k``."""
        return self.start[k] + self.sign[k] * self.step[k] * np.asarray(index, dtype=float)

    def span(self, k: int, lo: float = -0.5, hi: float | None = None) -> tuple[float, float]:
        """The display interval of indices ``[lo, hi]`` of grid axis ``k`` (voxel edges by
        default: the whole axis)."""
        hi = self.shape[k] - 0.5 if hi is None else hi
        a, b = float(self.coord(k, lo)), float(self.coord(k, hi))
        return min(a, b), max(a, b)

    def bounds(self) -> np.ndarray:
        """(3, 2) display extent per display axis (voxel edges)."""
        out = np.empty((3, 2))
        for k in range(3):
            out[self.perm[k]] = self.span(k)
        return out

    def index_of(self, q: int, c: float) -> tuple[int, int]:
        """The grid axis along display axis ``q`` and the index (clipped) nearest ``c``."""
        k = self.axis(q)
        i = (c - self.start[k]) / (self.sign[k] * self.step[k])
        return k, int(np.clip(np.round(i), 0, self.shape[k] - 1))

    def orient(self, plane: np.ndarray, q: int) -> tuple[np.ndarray, tuple[float, ...]]:
        """A 2-D plane (normal to display axis ``q``, its axes the remaining grid axes in
        order) as shown: rows along the vertical display axis, columns along the horizontal
        one, both growing with the coordinate; and its extent ``(left, right, bottom,
        top)`` for ``imshow(origin="lower")``."""
        k = self.axis(q)
        ka, kb = (j for j in range(3) if j != k)
        horizontal = LAYOUT[q][1]
        a = np.asarray(plane)
        kv, kh = ka, kb
        if self.perm[ka] == horizontal:
            a, kv, kh = a.T, kb, ka
        if self.sign[kv] < 0:
            a = a[::-1]
        if self.sign[kh] < 0:
            a = a[:, ::-1]
        (h0, h1), (v0, v1) = self.span(kh), self.span(kv)
        return np.ascontiguousarray(a), (h0, h1, v0, v1)

    def axis_label(self, q: int, unit: str) -> str:
        name = AXES[q] + ("′ (grid axis)" if self.oblique else "")
        return f"{name} ({short_unit(unit)})"


# ---------------------------------------------------------------------------------------
# the store and its inputs
# ---------------------------------------------------------------------------------------
def _summary(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / "qc" / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def check_store(output_store: Any) -> Path:
    """The path of a registration output store, or an error that says what is wrong."""
    from .io.read import open_levels

    store = Path(output_store).expanduser()
    if not store.exists():
        raise InputNotFoundError(f"{store}: no such output store. Give the OUT.ome.zarr that "
                                 "`ngffreg register` wrote.")
    if not store.is_dir() or not (store / "zarr.json").is_file():
        raise InputError(f"{store} is not a registration output store (an OME-Zarr folder "
                         "holding zarr.json); give the OUT.ome.zarr that `ngffreg register` "
                         "wrote.")
    if not (store / "qc" / "summary.json").is_file() and not (store / "blocks").is_dir():
        raise InputError(f"{store} holds no registration results (no qc/summary.json, no "
                         "blocks/): it is not an output of `ngffreg register`.")
    try:
        open_levels(store)
    except Exception as exc:
        raise InputError(f"{store}: its registered image cannot be read ({exc}).") from exc
    return store


def _levels(image: Any, record: dict[str, Any] | None, unit: str, role: str,
            notes: list[str]) -> list[xr.DataArray] | None:
    """The levels of the ``role`` input in ``unit``: ``image`` (a path, image, pyramid or
    levels) if given, else the path recorded in ``summary.json``; ``None`` (with a note)
    when there is neither."""
    from .registration.coarse import image_levels

    record = record or {}
    if image is None:
        path = record.get("path")
        if not path:
            notes.append(f"The {role} image was in memory when registered and is not "
                         f"available now: pass {role}= (or --{role} PATH to `ngffreg qc`) "
                         f"to show it.")
            return None
        if not Path(path).exists():
            notes.append(f"The {role} image {path} recorded at registration no longer "
                         f"exists: pass {role}= (or --{role} PATH to `ngffreg qc`).")
            return None
        image = path
    if isinstance(image, (str, os.PathLike)):
        levels = image_levels(Path(image), voxel_size=record.get("voxel_size"),
                              unit=record.get("unit"), name=role)
    else:
        levels = image_levels(image, name=role)
    return [lv if units(lv) == unit else to_units(lv, unit) for lv in levels]


# ---------------------------------------------------------------------------------------
# the planes of the overlay
# ---------------------------------------------------------------------------------------
@dataclass
class ReportPlanes:
    """The three planes (keys: display axis 0, 1, 2 = the plane normal to z, y, x) through
    the centre of the report level, as the figures show them: ``fixed``, ``before`` (moving
    through the identity) and ``after`` (the registered image), each an oriented 2-D array
    (rows along the vertical axis) or ``None`` when unavailable; ``extent`` per plane
    (``imshow(origin="lower")``), ``position`` the plane's coordinate on its normal."""

    level: int
    grid: Grid
    frame: Frame
    centre: np.ndarray
    unit: str
    after: dict[int, np.ndarray]
    fixed: dict[int, np.ndarray] | None
    before: dict[int, np.ndarray] | None
    extent: dict[int, tuple[float, ...]]
    position: dict[int, float]
    notes: list[str] = field(default_factory=list)

    def ncc(self, which: str) -> dict[int, float]:
        """NCC of the fixed plane with the ``"before"`` or ``"after"`` plane, per plane."""
        other = getattr(self, which)
        if self.fixed is None or other is None:
            return {}
        return {q: ncc(self.fixed[q], other[q]) for q in range(3)}


def report_level(levels: list[xr.DataArray], max_voxels: int = MAX_VOXELS) -> int:
    """The finest level with at most ``max_voxels`` voxels (else the coarsest)."""
    for i, lv in enumerate(levels):
        if int(np.prod(lv.shape)) <= max_voxels:
            return i
    return len(levels) - 1


def _plane_grid(grid: Grid, k: int, index: int) -> Grid:
    region = [slice(None)] * 3
    region[k] = slice(index, index + 1)
    return subgrid(grid, tuple(region))  # type: ignore[arg-type]


def _isel(image: xr.DataArray, k: int, index: int) -> np.ndarray:
    return np.asarray(image.isel({AXES[k]: index}).values, dtype=np.float32)


def _resampled_plane(levels: list[xr.DataArray], grid: Grid, k: int, index: int
                     ) -> np.ndarray:
    """A plane of ``grid`` sampled from the best level of ``levels`` through the identity
    (the level itself when its grid is ``grid``)."""
    from .transforms.model import Identity
    from .warp import choose_moving_level, warp

    for lv in levels:
        if Grid.of(lv).matches(grid):
            return _isel(lv, k, index)
    # the coarsest level no coarser than the grid (nothing under-sampled, little read)
    lv = levels[choose_moving_level(levels, grid.spacing, grid.unit)[0]]
    out = warp(lv, Identity(), like=_plane_grid(grid, k, index), interpolator="linear")
    return np.asarray(out.values, dtype=np.float32).reshape(
        [n for j, n in enumerate(grid.shape) if j != k])


def report_planes(output_store: Any, *, fixed: Any = None, moving: Any = None,
                  max_voxels: int = MAX_VOXELS) -> ReportPlanes:
    """The planes the overlay and checkerboard figures show (see :class:`ReportPlanes`):
    on the report level of the registered pyramid, through its centre; ``fixed`` and
    ``moving`` as in :func:`write_report`."""
    from .io.read import open_levels

    store = Path(output_store).expanduser()
    registered = open_levels(store, name="registered")
    level = report_level(registered, max_voxels)
    image = registered[level]
    grid = Grid.of(image)
    frame = Frame.of(grid)
    centre = frame.bounds().mean(axis=1)
    inputs = _summary(store).get("inputs") or {}
    notes: list[str] = []
    fixed_levels = _levels(fixed, inputs.get("fixed"), grid.unit, "fixed", notes)
    moving_levels = _levels(moving, inputs.get("moving"), grid.unit, "moving", notes)
    after: dict[int, np.ndarray] = {}
    fixed_planes: dict[int, np.ndarray] | None = {} if fixed_levels else None
    before: dict[int, np.ndarray] | None = {} if moving_levels and fixed_levels else None
    extent: dict[int, tuple[float, ...]] = {}
    position: dict[int, float] = {}
    for q in range(3):
        k, index = frame.index_of(q, float(centre[q]))
        position[q] = float(frame.coord(k, index))
        after[q], extent[q] = frame.orient(_isel(image, k, index), q)
        if fixed_planes is not None:
            fixed_planes[q] = frame.orient(
                _resampled_plane(fixed_levels, grid, k, index), q)[0]
        if before is not None:
            before[q] = frame.orient(
                _resampled_plane(moving_levels, grid, k, index), q)[0]
    if moving_levels and not fixed_levels:
        notes.append("Without the fixed image there is nothing to overlay the moving image "
                     "on; the registered image is shown alone.")
    return ReportPlanes(level, grid, frame, centre, grid.unit, after, fixed_planes, before,
                        extent, position, notes)


# ---------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------
def _window(planes: Any) -> tuple[float, float]:
    """Display window of a set of planes: their 1st and 99.5th percentiles."""
    values = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in planes])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99.5])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _scaled(a: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((np.nan_to_num(np.asarray(a, dtype=np.float64)) - lo) / (hi - lo), 0, 1)


def _figure(widths: list[float], height: float, nrows: int, *, width_in: float = 13.0,
            extra_h: float = 1.2, extra_w: float = 0.0) -> tuple[Any, list[Any], list[Any]]:
    """A figure of ``nrows`` rows (subfigures, each with a title of its own) of panels whose
    data widths are ``widths`` and height ``height``, so that panels of equal aspect fill
    it; returns the figure, the rows and their grid specs."""
    from matplotlib.figure import Figure

    scale = (width_in - 1.0 - extra_w) / (sum(widths) * 1.15)
    row_in = height * scale + 0.9
    fig = Figure(figsize=(width_in, min(max(nrows * row_in + extra_h, 3.0), 40.0)), dpi=_DPI)
    fig.set_layout_engine("constrained", h_pad=0.08, w_pad=0.06)
    rows = list(fig.subfigures(nrows, 1, squeeze=False)[:, 0]) if nrows > 1 else [fig]
    grids = [r.add_gridspec(1, len(widths), width_ratios=widths) for r in rows]
    return fig, rows, grids


def _row_title(row: Any, text: str) -> None:
    row.suptitle(text, x=0.01, ha="left", fontsize=10, fontweight="bold")


def _panel_axes(ax: Any, q: int, frame: Frame, unit: str, extent: tuple[float, ...]) -> None:
    vertical, horizontal, down = LAYOUT[q]
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    if down:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xlabel(frame.axis_label(horizontal, unit), fontsize=9)
    ax.set_ylabel(frame.axis_label(vertical, unit), fontsize=9)
    ax.tick_params(labelsize=8)


def _plane_title(planes: ReportPlanes, q: int) -> str:
    u = short_unit(planes.unit)
    return f"{AXES[q]}{'′' if planes.frame.oblique else ''} = {planes.position[q]:.4g} {u}"


def _message(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10,
            transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.8")


def _pair_figure(planes: ReportPlanes, path: Path, style: str) -> Path:
    """``overlay`` (magenta / green) or ``checkerboard`` panels: rows before, after; columns
    the planes normal to z, y, x."""
    widths = [planes.extent[q][1] - planes.extent[q][0] for q in range(3)]
    height = max(planes.extent[q][3] - planes.extent[q][2] for q in range(3))
    fig, rows, grids = _figure(widths, height, 2, extra_h=0.6)
    fixed = planes.fixed
    fwin = _window(fixed.values()) if fixed else _window(planes.after.values())
    moving = list(planes.after.values()) + (list(planes.before.values()) if planes.before
                                            else [])
    mwin = _window(moving)
    tile = _tile(planes)
    kinds = (("before", planes.before,
              "Before: the moving image resampled onto the fixed grid through the identity "
              "(where it lies in physical space)"),
             ("after", planes.after, "After: the registered image"))
    for row, grid, (key, images, label) in zip(rows, grids, kinds, strict=True):
        _row_title(row, label)
        scores = planes.ncc(key)
        for q in range(3):
            ax = row.add_subplot(grid[0, q])
            extent = planes.extent[q]
            if images is None or fixed is None:
                if images is not None:  # no fixed image: the registered image alone
                    ax.imshow(_scaled(images[q], mwin), cmap="gray", vmin=0, vmax=1,
                              origin="lower", extent=extent, interpolation="nearest")
                    _panel_axes(ax, q, planes.frame, planes.unit, extent)
                    ax.set_title(f"{_plane_title(planes, q)} · {key} (no fixed image)",
                                 fontsize=9)
                else:
                    _message(ax, "moving image not available" if fixed is not None
                             else "fixed image not available")
                    ax.set_title(f"{_plane_title(planes, q)} · {key}", fontsize=9)
                continue
            f = _scaled(fixed[q], fwin)
            m = _scaled(images[q], mwin)
            if style == "overlay":
                ax.imshow(np.stack([f, m, f], axis=-1), origin="lower", extent=extent,
                          interpolation="nearest")
            else:
                board = _checker(f.shape, extent, tile, LAYOUT[q][2])
                ax.imshow(np.where(board, f, m), cmap="gray", vmin=0, vmax=1, origin="lower",
                          extent=extent, interpolation="nearest")
                _tile_lines(ax, extent, tile, LAYOUT[q][2])
            _panel_axes(ax, q, planes.frame, planes.unit, extent)
            score = scores.get(q, float("nan"))
            ax.set_title(f"{_plane_title(planes, q)} · {key} · NCC "
                         f"{'n/a' if not np.isfinite(score) else f'{score:.3f}'}", fontsize=9)
    g = planes.grid
    level = (f"registered level {planes.level}: {' × '.join(map(str, g.shape))} voxels of "
             f"{' × '.join(f'{s:.3g}' for s in g.spacing)} {short_unit(g.unit)}")
    if style == "overlay":
        fig.suptitle("Fixed (magenta) over moving (green): aligned structures turn "
                     f"grey-white\n{level}", fontsize=11)
    else:
        fig.suptitle(f"Checkerboard of fixed and moving in {tile:.3g} "
                     f"{short_unit(planes.unit)} tiles (fixed in the top-left one): edges run "
                     f"on across tile borders where aligned\n{level}", fontsize=11)
    fig.savefig(path)
    return path


def _tile_lines(ax: Any, extent: tuple[float, ...], tile: float, down: bool) -> None:
    h0, h1, v0, v1 = extent
    for x in np.arange(h0 + tile, h1, tile):
        ax.axvline(x, color="#ffd000", linewidth=0.5, alpha=0.35)
    rows = np.arange(v0 + tile, v1, tile) if down else np.arange(v1 - tile, v0, -tile)
    for y in rows:
        ax.axhline(y, color="#ffd000", linewidth=0.5, alpha=0.35)


def _tile(planes: ReportPlanes) -> float:
    """Checkerboard tile length: a round number near 1/8 of the largest extent."""
    size = max(max(e[1] - e[0], e[3] - e[2]) for e in planes.extent.values()) / 8
    power = 10 ** math.floor(math.log10(size))
    return float(min((m * power for m in (1, 2, 2.5, 5, 10)), key=lambda v: abs(v - size)))


def _checker(shape: tuple[int, ...], extent: tuple[float, ...], tile: float,
             down: bool) -> np.ndarray:
    """True where the fixed image shows: squares of ``tile`` in display coordinates counted
    from the panel's top-left corner (the top is ``v0`` when the vertical axis grows
    downwards, else ``v1``)."""
    h0, h1, v0, v1 = extent
    rows, cols = shape
    hc = h0 + (np.arange(cols) + 0.5) * (h1 - h0) / cols
    vc = v0 + (np.arange(rows) + 0.5) * (v1 - v0) / rows
    from_top = vc - v0 if down else v1 - vc
    return ((np.floor(from_top / tile)[:, None] + np.floor((hc - h0) / tile)[None, :])
            % 2 == 0)


# ---------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------
@dataclass
class BlockPass:
    """One pass of blocks found in a store: its plan and each block's record (``None``
    when missing) by block id."""

    name: str
    plan: BlockPlan
    records: dict[int, dict[str, Any] | None]

    @property
    def label(self) -> str:
        p = self.plan
        return (f"{self.name + ': ' if self.name else ''}level {p.level}, "
                f"{' × '.join(map(str, p.counts))} blocks of "
                f"{' × '.join(map(str, p.size))} voxels")


def read_blocks(output_store: Any) -> list[BlockPass]:
    """The block passes of a store, coarse to fine: ``blocks/plan.json`` (one pass) or
    ``blocks/pass0``, ``blocks/pass1``, … (multi-resolution blocks); a plan without block
    folders gives records ``None``."""
    store = Path(output_store)
    folders: list[tuple[str, Path]] = []
    if (store / "blocks" / "plan.json").is_file():
        folders = [("", store / "blocks")]
    elif (store / "blocks").is_dir():
        found = [p for p in (store / "blocks").glob("pass*") if (p / "plan.json").is_file()]
        folders = [(p.name, p) for p in sorted(found, key=lambda p: int(p.name[4:] or 0)
                                                 if p.name[4:].isdigit() else 0)]
    elif (store / "plan.json").is_file():
        folders = [("", store)]
    out = []
    for name, folder in folders:
        plan = BlockPlan.from_dict(json.loads((folder / "plan.json").read_text()))
        records: dict[int, dict[str, Any] | None] = {}
        for b in plan.blocks:
            meta = folder / f"b{b.id:06d}" / "zarr.json"
            try:
                doc = json.loads(meta.read_text())
                records[b.id] = dict(doc.get("attributes", {}).get("ngffreg_block") or {}) or None
            except (OSError, ValueError):
                records[b.id] = None
        out.append(BlockPass(name, plan, records))
    return out


def _gain(record: dict[str, Any] | None) -> float:
    if not record or record.get("status") in ("failed", "skipped", "declined"):
        return float("nan")
    try:
        value = float(record["ncc_after"]) - float(record["ncc_before"])
    except (KeyError, TypeError, ValueError):
        return float("nan")
    return value if np.isfinite(value) else float("nan")


def _status(record: dict[str, Any] | None) -> str:
    return (record or {}).get("status") or "missing"


#: How a status is drawn: face colour (None: the gain's colour), hatch, edge colour, width.
_STYLE = {"ok": (None, "", "0.25", 0.6), "rejected": (None, "xx", "red", 2.0),
          "failed": ("white", "xx", "black", 1.2), "skipped": ((0.85, 0.85, 0.85), "//",
                                                               "0.55", 0.6),
          "declined": ((0.75, 0.85, 0.95), "\\\\", "0.45", 0.6),
          "missing": ("white", "..", "0.5", 0.6)}


#: Face of a block whose correlation could not be measured (a constant block).
_NO_GAIN = (0.95, 0.93, 0.85, 1.0)


def _gain_norm(passes: list[BlockPass]) -> Any:
    from matplotlib.colors import Normalize

    gains = np.array([_gain(r) for p in passes for r in p.records.values()])
    gains = gains[np.isfinite(gains)]
    top = float(np.max(np.abs(gains))) if gains.size else 0.1
    top = max(top, 0.01)
    return Normalize(vmin=-top, vmax=top)


def _draw_blocks(ax: Any, bp: BlockPass, q: int, layer: int, cmap: Any, norm: Any, *,
                 alpha: float = 0.65, text: bool = True) -> int:
    """The cores of ``bp``'s blocks in ``layer`` along display axis ``q``, in display
    coordinates, coloured by gain, hatched by status; returns how many were drawn."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    frame = Frame.of(bp.plan.grid)
    k = frame.axis(q)
    vertical, horizontal, _ = LAYOUT[q]
    kv, kh = frame.axis(vertical), frame.axis(horizontal)
    groups: dict[str, list[Any]] = {}
    colours: dict[str, list[Any]] = {}
    cells = [b for b in bp.plan.blocks if b.index[k] == layer]
    labels = []
    for b in cells:
        rec = bp.records.get(b.id)
        status = _status(rec)
        if status not in _STYLE:
            status = "missing"
        h0, h1 = frame.span(kh, b.core[kh][0] - 0.5, b.core[kh][1] - 0.5)
        v0, v1 = frame.span(kv, b.core[kv][0] - 0.5, b.core[kv][1] - 0.5)
        groups.setdefault(status, []).append(Rectangle((h0, v0), h1 - h0, v1 - v0))
        face = _STYLE[status][0]
        if face is None:
            gain = _gain(rec)
            face = cmap(norm(gain)) if np.isfinite(gain) else _NO_GAIN
        colours.setdefault(status, []).append(face)
        labels.append(((h0 + h1) / 2, (v0 + v1) / 2, b.id, status, _gain(rec)))
    for status, patches in groups.items():
        _, hatch, edge, width = _STYLE[status]
        coll = PatchCollection(patches, facecolors=colours[status], edgecolors=edge,
                               linewidths=width, hatch=hatch or None, alpha=alpha)
        ax.add_collection(coll)
    if text and len(cells) <= 64:
        size = 8 if len(cells) <= 16 else 6
        for h, v, bid, status, gain in labels:
            mark = {"rejected": " R", "failed": " F", "skipped": " S", "declined": " D",
                    "missing": " ?"}
            label = f"{bid}{mark.get(status, '')}"
            if len(cells) <= 16 and status in ("ok", "rejected"):
                label += f"\n{gain:+.3f}" if np.isfinite(gain) else "\nn/a"
            ax.text(h, v, label, ha="center", va="center",
                    fontsize=size, color="black",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.7})
    return len(cells)


def _status_legend(fig: Any, passes: list[BlockPass]) -> None:
    from matplotlib.patches import Patch

    seen = {_status(r) for p in passes for r in p.records.values()}
    if seen <= {"ok"}:
        return
    handles = []
    names = {"rejected": "rejected (R): folded or got worse; filled from neighbours",
             "failed": "failed (F): filled from neighbours",
             "skipped": "skipped (S): no signal",
             "declined": "declined (D): no gain on held-out voxels; coarse map kept",
             "missing": "no record (?)"}
    for status, text in names.items():
        if status in seen:
            face, hatch, edge, width = _STYLE[status]
            handles.append(Patch(facecolor=face or "white", edgecolor=edge, hatch=hatch,
                                 linewidth=width, label=text))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9,
               frameon=False)


def _blocks_figure(passes: list[BlockPass], planes: ReportPlanes, path: Path) -> Path:
    """Per pass (rows), the block layer through the report's centre along each axis
    (columns), the fixed image's outlines drawn over it."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    cmap = colormaps["RdBu"]
    norm = _gain_norm(passes)
    bounds = [Frame.of(p.plan.grid).bounds() for p in passes]
    lo = np.min([b[:, 0] for b in bounds], axis=0)
    hi = np.max([b[:, 1] for b in bounds], axis=0)
    extents = {}
    for q in range(3):
        v, h, _ = LAYOUT[q]
        e = planes.extent[q]
        extents[q] = (min(e[0], lo[h]), max(e[1], hi[h]), min(e[2], lo[v]), max(e[3], hi[v]))
    widths = [extents[q][1] - extents[q][0] for q in range(3)]
    height = max(extents[q][3] - extents[q][2] for q in range(3))
    fig, rows, grids = _figure(widths, height, len(passes), extra_h=1.0, extra_w=1.2)
    background = planes.fixed or planes.after
    bwin = _window(background.values())
    u = short_unit(planes.unit)
    for row, grid, bp in zip(rows, grids, passes, strict=True):
        frame = Frame.of(bp.plan.grid)
        axes = []
        if len(passes) > 1:
            _row_title(row, bp.label)
        for q in range(3):
            ax = row.add_subplot(grid[0, q])
            axes.append(ax)
            ax.set_facecolor("0.92")
            k, index = frame.index_of(q, float(planes.position[q]))
            edges = bp.plan.edges[k]
            layer = int(np.clip(np.searchsorted(edges, index, side="right") - 1, 0,
                                len(edges) - 2))
            _draw_blocks(ax, bp, q, layer, cmap, norm, alpha=1.0)
            _outline(ax, _scaled(background[q], bwin), planes.extent[q])
            _panel_axes(ax, q, frame, planes.unit, extents[q])
            a, b = frame.span(k, edges[layer] - 0.5, edges[layer + 1] - 0.5)
            ax.set_title(f"{AXES[q]} layer {layer + 1} of {len(edges) - 1} "
                         f"({a:.4g} to {b:.4g} {u})", fontsize=9)
        row.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.85,
                     label="NCC after − before (blue: better)")
    counts = _status_counts(passes)
    _status_legend(fig, passes)
    title = ("Per-block gain in normalised cross-correlation on the block layers through "
             "the centre (lines: fixed image outlines)\n")
    if len(passes) == 1:
        title += f"{passes[0].label}; "
    fig.suptitle(f"{title}{_counts_text(counts)}", fontsize=11)
    fig.savefig(path)
    return path


def _outline(ax: Any, image: np.ndarray, extent: tuple[float, ...]) -> None:
    """The image's outlines (iso-lines of its display scale) over a panel."""
    if image.shape[0] < 2 or image.shape[1] < 2 or not image.max() > image.min():
        return
    h0, h1, v0, v1 = extent
    rows, cols = image.shape
    hc = h0 + (np.arange(cols) + 0.5) * (h1 - h0) / cols
    vc = v0 + (np.arange(rows) + 0.5) * (v1 - v0) / rows
    ax.contour(hc, vc, image, levels=[0.15, 0.6], colors="black", linewidths=0.7,
               alpha=0.8)


def _status_counts(passes: list[BlockPass]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in passes:
        for r in p.records.values():
            counts[_status(r)] = counts.get(_status(r), 0) + 1
    return counts


def _counts_text(counts: dict[str, int]) -> str:
    order = ("ok", "rejected", "failed", "skipped", "declined", "missing")
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "no blocks"


def _layers_figure(passes: list[BlockPass], unit: str, path: Path,
                   max_layers: int = 16) -> Path:
    """Every z layer of each pass's block grid (at most ``max_layers``, evenly spaced),
    block ids written in."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.figure import Figure

    cmap = colormaps["RdBu"]
    norm = _gain_norm(passes)
    ncols = min(6, max(len(_layers(p, max_layers)) for p in passes))
    rows_per = [math.ceil(len(_layers(p, max_layers)) / ncols) for p in passes]
    b0 = Frame.of(passes[-1].plan.grid).bounds()
    aspect = (b0[1, 1] - b0[1, 0]) / (b0[2, 1] - b0[2, 0])
    panel = min(3.4, 11.0 / ncols)
    heights = [n * (panel * aspect + 0.7) + 0.5 for n in rows_per]
    fig = Figure(figsize=(max(9.0, ncols * panel + 2.2), min(40.0, sum(heights) + 1.2)),
                 dpi=_DPI)
    fig.set_layout_engine("constrained", h_pad=0.08, w_pad=0.06)
    subs = (fig.subfigures(len(passes), 1, height_ratios=heights, squeeze=False)[:, 0]
            if len(passes) > 1 else [fig])
    u = short_unit(unit)
    for sub, bp, nrows in zip(subs, passes, rows_per, strict=True):
        frame = Frame.of(bp.plan.grid)
        k = frame.axis(0)
        layers = _layers(bp, max_layers)
        if len(passes) > 1:
            _row_title(sub, bp.label)
        grid = sub.add_gridspec(nrows, ncols)
        bounds = frame.bounds()
        axes = []
        for i, layer in enumerate(layers):
            ax = sub.add_subplot(grid[i // ncols, i % ncols])
            axes.append(ax)
            n = _draw_blocks(ax, bp, 0, layer, cmap, norm, alpha=1.0)
            extent = (bounds[2, 0], bounds[2, 1], bounds[1, 0], bounds[1, 1])
            _panel_axes(ax, 0, frame, unit, extent)
            if i % ncols:
                ax.set_ylabel("")
            edges = bp.plan.edges[k]
            a, b = frame.span(k, edges[layer] - 0.5, edges[layer + 1] - 0.5)
            ax.set_title(f"z layer {layer + 1} of {len(edges) - 1}: {a:.4g} to {b:.4g} {u}"
                         + ("" if n <= 64 else " (ids not shown)"), fontsize=9)
        sub.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.85,
                     label="NCC after − before (blue: better)")
    _status_legend(fig, passes)
    title = f"Every z layer of the block grid: {_counts_text(_status_counts(passes))}"
    if len(passes) == 1:
        title += f"\n{passes[0].label}"
        if len(_layers(passes[0], max_layers)) < passes[0].plan.counts[
                Frame.of(passes[0].plan.grid).axis(0)]:
            title += f" ({len(_layers(passes[0], max_layers))} layers shown, evenly spaced)"
    fig.suptitle(title, fontsize=11)
    fig.savefig(path)
    return path


def _layers(bp: BlockPass, max_layers: int) -> list[int]:
    n = bp.plan.counts[Frame.of(bp.plan.grid).axis(0)]
    if n <= max_layers:
        return list(range(n))
    return np.unique(np.round(np.linspace(0, n - 1, max_layers)).astype(int)).tolist()


# ---------------------------------------------------------------------------------------
# the Jacobian determinant
# ---------------------------------------------------------------------------------------
def first_field(transform: Any) -> Any:
    """The first displacement field of a (bijection of a) sequence, or ``None``."""
    from .transforms.model import DisplacementField, Sequence

    t = getattr(transform, "forward", transform)
    if isinstance(t, DisplacementField):
        return t
    if isinstance(t, Sequence):
        for step in t.transforms:
            found = first_field(step)
            if found is not None:
                return found
    return None


@dataclass
class JacobianPlanes:
    """The Jacobian determinant of a field on three planes (as :class:`ReportPlanes`),
    reduced by ``factor`` (block mean; ``folds`` marks blocks holding a value ≤ 0)."""

    name: str
    frame: Frame
    unit: str
    values: dict[int, np.ndarray]
    folds: dict[int, np.ndarray]
    extent: dict[int, tuple[float, ...]]
    position: dict[int, float]
    factor: int = 1


def jacobian_planes(field: Any, centre: Any, *, max_pixels: int = 1024,
                    tile_voxels: int = 400_000) -> JacobianPlanes:
    """``det(I + ∂u/∂p)`` of ``field`` on the planes through ``centre`` (display
    coordinates) normal to each axis, from slabs three voxels thick read tile by tile (the
    field is never loaded whole); planes wider than ``max_pixels`` are reduced."""
    grid = field.grid
    frame = Frame.of(grid)
    data = field.field.data
    values, folds, extent, position = {}, {}, {}, {}
    factor = max(1, math.ceil(max(grid.shape) / max_pixels))
    for q in range(3):
        k, index = frame.index_of(q, float(centre[q]))
        position[q] = float(frame.coord(k, index))
        ka, kb = (j for j in range(3) if j != k)
        na, nb = grid.shape[ka], grid.shape[kb]
        lo, hi = max(0, index - 1), min(grid.shape[k], index + 2)
        rows = max(factor, (tile_voxels // max(nb, 1)) // factor * factor)
        det = np.empty((na, nb), dtype=np.float64)
        for r0 in range(0, na, rows):
            r1 = min(na, r0 + rows)
            a0, a1 = max(0, r0 - 1), min(na, r1 + 1)
            region: list[slice] = [slice(None)] * 3
            region[k], region[ka] = slice(lo, hi), slice(a0, a1)
            u = np.asarray(data[(slice(None), *region)], dtype=np.float64)
            d = jacobian_determinant(u, grid.spacing, grid.direction)
            pick: list[Any] = [slice(None)] * 3
            pick[k], pick[ka] = index - lo, slice(r0 - a0, r1 - a0)
            det[r0:r1] = d[tuple(pick)]
        fold = det <= 0
        if factor > 1:
            det, fold = _reduce(det, factor, np.nanmean), _reduce(fold, factor, np.any)
        values[q], extent[q] = frame.orient(det, q)
        folds[q] = frame.orient(fold, q)[0]
    return JacobianPlanes(field.name or "field", frame, grid.unit, values, folds, extent,
                          position, factor)


def _reduce(a: np.ndarray, f: int, how: Any) -> np.ndarray:
    na, nb = a.shape
    pa, pb = -na % f, -nb % f
    if a.dtype == bool:
        padded = np.pad(a, ((0, pa), (0, pb)))
    else:
        padded = np.pad(a, ((0, pa), (0, pb)), constant_values=np.nan)
    return how(padded.reshape((na + pa) // f, f, (nb + pb) // f, f), axis=(1, 3))


def _jacobian_figure(jac: JacobianPlanes, passes: list[BlockPass], report: dict[str, Any],
                     path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, TwoSlopeNorm
    from matplotlib.patches import Patch

    widths = [jac.extent[q][1] - jac.extent[q][0] for q in range(3)]
    height = max(jac.extent[q][3] - jac.extent[q][2] for q in range(3))
    fig, _, grids = _figure(widths, height, 1, extra_h=1.0, extra_w=1.2)
    grid = grids[0]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in jac.values.values()])
    positive = finite[finite > 0]
    top = max(float(positive.max()) if positive.size else 1.0,
              1 / float(positive.min()) if positive.size else 1.0)
    top = float(np.clip(top, 1.1, 10.0))
    norm = TwoSlopeNorm(vmin=1 / top, vcenter=1.0, vmax=top)
    cmap = colormaps["PuOr_r"]
    fold_map = ListedColormap(["#00e000"])
    faces = next((p for p in reversed(passes)
                  if p.plan.grid.shape == tuple(jac.frame.shape)), None)
    axes = []
    u = short_unit(jac.unit)
    for q in range(3):
        ax = fig.add_subplot(grid[0, q])
        axes.append(ax)
        v = jac.values[q]
        ax.imshow(v, cmap=cmap, norm=norm, origin="lower", extent=jac.extent[q],
                  interpolation="nearest")
        if jac.folds[q].any():
            ax.imshow(np.ma.masked_where(~jac.folds[q], np.ones_like(v)), cmap=fold_map,
                      origin="lower", extent=jac.extent[q], interpolation="nearest")
        if faces is not None:
            _draw_faces(ax, faces, q)
        _panel_axes(ax, q, jac.frame, jac.unit, jac.extent[q])
        ok = v[np.isfinite(v)]
        stats = (f"min {ok.min():.3g}, max {ok.max():.3g}, {int(jac.folds[q].sum())} folded"
                 if ok.size else "empty")
        ax.set_title(f"{AXES[q]} = {jac.position[q]:.4g} {u}: {stats}", fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                       label="det J (1: volume kept; < 1 shrinks, > 1 grows)")
    # as many ticks on each side of 1 (the two halves have different scales)
    bar.set_ticks([1 / top, (1 / top + 1) / 2, 1.0, (1 + top) / 2, top])
    bar.ax.set_yticklabels([f"{v:.3g}" for v in (1 / top, (1 / top + 1) / 2, 1.0,
                                                  (1 + top) / 2, top)])
    n_folds = int(sum(f.sum() for f in jac.folds.values()))
    handles = [Patch(facecolor="#00e000", label="fold: det J ≤ 0" + (
        "" if n_folds else " (none in these planes)"))]
    if faces is not None:
        handles.append(Patch(facecolor="none", edgecolor="0.2", linestyle="--",
                             label="block faces"))
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9,
               frameon=False)
    whole = ""
    if report:
        whole = (f" — whole field: det J {report.get('jacobian_min', float('nan')):.3g} to "
                 f"{report.get('jacobian_max', float('nan')):.3g}, "
                 f"{report.get('folded_voxels', 0)} folded voxels")
        if report.get("seam_ratio") is not None:
            whole += f", seam ratio {report['seam_ratio']:.3g}"
    reduced = f" (planes reduced {jac.factor}× for display)" if jac.factor > 1 else ""
    fig.suptitle(f"Jacobian determinant of the displacement field '{jac.name}'{reduced}"
                 f"\n{whole.lstrip(' —')}", fontsize=11)
    fig.savefig(path)
    return path


def _draw_faces(ax: Any, bp: BlockPass, q: int) -> None:
    frame = Frame.of(bp.plan.grid)
    vertical, horizontal, _ = LAYOUT[q]
    for axis, line in ((horizontal, ax.axvline), (vertical, ax.axhline)):
        k = frame.axis(axis)
        for e in bp.plan.edges[k][1:-1]:
            line(float(frame.coord(k, e - 0.5)), color="0.2", linestyle="--",
                 linewidth=0.8, alpha=0.6)


# ---------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom:
1px solid #ddd; } .meta { color: #666; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 16em; }
.card h3 { margin: 0.2em 0 0.4em; font-size: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.2em 0.6em; text-align: left; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged td { background: #fde2e2; } tr.skipped td { color: #888; }
tr.flagged td.status { color: #b00; font-weight: bold; }
.good { color: #176b2c; } .bad { color: #b00; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; max-width: 70em; }
.notes { background: #fff7e0; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
.scroll { max-height: 40em; overflow: auto; border: 1px solid #eee; }
"""

_CAPTIONS = {
    "overlay.png": "Fixed image in magenta, moving image in green, on three orthogonal planes "
    "through the centre. Top: before registration (the moving image resampled onto the "
    "fixed grid through the identity, i.e. where it lies in physical space). Bottom: after "
    "(the registered image of this store). Where the two agree the colours mix to "
    "grey-white; magenta or green fringes show misalignment. NCC: normalised "
    "cross-correlation of the plane.",
    "checkerboard.png": "The same pairs as square tiles alternating between the fixed and "
    "the moving image: edges that run straight across tile borders are aligned.",
    "blocks.png": "Each block's improvement of the normalised cross-correlation over its "
    "core (after − before the block registration, blue: better, red: worse), for the layer "
    "of blocks through the centre along each axis; the black lines outline the fixed image. "
    "Hatched: blocks that failed (F) or were rejected (R) — filled from their neighbours — "
    "and skipped blocks (S, no signal); beige: no correlation to measure (a constant block).",
    "block_layers.png": "Every layer of the block grid along z, same colours; the numbers are "
    "block ids (see the table below).",
    "jacobian.png": "Jacobian determinant of the displacement field: 1 where volume is kept "
    "(white), below 1 where it shrinks (purple), above 1 where it grows (orange); folds "
    "(det ≤ 0: the map is not invertible there) in bright green. Dashed lines: block faces "
    "— a seam there would show as a line of colour.",
}


def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return str(value)


def _fmt3(value: Any) -> str:
    """A correlation, three decimals."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.3f}" if np.isfinite(v) else "n/a"


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"


def _card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{_e(title)}</h3>{body}</div>'


def _summary_cards(summary: dict[str, Any], planes: ReportPlanes | None,
                   passes: list[BlockPass]) -> str:
    cards = []
    inputs = summary.get("inputs") or {}
    if inputs:
        rows = []
        for role in ("fixed", "moving"):
            rec = inputs.get(role) or {}
            where = rec.get("path") or "in memory"
            extra = ""
            if rec.get("voxel_size") is not None:
                extra = f" (voxel size {_fmt(rec['voxel_size'])} {_e(rec.get('unit') or '')})"
            rows.append((role, _e(where) + extra))
        cards.append(_card("Inputs", _kv_table(rows)))
    coarse = summary.get("coarse") or {}
    if coarse:
        before, after = coarse.get("ncc_before"), coarse.get("ncc_after")
        better = (isinstance(before, (int, float)) and isinstance(after, (int, float))
                  and after >= before)
        rows = [("level", _fmt(summary.get("coarse_level"))),
                ("stages", _e(" + ".join(coarse.get("stages") or []) or "–")),
                ("NCC", f'{_fmt3(before)} → <span class="{"good" if better else "bad"}">'
                        f"{_fmt3(after)}</span>"),
                ("fixed grid", _e(f"{coarse.get('fixed_shape')} × {coarse.get('fixed_spacing')}")),
                ("time", f"{_fmt(coarse.get('seconds'))} s"),
                ("backend", _e(coarse.get("backend", "–")))]
        cards.append(_card("Coarse step", _kv_table(rows)))
    if planes is not None and planes.fixed is not None:
        b, a = planes.ncc("before"), planes.ncc("after")
        rows = [(f"{AXES[q]} = {planes.position[q]:.4g} {short_unit(planes.unit)}",
                 f"{_fmt3(b.get(q)) if b else 'n/a'} → {_fmt3(a.get(q))}") for q in range(3)]
        cards.append(_card(f"NCC on the figure planes (level {planes.level})",
                           _kv_table(rows)))
    statuses = summary.get("blocks") or {}
    if statuses or passes:
        if not statuses:
            for p in passes:
                for r in p.records.values():
                    statuses[_status(r)] = statuses.get(_status(r), 0) + 1
        rows = [(s, _fmt(n)) for s, n in sorted(statuses.items())]
        flagged = _flagged(passes) or [str(i) for i in summary.get("flagged") or []]
        rows.append(("flagged", f'<span class="bad">{_e(", ".join(flagged))}</span>'
                     if flagged else '<span class="good">none</span>'))
        gains = np.array([_gain(r) for p in passes for r in p.records.values()])
        gains = gains[np.isfinite(gains)]
        if gains.size:
            rows.append(("NCC gain (median, min–max)",
                         f"{np.median(gains):+.3f} ({gains.min():+.3f} – {gains.max():+.3f})"))
        for p in passes:
            rows.append(("plan", _e(p.label)))
        cards.append(_card("Blocks", _kv_table(rows)))
    fine = summary.get("fine_field") or {}
    if fine:
        folds = fine.get("folded_voxels", 0)
        rows = [("det J min / max", f"{_fmt(fine.get('jacobian_min'))} / "
                                    f"{_fmt(fine.get('jacobian_max'))}"),
                ("folded voxels", f'<span class="{"bad" if folds else "good"}">'
                                  f"{_fmt(folds)}</span>")]
        if fine.get("folded_box"):
            rows.append(("folds in index box", _e(fine["folded_box"])))
        if "seam_ratio" in fine:
            ratio = fine.get("seam_ratio")
            seam = isinstance(ratio, (int, float)) and ratio > SEAM_WARNING
            rows.append(("seam ratio (block faces / inside; ≲ 1: no seams)",
                         f'<span class="{"bad" if seam else "good"}">{_fmt(ratio)}</span>'))
        title = "Fine field" + (f" (pass {fine['pass']}, the finest)" if "pass" in fine else "")
        cards.append(_card(title, _kv_table(rows)))
    timings = summary.get("timings") or {}
    if timings:
        cards.append(_card("Timings", _kv_table([(k, f"{_fmt(v)} s")
                                                for k, v in timings.items()])))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _flagged(passes: list[BlockPass]) -> list[str]:
    out = []
    for p in passes:
        for bid, r in p.records.items():
            if _status(r) in FLAGGED:
                out.append(f"{p.name + ':' if len(passes) > 1 else ''}{bid}")
    return out


_NUMERIC = ("foreground", "ncc_before", "ncc_after", "jacobian_min", "jacobian_max",
            "displacement_max", "seconds")


def _block_rows(store: Path, passes: list[BlockPass]) -> list[dict[str, Any]]:
    """The block table: ``qc/blocks.csv`` (with each row's pass when there are several),
    or the records found in ``blocks/``."""
    path = store / "qc" / "blocks.csv"
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif passes:
        from .registration.blockwise import block_table

        for p in passes:
            for r in block_table([rec or {"id": b.id, "index": list(b.index),
                                          "status": "missing"}
                                  for b, rec in ((b, p.records.get(b.id))
                                                 for b in p.plan.blocks)]):
                rows.append(r)
    if len(passes) > 1 and len(rows) == sum(len(p.plan.blocks) for p in passes):
        i = 0
        for p in passes:
            for _ in p.plan.blocks:
                rows[i] = {"pass": p.name, **rows[i]}
                i += 1
    return rows


def _block_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>No block table (the run had no block step).</p>"
    keys = [k for k in rows[0] if k not in ("worker",) or any(r.get(k) for r in rows)]
    head = "".join(f"<th>{_e(k)}</th>" for k in keys) + "<th>gain</th>"
    body = []
    for r in rows:
        status = str(r.get("status") or "")
        cls = ("flagged" if status in FLAGGED
               else "skipped" if status in ("skipped", "declined") else "")
        cells = []
        for k in keys:
            v = r.get(k)
            if k in _NUMERIC:
                try:
                    cells.append(f'<td class="num">{_fmt(float(v))}</td>')
                except (TypeError, ValueError):
                    cells.append("<td></td>")
            else:
                cells.append(f'<td class="{_e(k)}">{_e("" if v is None else v)}</td>')
        gain = _gain({"status": status, "ncc_before": r.get("ncc_before"),
                      "ncc_after": r.get("ncc_after")})
        cells.append(f'<td class="num">{"" if not np.isfinite(gain) else f"{gain:+.3f}"}</td>')
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table></div>")


def _page(store: Path, summary: dict[str, Any], planes: ReportPlanes | None,
          passes: list[BlockPass], figures: list[str], notes: list[str]) -> str:
    from . import __version__

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>ngffreg QC — {_e(store.name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Registration QC: {_e(store.name)}</h1>",
             f'<p class="meta">written {_e(now)} by ngffreg {_e(__version__)}; '
             "refresh with <code>ngffreg qc " + _e(store.name) + "</code></p>"]
    if notes:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{_e(n)}</li>" for n in notes)
                     + "</ul></div>")
    parts.append("<h2>Summary</h2>" + _summary_cards(summary, planes, passes))
    sections = (("Alignment", ("overlay.png", "checkerboard.png")),
                ("Blocks", ("blocks.png", "block_layers.png")),
                ("Deformation", ("jacobian.png",)))
    for title, names in sections:
        shown = [n for n in names if n in figures]
        if not shown:
            continue
        parts.append(f"<h2>{_e(title)}</h2>")
        for n in shown:
            parts.append(f'<figure id="{_e(n[:-4])}"><a href="{_e(n)}"><img src="{_e(n)}" '
                         f'alt="{_e(n)}"></a><figcaption>{_e(_CAPTIONS[n])}</figcaption>'
                         "</figure>")
    parts.append("<h2>Block table</h2><p>From <a href='blocks.csv'>blocks.csv</a>; flagged "
                 "rows (failed, rejected) in red, skipped in grey; gain = ncc_after − "
                 "ncc_before.</p>")
    parts.append(_block_table(_block_rows(store, passes)))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
def write_report(output_store: Any, *, fixed: Any = None, moving: Any = None,
                 max_voxels: int = MAX_VOXELS) -> Path:
    """Write (or refresh) the QC report of a registration output store into its ``qc/``
    folder (see the module docstring); returns the path of ``qc/index.html``.

    Parameters
    ----------
    output_store
        ``OUT.ome.zarr`` as :func:`ngffreg.register` wrote it.
    fixed, moving
        The inputs (paths, images, pyramids or lists of levels); by default those recorded
        in ``qc/summary.json`` (``inputs``: the paths and their voxel_size/unit options).
        Needed when they were in memory at registration: without ``moving`` the
        before-panels are left out, without ``fixed`` the overlays (with a note).
    max_voxels
        The figures use the finest level of the registered pyramid with at most this
        many voxels.
    """
    from .transforms.ngff import read_registration

    start = time.perf_counter()
    store = check_store(output_store)
    qc = store / "qc"
    qc.mkdir(exist_ok=True)
    summary = _summary(store)
    notes: list[str] = []
    made: list[str] = []

    def draw(name: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args, qc / name)
            made.append(name)
        except Exception as exc:  # one figure's failure must not cost the others
            notes.append(f"{name} could not be drawn: {type(exc).__name__}: {exc}")

    planes = report_planes(store, fixed=fixed, moving=moving, max_voxels=max_voxels)
    notes += planes.notes
    draw("overlay.png", lambda p, path: _pair_figure(p, path, "overlay"), planes)
    draw("checkerboard.png", lambda p, path: _pair_figure(p, path, "checkerboard"), planes)
    passes = read_blocks(store)
    if passes:
        draw("blocks.png", _blocks_figure, passes, planes)
        draw("block_layers.png", _layers_figure, passes, planes.unit)
    else:
        notes.append("This run had no block step: no block map.")
    try:
        field = first_field(read_registration(store))
    except Exception as exc:
        field = None
        notes.append(f"The registration transform could not be read: {exc}")
    if field is not None:
        draw("jacobian.png", lambda jp, path: _jacobian_figure(
            jp, passes, summary.get("fine_field") or {}, path),
            jacobian_planes(field, planes.centre))
    else:
        notes.append("The registration has no displacement field (linear only): no "
                     "Jacobian map.")
    for name in FIGURES:  # figures of an earlier report that this one does not have
        if name not in made and (qc / name).is_file():
            (qc / name).unlink()
    summary.setdefault("timings", {})["report_s"] = time.perf_counter() - start
    page = qc / "index.html"
    tmp = qc / ".index.html.tmp"
    tmp.write_text(_page(store, summary, planes, passes, made, notes), encoding="utf-8")
    os.replace(tmp, page)
    if (qc / "summary.json").is_file():
        summary["figures"] = [*made, "index.html"]
        tmp = qc / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, default=float))
        os.replace(tmp, qc / "summary.json")
    return page


__all__ = ["BlockPass", "Frame", "JacobianPlanes", "ReportPlanes", "first_field",
           "jacobian_planes", "read_blocks", "report_planes", "write_report"]
