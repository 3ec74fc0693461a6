"""Write images and pyramids as OME-Zarr 0.4, 0.5 or 0.6, streamed and atomic.

How a write goes:

1. the pyramid's shapes and voxel-centre coordinates are known lazily, so the OME-NGFF
   metadata and empty arrays are created first, with ngff-zarr's own model
   (``to_ome_zarr(..., metadata_only=True)``), in a hidden sibling folder;
2. level 0 is streamed chunk by chunk from the source; each further level is computed
   from the level just written, re-read from disk, so the source is read once and no task
   holds more than a few chunks;
3. only when every level is written is the folder renamed into place. An interrupted or
   failed write leaves no store that looks complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import InputError, OrientationError, OutputError
from ..image import SPATIAL_DIMS, Grid, direction, origin, source_direction, spacing, units
from ..pyramid import DEFAULT_CHUNKS, Method, downsample, levels, to_pyramid

NGFF_VERSIONS = ("0.4", "0.5", "0.6")
#: Name of the coordinate system an oblique image's datasets map to (OME-Zarr 0.6): the
#: voxel grid in physical units, unrotated, with level 0's first voxel centre at 0.
GRID_SYSTEM = "grid"


def _multiscales(
    levels_: list[xr.DataArray],
    name: str,
    root_attrs: dict[str, Any],
    coordinate_system: str = "intrinsic",
    axis_types: Mapping[str, str] | None = None,
):
    """ngff-zarr multiscales (images and metadata) describing ``levels_``.

    The metadata is ngff-zarr's 0.4 model, which ngff-zarr converts to the version
    written. A named coordinate system or custom axis types (both 0.6 only) need the 0.6
    model itself, built here by :func:`_metadata_v06`.
    """
    import ngff_zarr
    from ngff_zarr.v04.zarr_metadata import Axis, Dataset, Metadata, Scale, Translation

    dims = tuple(levels_[0].dims)
    unit = units(levels_[0])
    kinds = {"t": "time", "c": "channel", **dict(axis_types or {})}
    axes = [
        Axis(name=d, type=kinds.get(d, "space"), unit=unit if d in SPATIAL_DIMS else None)
        for d in dims
    ]
    oblique = _is_oblique(levels_[0])
    images, datasets = [], []
    for k, lv in enumerate(levels_):
        sp = dict(zip(SPATIAL_DIMS, spacing(lv), strict=True))
        org = dict(zip(SPATIAL_DIMS, _grid_offset(lv, levels_[0]) if oblique else origin(lv),
                       strict=True))
        images.append(
            ngff_zarr.NgffImage(
                data=lv.data,
                dims=dims,
                scale=sp,
                translation=org,
                name=name,
                axes_units=dict.fromkeys(SPATIAL_DIMS, unit),
                axes_types=dict(axis_types) if axis_types else None,
            )
        )
        datasets.append(
            Dataset(
                path=f"scale{k}/{name}",
                coordinateTransformations=[
                    Scale(scale=[float(sp.get(d, 1.0)) for d in dims]),
                    Translation(translation=[float(org.get(d, 0.0)) for d in dims]),
                ],
            )
        )
    metadata = Metadata(axes=axes, datasets=datasets, coordinateTransformations=None, name=name)
    if oblique:
        metadata = _metadata_oblique(metadata, levels_[0], coordinate_system, axis_types or {})
    elif coordinate_system != "intrinsic" or axis_types:
        metadata = _metadata_v06(metadata, coordinate_system, axis_types or {})
    return ngff_zarr.NgffMultiscales(images, metadata, root_attributes=root_attrs)


def _metadata_v06(metadata, coordinate_system: str, axis_types: Mapping[str, str]):
    """The 0.4-model ``metadata`` as ngff-zarr's 0.6 model, with the datasets mapping to
    the coordinate system ``coordinate_system`` (RFC-5: each dataset's transform takes
    ``input`` {path} to ``output`` {name}), and axes of a non-standard type (such as
    ``displacement``, RFC-5's vector axis of a displacement field) marked ``discrete``."""
    from ngff_zarr.v06.zarr_metadata import Axis as Axis06
    from ngff_zarr.v06.zarr_metadata import (
        CoordinateSystem,
        CoordinateSystemIdentifier,
        Dataset,
        Metadata,
        Scale,
        TransformSequence,
        Translation,
    )

    axes = [
        Axis06(name=a.name, type=a.type, unit=a.unit,
               discrete=True if a.name in axis_types else None)
        for a in metadata.axes
    ]
    datasets = []
    for k, ds in enumerate(metadata.datasets):
        scale, translation = ds.coordinateTransformations
        datasets.append(
            Dataset(
                path=ds.path,
                coordinateTransformations=[
                    TransformSequence(
                        transformations=[
                            Scale(scale=list(scale.scale)),
                            Translation(translation=list(translation.translation)),
                        ],
                        input=CoordinateSystemIdentifier(path=ds.path),
                        output=CoordinateSystemIdentifier(name=coordinate_system),
                        name=f"scale{k}_to_{coordinate_system}",
                    )
                ],
            )
        )
    return Metadata(
        coordinateSystems=[CoordinateSystem(name=coordinate_system, axes=axes)],
        datasets=datasets,
        coordinateTransformations=None,
        name=metadata.name,
    )


def _is_oblique(image: xr.DataArray) -> bool:
    """Whether ``image`` keeps an oblique direction (signed permutations were normalised to
    the identity when it was made)."""
    return not np.allclose(direction(image), np.eye(3), atol=1e-6)


def _grid_offset(level: xr.DataArray, first: xr.DataArray) -> tuple[float, ...]:
    """Where ``level``'s first voxel centre lies in the grid frame of level ``first``: the
    translation (z, y, x) that lines the level up with level 0 (zero for level 0)."""
    if not np.allclose(direction(level), direction(first), atol=1e-12):
        raise InputError(
            "The pyramid's levels have different directions; every level of an image must "
            "share level 0's direction."
        )
    offset = Grid.of(level).frame_origin - Grid.of(first).frame_origin
    return tuple(float(v) for v in offset)


def _placement_matrix(image: xr.DataArray, dims: Sequence[str]) -> list[list[float]]:
    """The affine (rows and columns in ``dims`` order, last column the translation) that
    takes grid points (``spacing ∘ index`` of level 0) to physical points:
    ``origin + direction · grid``. Axes other than z, y, x are left as they are."""
    n = len(dims)
    matrix = np.eye(n + 1)[:n]
    where = [list(dims).index(d) for d in SPATIAL_DIMS]
    matrix[np.ix_(where, where)] = direction(image)
    matrix[where, n] = origin(image)
    return (matrix + 0.0).tolist()


def _metadata_oblique(metadata, image: xr.DataArray, coordinate_system: str,
                      axis_types: Mapping[str, str]):
    """0.6 metadata for an oblique image: the datasets map to the unrotated grid system
    (:data:`GRID_SYSTEM`), and one ``affine`` on the multiscales takes the grid to the
    physical system ``coordinate_system``, listed last (the system viewers such as
    neuroglancer take as the image's own)."""
    from ngff_zarr.v06.zarr_metadata import Affine, CoordinateSystem, CoordinateSystemIdentifier

    grid = GRID_SYSTEM if coordinate_system != GRID_SYSTEM else f"{GRID_SYSTEM}_array"
    out = _metadata_v06(metadata, grid, axis_types)
    axes = out.coordinateSystems[0].axes
    out.coordinateSystems.append(CoordinateSystem(name=coordinate_system, axes=list(axes)))
    out.coordinateTransformations = [
        Affine(
            affine=_placement_matrix(image, [a.name for a in axes]),
            input=CoordinateSystemIdentifier(name=grid),
            output=CoordinateSystemIdentifier(name=coordinate_system),
            name=f"{grid}_to_{coordinate_system}",
        )
    ]
    return out


def _check_destination(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputError(
            errno.EEXIST,
            f"{path} already exists. Pass --overwrite (overwrite=True) to replace it, "
            "or choose another output path.",
        )
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(
            errno.ENOENT,
            f"Cannot write {path}: the folder {parent} does not exist. Create it first.",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            errno.EACCES,
            f"Cannot write {path}: no write permission in {parent}. Choose a writable location.",
        )


def _check_orientation(image: xr.DataArray, version: str) -> None:
    """Refuse an oblique image at a version that cannot store its direction (0.4, 0.5)."""
    if version != "0.6" and _is_oblique(image):
        raise OrientationError(
            f"The image has an oblique direction {direction(image).round(6).tolist()} (z, y, x), "
            f"which OME-Zarr {version} scale/translation metadata cannot express, and ngffreg "
            "will not drop it silently. Write OME-Zarr 0.6 instead (version='0.6', or "
            "--ngff-version 0.6), which keeps it as an affine; or resample the image onto an "
            "axis-aligned grid first (e.g. with ITK's ResampleImageFilter), then convert."
        )


def _store_level(data: da.Array, target: Path, scheduler: Any = None) -> None:
    import zarr

    arr = zarr.open_array(str(target), mode="r+")
    if tuple(arr.shape) != tuple(data.shape):
        raise OutputError(
            errno.EIO, f"Internal error: {target} has shape {arr.shape}, data {data.shape}."
        )
    grid = arr.shards or arr.chunks
    data = data.rechunk(tuple(min(g, n) for g, n in zip(grid, data.shape, strict=True)))
    # on a cluster, unoptimised: the warp's tasks keep their names for its dashboard
    da.store(data, arr, lock=False, compute=True,
             **({} if scheduler is None else {"scheduler": scheduler,
                                              "optimize_graph": False}))


class _LineProgress:
    """Progress of a dask computation off a terminal: a line every ``every`` seconds
    (tasks done / total, elapsed) and one at the end, instead of a redrawn bar."""

    def __init__(self, label: str, every: float = 10.0, stream: Any = None) -> None:
        from dask.callbacks import Callback

        self.label, self.every = label, every
        self.stream = stream or sys.stderr
        outer = self

        class _Hooks(Callback):
            def _start_state(self, dsk, state):
                outer.total = sum(len(state[k]) for k in ("ready", "waiting", "running",
                                                          "finished"))
                outer.done = 0
                outer.start = outer.shown = time.perf_counter()

            def _posttask(self, key, result, dsk, state, worker_id):
                outer.done += 1
                now = time.perf_counter()
                if now - outer.shown >= outer.every:
                    outer.shown = now
                    outer.line(now)

            def _finish(self, dsk, state, errored):
                if not errored:
                    outer.line(time.perf_counter())

        self.hooks = _Hooks()
        self.total = self.done = 0
        self.start = self.shown = 0.0

    def line(self, now: float) -> None:
        share = 100 * self.done / self.total if self.total else 100
        print(f"{self.label}: {share:.0f}% of {self.total} tasks, {now - self.start:.0f} s",
              file=self.stream, flush=True)

    def __enter__(self) -> _LineProgress:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.hooks.__exit__(*exc)


def _progress(progress: bool, label: str, scheduler: Any) -> Any:
    """The progress display of writing one level: none; a line per level on a dask
    cluster (its dashboard shows the tasks); dask's bar on a terminal; else a line every
    10 s."""
    if not progress:
        return contextlib.nullcontext()
    if scheduler is not None:
        print(f"{label} on the cluster", file=sys.stderr, flush=True)
        return contextlib.nullcontext()
    if sys.stderr.isatty():
        from dask.diagnostics import ProgressBar

        return ProgressBar()
    return _LineProgress(label)


def _reopen(target: Path, like: xr.DataArray) -> xr.DataArray:
    """The level just written, read back lazily with ``like``'s coordinates."""
    import zarr

    arr = zarr.open_array(str(target), mode="r")
    data = da.from_zarr(arr, chunks=like.data.chunksize)
    return like.copy(data=data)


def to_ome_zarr(
    data: xr.DataArray | xr.DataTree,
    path: str | Path,
    *,
    version: str = "0.5",
    chunks: int | Sequence[int] = DEFAULT_CHUNKS,
    chunks_per_shard: int | Sequence[int] | None = None,
    n_levels: int | None = None,
    method: Method = "mean",
    overwrite: bool = False,
    progress: bool = False,
    coordinate_system: str = "intrinsic",
    axis_types: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    before_publish: Callable[[Path], None] | None = None,
    image_group: str | None = None,
    scheduler: Any = None,
) -> Path:
    """Write an image (as a new pyramid) or an existing pyramid to an OME-Zarr store.

    Parameters
    ----------
    data : xarray.DataArray or xarray.DataTree
        A physically annotated image, whose pyramid is built while writing, or a pyramid
        from :func:`ngffreg.to_pyramid`, written level by level as given.
    path : str or Path
        Output store (a folder, conventionally ``*.ome.zarr``).
    version : {"0.4", "0.5", "0.6"}
        OME-Zarr version: 0.4 is Zarr v2; 0.5 and 0.6 are Zarr v3.
    chunks : int or (z, y, x)
        Chunk shape on disk.
    chunks_per_shard : int or (z, y, x), optional
        Chunks per shard along each axis (Zarr v3 sharding; 0.5 and 0.6 only).
    n_levels, method
        Pyramid levels and anti-aliasing (see :func:`ngffreg.to_pyramid`); image input only.
    overwrite : bool
        Replace an existing store. The old one is removed only after the new one is complete.
    progress : bool
        Show the progress per level (a bar on a terminal, else a line every 10 s).
    coordinate_system : str
        OME-Zarr 0.6 only: the name of the coordinate system the datasets map to (RFC-5
        ``coordinateSystems``). A registered image maps to ``"fixed"``.
    axis_types : mapping of str to str, optional
        OME-Zarr 0.6 only: axis types other than the default (``t`` time, ``c`` channel,
        ``z, y, x`` space), e.g. ``{"c": "displacement"}`` for a displacement field.
    attributes : mapping, optional
        JSON-ready entries added to the store's ``ngffreg`` root attributes.
    before_publish : callable, optional
        Called with the path of the complete but hidden store just before it is renamed
        into place (e.g. to add transforms), so a failure there leaves nothing behind.
    image_group : str, optional
        Write the image into this group of the store and leave the store's root a plain
        Zarr group, for ``before_publish`` to make a scene of (as a registered store is:
        :func:`ngffreg.transforms.scene.start_scene`).
    scheduler : dask.distributed.Client, optional
        Compute and write the levels on this cluster (its workers must reach ``path``);
        default: threads in this process.

    Returns
    -------
    Path
        The store written.

    Notes
    -----
    A signed-permutation direction was already normalised when the image was opened, so
    scale and translation alone place every voxel; readers that know only 0.4 or 0.5 show it
    right. An oblique direction is kept at 0.6: the datasets map to an unrotated ``grid``
    system and one ``affine`` on the multiscales takes it to ``coordinate_system``
    (physical point = origin + direction · grid point). 0.4 and 0.5 cannot store it, so they
    refuse it with :class:`~ngffreg.errors.OrientationError`.
    """
    if version not in NGFF_VERSIONS:
        raise InputError(f"OME-Zarr version {version!r} is not supported: use 0.4, 0.5 or 0.6.")
    if chunks_per_shard is not None and version == "0.4":
        raise InputError(
            "Sharding needs Zarr v3: use OME-Zarr 0.5 or 0.6, or drop the shards option."
        )
    if version != "0.6" and (coordinate_system != "intrinsic" or axis_types):
        raise InputError(
            f"Named coordinate systems and custom axis types need OME-Zarr 0.6; got version "
            f"{version!r}. Write with version='0.6', or drop coordinate_system/axis_types."
        )
    if not isinstance(coordinate_system, str) or not coordinate_system:
        raise InputError(
            f"coordinate_system must be a non-empty name; got {coordinate_system!r}."
        )
    path = Path(path).expanduser().absolute()
    _check_destination(path, overwrite)

    if isinstance(data, xr.DataTree):
        pyramid, derive = data, False
    elif isinstance(data, xr.DataArray):
        pyramid, derive = to_pyramid(data, n_levels=n_levels, method=method, chunks=chunks), True
    else:
        raise InputError(f"Expected an xarray.DataArray or DataTree, got {type(data).__name__}.")
    lv = levels(pyramid)
    _check_orientation(lv[0], version)
    name = str(lv[0].name or "image")
    root_attrs = {
        "ngffreg": {
            "source": _abs_source(lv[0].attrs.get("source")),
            "source_direction_zyx": (source_direction(lv[0]) + 0.0).tolist(),
            "downsampling": pyramid.attrs.get("method", method),
            **dict(attributes or {}),
        }
    }
    tmp = path.parent / f".{path.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        ms = _multiscales(lv, name, root_attrs, coordinate_system, axis_types)
        _write_levels(ms, lv, tmp / image_group if image_group else tmp, name, version,
                      chunks_per_shard, derive, method, progress, scheduler)
        if image_group:
            (tmp / "zarr.json").write_text(json.dumps(
                {"zarr_format": 3, "node_type": "group", "attributes": {}}))
        if before_publish is not None:
            before_publish(tmp)
        _swap_into_place(tmp, path)
    except OSError as exc:
        _remove_tree(tmp)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(
            exc.errno or errno.EIO,
            f"Writing {path} failed: {exc}. Nothing was left at {path}; free disk space or "
            "choose another location and run again.",
        ) from exc
    except BaseException:
        _remove_tree(tmp)
        raise
    return path


def _write_levels(ms, lv, tmp, name, version, chunks_per_shard, derive, method, progress,
                  scheduler=None):
    shard = chunks_per_shard
    if isinstance(shard, Sequence) and not isinstance(shard, str):
        shard = dict(zip(lv[0].dims[-3:], shard, strict=True))
    _write_metadata(tmp, ms, version, shard)
    previous: xr.DataArray | None = None
    for k, level in enumerate(lv):
        target = tmp / f"scale{k}" / name
        if derive and k:
            source = downsample(previous, _factors_between(lv[k - 1], level), method=method)
            data = source.data
        else:
            data = level.data
        label = f"writing level {k} of {len(lv)} ({' × '.join(map(str, level.shape))})"
        with _progress(progress, label, scheduler), \
                dask.config.set({"optimization.fuse.active": True}):
            _store_level(data, target, scheduler)
        previous = _reopen(target, level) if derive else None


def _write_metadata(tmp: Path, ms, version: str, shard) -> None:
    """The store's metadata and empty arrays, by ngff-zarr. Transforms on the multiscales
    (an oblique image's affine) are written inline here: ngff-zarr would move their matrices
    into arrays, which fewer readers follow, under ``coordinateTransformations/``, where
    ngffreg keeps displacement fields. Python's JSON floats round-trip exactly."""
    import ngff_zarr

    extra = getattr(ms.metadata, "coordinateTransformations", None)
    if extra:
        ms = dataclasses.replace(
            ms, metadata=dataclasses.replace(ms.metadata, coordinateTransformations=None))
    ngff_zarr.to_ngff_zarr(
        str(tmp), ms, version=version, metadata_only=True, chunks_per_shard=shard, overwrite=True
    )
    _complete_multiscales(tmp, version, extra, ms.metadata.name)


def strip_none(value: Any) -> Any:
    """``value`` (JSON-like: dicts, lists) without the ``None`` entries of its dicts, as a
    metadata model's ``asdict`` gives them and NGFF JSON leaves them out."""
    if isinstance(value, dict):
        return {k: strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_none(v) for v in value]
    return value


def _complete_multiscales(tmp: Path, version: str, transforms: list | None, name: str) -> None:
    """Finish the multiscales ngff-zarr wrote: ``transforms`` (ngff-zarr 0.6 models) right
    after its datasets, and the ``type`` and ``metadata`` saying how the levels were made
    (the strict NGFF schemas require them; ngff-zarr writes them only for its own methods).
    Zarr v2 (0.4) keeps the attributes in ``.zattrs`` and a copy in ``.zmetadata``."""
    from .. import __version__

    def complete(ms: dict[str, Any]) -> dict[str, Any]:
        method = (attrs.get("ngffreg") or {}).get("downsampling") or "mean"
        out: dict[str, Any] = {}
        for key, value in ms.items():
            out[key] = value
            if key == "datasets" and transforms:
                out["coordinateTransformations"] = [
                    strip_none(dataclasses.asdict(t)) for t in transforms]
        out.setdefault("name", name)
        out["type"] = str(method)
        out["metadata"] = {
            "description": f"ngffreg pyramid: each level from the one before it ({method})",
            "method": "ngffreg.pyramid.downsample", "version": __version__}
        return out

    if version == "0.4":
        attrs = json.loads((tmp / ".zattrs").read_text())
        attrs["multiscales"][0] = complete(attrs["multiscales"][0])
        (tmp / ".zattrs").write_text(json.dumps(attrs, indent=4, allow_nan=False))
        consolidated = tmp / ".zmetadata"
        if consolidated.is_file():
            doc = json.loads(consolidated.read_text())
            doc.get("metadata", {})[".zattrs"] = attrs
            consolidated.write_text(json.dumps(doc, indent=4, allow_nan=False))
        return
    doc = json.loads((tmp / "zarr.json").read_text())
    attrs = doc["attributes"]
    attrs["ome"]["multiscales"][0] = complete(attrs["ome"]["multiscales"][0])
    (tmp / "zarr.json").write_text(json.dumps(doc, indent=4, allow_nan=False))


def _factors_between(fine: xr.DataArray, coarse: xr.DataArray) -> list[int]:
    return [round(c / f) for f, c in zip(spacing(fine), spacing(coarse), strict=True)]


def _remove_tree(path: Path, settle: float = 0.2, tries: int = 25) -> None:
    """Remove ``path`` for good: after a failed task, chunk writes still in flight on other
    threads may recreate folders for a moment, so remove until it stays gone."""
    for _ in range(tries):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(settle)
        if not path.exists():
            return


def _swap_into_place(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _abs_source(source: Any) -> Any:
    return (
        str(Path(source).absolute()) if isinstance(source, str) and "://" not in source else source
    )
