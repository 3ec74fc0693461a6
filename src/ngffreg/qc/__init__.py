"""Quality control of a registration: measures, figures and the QC report of an output store.

- :mod:`~ngffreg.qc.metrics`: :func:`ncc`, :func:`otsu_threshold`,
  :func:`jacobian_determinant`, :func:`field_report` (numpy on in-memory arrays, a
  displacement field chunk by chunk);
- :mod:`~ngffreg.qc.store`: what the report reads from an output store
  (:func:`check_store`, :func:`read_blocks`, :func:`block_table`);
- :mod:`~ngffreg.qc.planes`: the display space (:class:`Frame`) and the planes the figures
  show (:func:`report_planes`, :func:`jacobian_planes`);
- :mod:`~ngffreg.qc.figures` and :mod:`~ngffreg.qc.block_figures`: the figures
  (:func:`overlay_figure`; ``overlay.png``, ``checkerboard.png``, ``jacobian.png``,
  ``blocks.png``, ``block_layers.png``), drawn on :class:`matplotlib.figure.Figure` objects;
- :mod:`~ngffreg.qc.html`: the page, ``qc/index.html``;
- :mod:`~ngffreg.qc.report`: :func:`write_report` (``ngffreg qc OUT.ome.zarr``), which
  writes them all into ``OUT.ome.zarr/qc/``.

Nothing here imports the registration subpackage: the registration imports from here.
"""

from __future__ import annotations

from .figures import overlay_figure
from .metrics import field_report, jacobian_determinant, ncc, otsu_threshold
from .planes import (
    MAX_VOXELS,
    Frame,
    JacobianPlanes,
    ReportPlanes,
    first_field,
    jacobian_planes,
    report_level,
    report_planes,
    short_unit,
)
from .report import FIGURES, write_report
from .store import BlockPass, block_table, check_store, read_blocks

__all__ = ["FIGURES", "MAX_VOXELS", "BlockPass", "Frame", "JacobianPlanes", "ReportPlanes",
           "block_table", "check_store", "field_report", "first_field", "jacobian_determinant",
           "jacobian_planes", "ncc", "otsu_threshold", "overlay_figure", "read_blocks",
           "report_level", "report_planes", "short_unit", "write_report"]
