"""Point tables: CSV files with ``z, y, x`` columns in physical units.

The header names the columns; ``z``, ``y`` and ``x`` (any case) must be among them and
hold numbers. Other columns (ids, labels, …) are carried through unchanged.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, InputNotFoundError, OutputError

AXES = ("z", "y", "x")


def read_points_csv(path: str | os.PathLike) -> tuple[np.ndarray, Any]:
    """Read a point table. Returns ``(points (N, 3) z, y, x, table)``, ``table`` being
    the whole file as a pandas DataFrame (for carrying other columns through)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"No such points file: {path}")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            f"{path} is empty; a points CSV needs a header line with columns z,y,x.") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable CSV file: {exc}") from exc
    names = {str(c).strip().lower(): c for c in table.columns}
    missing = [a for a in AXES if a not in names]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}: a points CSV needs a header "
            f"with columns z,y,x (physical units, z first); found {list(table.columns)}.")
    columns = [names[a] for a in AXES]
    values = table[columns].apply(pd.to_numeric, errors="coerce")
    bad = values.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        shown = table.loc[row, columns].tolist()
        raise InputError(
            f"{path}, line {row + 2}: z,y,x must be numbers; got {shown} "
            f"({int(bad.sum())} bad row(s) in all). Fix or remove those rows.")
    return values.to_numpy(dtype=np.float64), table


def write_points_csv(path: str | os.PathLike, points: np.ndarray, table: Any = None) -> Path:
    """Write ``points`` (N, 3; z, y, x) as CSV, replacing the z,y,x columns of ``table``
    (other columns kept) when given. Written to a temporary file and renamed into place,
    so a failure leaves no partial file."""
    import pandas as pd

    path = Path(path)
    pts = np.asarray(points, dtype=np.float64)
    if table is None:
        out = pd.DataFrame(pts, columns=list(AXES))
    else:
        out = table.copy()
        names = {str(c).strip().lower(): c for c in out.columns}
        for k, a in enumerate(AXES):
            out[names[a]] = pts[:, k]
    if not path.parent.is_dir():
        raise OutputError(
            errno.ENOENT, f"The folder of the output {path} does not exist; create it first.")
    tmp = path.with_name(f".{path.name}.incomplete-{os.getpid()}")
    try:
        out.to_csv(tmp, index=False, float_format="%.17g")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            exc.errno or errno.EIO, f"Cannot write {path}: {exc.strerror or exc}") from exc
    return path
