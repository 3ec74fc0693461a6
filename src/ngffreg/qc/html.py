"""The QC page, ``qc/index.html``: the figures with their captions, the numbers of
``summary.json`` as cards, and the block table with flagged rows highlighted; the
images are referenced relatively, so the ``qc/`` folder (or the store) can be moved or
copied as a whole.
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path
from typing import Any

import numpy as np

from .planes import AXES, ReportPlanes, short_unit
from .store import FLAGGED, BlockPass, _block_rows, _gain, _status

#: A seam ratio (largest displacement gradient at block faces over the largest inside)
#: above this is marked in the page.
SEAM_WARNING = 1.5

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
    "and skipped blocks (S, no signal or no moving data); beige: no correlation to measure "
    "(a constant block).",
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
    from .. import __version__

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
