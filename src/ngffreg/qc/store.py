"""What the QC report reads in a registration output store: ``qc/summary.json``, the
block passes and their records (``blocks/``), and the block table (``qc/blocks.csv``, or
:func:`block_table` of the records).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..blocks import BlockPlan
from ..errors import InputError, InputNotFoundError

#: Statuses drawn as flagged.
FLAGGED = ("failed", "rejected")


# ---------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------
def _summary(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / "qc" / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def check_store(output_store: Any) -> Path:
    """The path of a registration output store, or an error that says what is wrong."""
    from ..io.read import open_levels

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


def block_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per block for the QC table."""
    keys = ("id", "index", "status", "foreground", "ncc_before", "ncc_after", "jacobian_min",
            "jacobian_max", "displacement_max", "held_out_before", "held_out_after",
            "seconds", "method_seconds", "worker", "message")
    return [{k: r.get(k) for k in keys} for r in records]


def _block_rows(store: Path, passes: list[BlockPass]) -> list[dict[str, Any]]:
    """The block table: ``qc/blocks.csv`` (with each row's pass when there are several),
    or the records found in ``blocks/``."""
    path = store / "qc" / "blocks.csv"
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    elif passes:
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
