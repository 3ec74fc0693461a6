"""c3d / greedy 4×4 RAS matrices and BigWarp landmark files, read and written; the
conventions are listed in :mod:`ngffreg.transforms.files`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ... import itk_bridge
from ...errors import InputError, TransformError
from ..base import Transform, as_points
from ..linear import Affine
from ..spline import ThinPlateSpline
from .itk import _existing

#: RAS ↔ LPS flip of x and y (homogeneous).
RAS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
MAPS = ("fixed_to_moving", "moving_to_fixed")

__all__ = [
    "MAPS",
    "RAS_FLIP",
    "bigwarp_transform",
    "fit_affine",
    "read_bigwarp_landmarks",
    "read_c3d_matrix",
    "write_bigwarp_landmarks",
    "write_c3d_matrix",
]


# ---------------------------------------------------------------------------
# c3d / greedy matrices
# ---------------------------------------------------------------------------
def _parse_matrix_text(path: Path) -> np.ndarray | None:
    """The 4×4 matrix in a c3d text file, or None when the file is not one."""
    try:
        text = path.read_bytes().decode("ascii")
    except (UnicodeDecodeError, OSError):
        return None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        m = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except ValueError:
        return None
    return m if m.shape == (4, 4) else None


def _check_maps(maps: str) -> None:
    if maps not in MAPS:
        raise InputError(f"maps must be one of {MAPS}; got {maps!r}.")


def read_c3d_matrix(path: str | Path, *, maps: str = "fixed_to_moving") -> Affine:
    """Read a c3d / greedy 4×4 text matrix (RAS physical space) as an :class:`Affine`.

    Convention: the file holds ``M`` in RAS; in ITK's LPS space the same map is
    ``M_lps = F·M·F`` with ``F = diag(-1, -1, 1, 1)``, then reordered to z, y, x. Greedy
    writes registration results mapping fixed points to moving points
    (``maps="fixed_to_moving"``, the default; the matrix is returned as is). A matrix that
    maps moving points to fixed points (e.g. one that generated the moving image from
    the fixed one, ``moving(p) = fixed(M p)``) is read with ``maps="moving_to_fixed"``
    and inverted, so the result always maps fixed → moving.
    """
    _check_maps(maps)
    p = _existing(path, "c3d matrix file")
    m = _parse_matrix_text(p)
    if m is None:
        raise TransformError(f"{p} is not a c3d matrix: it must hold 4 lines of 4 numbers. "
                             "Pass the text matrix written by greedy or c3d_affine_tool.")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
        raise TransformError(f"{p}: the last row of a c3d matrix must be 0 0 0 1; got "
                             f"{m[3].tolist()}. Check that the file is an affine matrix.")
    m[3] = [0.0, 0.0, 0.0, 1.0]
    affine = Affine(matrix=itk_bridge.matrix_from_itk(RAS_FLIP @ m @ RAS_FLIP), name=p.name)
    return affine if maps == "fixed_to_moving" else affine.inverse().renamed(name=p.name)


def write_c3d_matrix(affine: Transform, path: str | Path, *,
                     maps: str = "fixed_to_moving") -> Path:
    """Write a linear transform (fixed→moving, z, y, x) as a c3d / greedy RAS 4×4 text
    matrix (``M = F·M_lps·F``); ``maps="moving_to_fixed"`` writes its inverse instead."""
    _check_maps(maps)
    if not affine.is_linear:
        raise TransformError(f"A c3d matrix holds a linear transform; got a "
                             f"{type(affine).__name__}. Write it with write_ants_transforms.")
    m = affine.matrix if maps == "fixed_to_moving" else np.linalg.inv(affine.matrix)
    ras = RAS_FLIP @ itk_bridge.matrix_to_itk(m) @ RAS_FLIP
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(" ".join(repr(float(v)) for v in row) + "\n" for row in ras))
    return p


# ---------------------------------------------------------------------------
# BigWarp landmarks
# ---------------------------------------------------------------------------
def _landmark_row(row: list[str], n: int, path: Path) -> tuple[bool, np.ndarray] | None:
    cells = [c.strip() for c in row]
    if not any(cells):
        return None
    if len(cells) in (6, 7):
        raise TransformError(
            f"{path} line {n}: {len(cells)} columns, a 2-D BigWarp landmark file; ngffreg "
            "needs 3-D landmarks (name, active, moving x y z, fixed x y z). Place the "
            "landmarks in BigWarp on the 3-D volumes.")
    if len(cells) not in (8, 9):
        raise TransformError(
            f"{path} line {n}: {len(cells)} columns; a 3-D BigWarp landmark row has 8 (name, "
            "active, moving x y z, fixed x y z). Export the landmarks from BigWarp "
            "(File > Export landmarks).")
    active = cells[1].lower()
    if active not in ("true", "false"):
        raise TransformError(f"{path} line {n}: the active column holds {cells[1]!r}, not "
                             "true/false. Export the landmarks from BigWarp again.")
    try:
        values = np.array([float(v) for v in cells[-6:]], dtype=np.float64)
    except ValueError as exc:
        raise TransformError(f"{path} line {n}: a coordinate is not a number ({exc}). Fix the "
                             "row or export the landmarks from BigWarp again.") from exc
    return active == "true", values


def read_bigwarp_landmarks(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a BigWarp landmark CSV; returns ``(fixed_zyx, moving_zyx)``, each ``(N, 3)``.

    Format, as BigWarp's ``LandmarkTableModel.save`` writes it (checked in its source,
    saalfeldlab/bigwarp): no header; one quoted row per landmark,
    ``"Pt-0","true", mx, my, mz, fx, fy, fz`` -- the name, whether it is active, the
    moving-image point, then the fixed ("target") point, in physical x, y, z (the
    images' calibrated units). Newer BigWarp versions may add an integer id column after
    ``active`` (9 columns); it is accepted. Inactive rows are skipped. BigWarp itself
    renders the moving image with the thin-plate spline fitted from the target
    (fixed) points to the moving points, i.e. the fixed→moving map.
    """
    p = _existing(path, "BigWarp landmark file")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TransformError(f"{p} is not a readable CSV file ({exc}). Pass the landmark file "
                             "exported by BigWarp.") from exc
    fixed, moving = [], []
    for n, row in enumerate(rows, start=1):
        parsed = _landmark_row(row, n, p)
        if parsed is None or not parsed[0]:
            continue
        values = parsed[1]
        if not np.all(np.isfinite(values)):
            raise TransformError(f"{p} line {n}: an active landmark without both points. "
                                 "Complete or deactivate it in BigWarp.")
        moving.append(values[:3][::-1])
        fixed.append(values[3:][::-1])
    if not fixed:
        raise TransformError(f"{p} holds no active landmark. Place landmark pairs in BigWarp "
                             "and export them.")
    return np.array(fixed), np.array(moving)


def fit_affine(source_zyx: Any, target_zyx: Any) -> Affine:
    """The least-squares affine mapping ``source`` points onto ``target`` points."""
    src = as_points(source_zyx, "source landmarks")
    dst = as_points(target_zyx, "target landmarks")
    if len(src) != len(dst):
        raise TransformError(f"{len(src)} source but {len(dst)} target landmarks; they must "
                             "pair up.")
    design = np.hstack([src, np.ones((len(src), 1))])
    if len(src) < 4 or np.linalg.matrix_rank(design) < 4:
        raise TransformError(
            f"An affine needs at least 4 landmark pairs not all in one plane; got {len(src)}. "
            "Add landmarks spread through the volume.")
    solution, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return Affine(matrix=np.vstack([solution.T, [0.0, 0.0, 0.0, 1.0]]))


def bigwarp_transform(path: str | Path, kind: str = "affine") -> Transform:
    """The fixed→moving transform given by a BigWarp landmark file.

    ``kind="affine"``: the least-squares affine mapping the fixed points onto the moving
    points; ``kind="tps"``: ``ThinPlateSpline(source=fixed, target=moving)``, exact at the
    landmarks (BigWarp's own transform). See :func:`read_bigwarp_landmarks`.
    """
    fixed, moving = read_bigwarp_landmarks(path)
    name = Path(path).name
    if kind == "affine":
        return fit_affine(fixed, moving).renamed(name=name)
    if kind == "tps":
        return ThinPlateSpline(source=fixed, target=moving, name=name)
    raise InputError(f"kind must be 'affine' or 'tps'; got {kind!r}.")


def write_bigwarp_landmarks(path: str | Path, fixed_zyx: Any, moving_zyx: Any) -> Path:
    """Write landmark pairs (z, y, x) as a BigWarp CSV (moving point first, then the fixed
    point, each in x, y, z; all rows active; see :func:`read_bigwarp_landmarks`)."""
    fixed = as_points(fixed_zyx, "fixed landmarks")
    moving = as_points(moving_zyx, "moving landmarks")
    if len(fixed) != len(moving):
        raise TransformError(f"{len(fixed)} fixed but {len(moving)} moving landmarks; they "
                             "must pair up.")
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i, (f, m) in enumerate(zip(fixed, moving, strict=True)):
            writer.writerow([f"Pt-{i}", "true", *(repr(float(v)) for v in m[::-1]),
                             *(repr(float(v)) for v in f[::-1])])
    return p
