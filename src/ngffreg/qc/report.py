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

import json
import os
import time
from pathlib import Path
from typing import Any

from .block_figures import _blocks_figure, _layers_figure
from .figures import _jacobian_figure, _pair_figure
from .html import _page
from .planes import MAX_VOXELS, first_field, jacobian_planes, report_planes
from .store import _summary, check_store, read_blocks

#: Figure files, in the order of the page.
FIGURES = ("overlay.png", "checkerboard.png", "blocks.png", "block_layers.png", "jacobian.png")


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
    from ..transforms import read_registration

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
