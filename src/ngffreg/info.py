"""Describe a volume on disk: format, levels, shape, dtype, spacing, origin, direction, chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .image import describe
from .io.read import detect_format, ome_version, open_levels


def _zarr_chunks(path: Path) -> tuple[list[int], list[int] | None]:
    import zarr

    arr = zarr.open_array(str(path), mode="r")
    shards = list(arr.shards) if getattr(arr, "shards", None) else None
    return list(arr.chunks), shards


def describe_path(path: str | Path, *, voxel_size: Any = None, unit: str | None = None) -> dict:
    """A JSON-ready description of the volume at ``path`` (every level of an OME-Zarr)."""
    path = Path(path).expanduser()
    fmt = detect_format(path)
    images = open_levels(path, voxel_size=voxel_size, unit=unit)
    info: dict[str, Any] = {"path": str(path), "format": fmt, **describe(images[0])}
    if fmt == "ome-zarr":
        info["ngff_version"] = ome_version(path)
    levels = []
    for k, image in enumerate(images):
        level = describe(image)
        array_path = image.attrs.get("array_path")
        chunks, shards = _zarr_chunks(path / array_path) if array_path else (level["chunks"], None)
        levels.append(
            {
                "level": k,
                "path": array_path or ".",
                "shape": level["shape"],
                "spacing": level["spacing"],
                "origin": level["origin"],
                "chunks": chunks,
                "shards": shards,
            }
        )
    info["levels"] = levels
    info["chunks"] = levels[0]["chunks"]
    return info


def _fmt(values: Any) -> str:
    return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def format_info(info: dict) -> str:
    """Human-readable text of :func:`describe_path`'s dict."""
    version = f" {info['ngff_version']}" if info.get("ngff_version") else ""
    d = np.asarray(info["direction"])
    lines = [
        f"{info['path']}  ({info['format']}{version})",
        f"  dims       {', '.join(info['dims'])}",
        f"  shape      {_fmt(info['shape'])}",
        f"  dtype      {info['dtype']}",
        f"  spacing    {_fmt(info['spacing'])} {info['units']}  (z, y, x)",
        f"  origin     {_fmt(info['origin'])} {info['units']}  (z, y, x)",
        f"  direction  {'identity' if np.allclose(d, np.eye(3)) else d.round(6).tolist()}",
    ]
    src = np.asarray(info.get("source_direction", d))
    if not np.allclose(src, d):
        lines.append(
            f"  source direction (normalised by flipping/transposing) {src.round(6).tolist()}"
        )
    lines.append(f"  chunks     {_fmt(info['chunks']) if info.get('chunks') else '-'}")
    lines.append(f"  levels     {len(info['levels'])}")
    for lv in info["levels"]:
        shards = f", shards {_fmt(lv['shards'])}" if lv.get("shards") else ""
        lines.append(
            f"    {lv['path']:<14} {_fmt(lv['shape']):<18} spacing {_fmt(lv['spacing'])}, "
            f"origin {_fmt(lv['origin'])}, chunks {_fmt(lv['chunks']) if lv.get('chunks') else '-'}"
            f"{shards}"
        )
    return "\n".join(lines)
