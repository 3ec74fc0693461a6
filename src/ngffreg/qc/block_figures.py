"""The QC figures of the block step: ``blocks.png`` (each block's gain in normalised
cross-correlation on the block layers through the centre, per axis, over the fixed
image's outlines) and ``block_layers.png`` (every layer of the block grid, one pass per
row group); failed, rejected, skipped blocks are hatched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .figures import _DPI, _figure, _panel_axes, _row_title, _scaled, _window
from .planes import AXES, LAYOUT, Frame, ReportPlanes, short_unit
from .store import BlockPass, _gain, _status

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
             "skipped": "skipped (S): no signal, or no moving data",
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
