"""The QC figures of the alignment and the deformation, drawn on
:class:`matplotlib.figure.Figure` objects (no global plotting state, and the process's
matplotlib backend is left as it is): :func:`overlay_figure` (an in-memory pair), the
overlay and checkerboard of :class:`~ngffreg.qc.planes.ReportPlanes` (``overlay.png``,
``checkerboard.png``) and the Jacobian determinant map (``jacobian.png``); with the
layout helpers the block figures (:mod:`ngffreg.qc.block_figures`) share.

Everything is drawn in physical coordinates: axes in the image's unit, the aspect ratio
from the spacing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import ncc
from .planes import AXES, LAYOUT, Frame, JacobianPlanes, ReportPlanes, short_unit
from .store import BlockPass

_DPI = 100


def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    lo, hi = np.percentile(a, [1, 99.5])
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def overlay_figure(fixed: Any, before: Any, after: Any, path: Any, *,
                   spacing: Any = (1.0, 1.0, 1.0), title: str = "") -> Any:
    """A PNG of the three orthogonal middle planes: the fixed image in magenta over the
    moving image in green, before (top row) and after (bottom row) registration; aligned
    structures turn grey-white. Arrays are z, y, x on one grid with ``spacing``."""
    from matplotlib.figure import Figure

    f, b, a = (_normalise(x) for x in (fixed, before, after))
    sz, sy, sx = (float(v) for v in spacing)
    mid = [n // 2 for n in f.shape]
    planes = [("axial (z)", lambda v: v[mid[0]], sy / sx),
              ("coronal (y)", lambda v: v[:, mid[1]], sz / sx),
              ("sagittal (x)", lambda v: v[:, :, mid[2]], sz / sy)]
    fig = Figure(figsize=(12, 8))
    axes = fig.subplots(2, 3)
    for row, (label, moving) in enumerate((("before", b), ("after", a))):
        score = ncc(f, moving)
        for col, (name, cut, aspect) in enumerate(planes):
            fp, mp = cut(f), cut(moving)
            rgb = np.stack([fp, mp, fp], axis=-1)
            ax = axes[row, col]
            ax.imshow(rgb, origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name}, {label} (NCC {score:.3f})", fontsize=9)
            ax.axis("off")
    fig.suptitle(title or "fixed (magenta) over moving (green)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


# ---------------------------------------------------------------------------------------
# layout
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
# the Jacobian determinant
# ---------------------------------------------------------------------------------------
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
