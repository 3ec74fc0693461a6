"""The ``.reg`` accessor: ngffreg's functional API on xarray objects, for notebooks.

``import ngffreg`` registers ``.reg`` on :class:`xarray.DataArray` (a physically
annotated image, dims ``z, y, x``) and on :class:`xarray.DataTree` (a pyramid from
:func:`ngffreg.to_pyramid`). Every method is a thin call into the functional API, named
in its docstring; the accessor keeps no state beyond the object it wraps.

- metadata: ``img.reg.spacing``, ``origin``, ``direction``, ``source_direction``,
  ``units`` (:func:`ngffreg.spacing` …) and ``bbox`` (:func:`ngffreg.physical_bbox`, of
  the voxel centres);
- ``img.reg.crop(lower, upper)``: the voxels whose centres lie in a physical box
  (:func:`ngffreg.select_box`);
- ``img.reg.to_pyramid()`` (:func:`ngffreg.to_pyramid`); ``pyr.reg.level(i)`` or
  ``pyr.reg.level(spacing=…)`` (:func:`ngffreg.level`, :func:`ngffreg.select_level`);
- ``fixed.reg.register(moving, output)`` (:func:`ngffreg.register`);
- ``moving.reg.warp(transform, like=fixed)`` (:func:`ngffreg.warp`; on a pyramid
  :func:`ngffreg.warp.warp_pyramid`);
- ``img.reg.to_ome_zarr(path, transforms=…)`` (:func:`ngffreg.to_ome_zarr`, the transforms
  stored by :func:`ngffreg.transforms.write_registration` or
  :func:`~ngffreg.transforms.write_transforms`);
- ``fixed.reg.qc(moving, transform)`` (:func:`qc_summary`: :func:`ngffreg.qc.ncc` before
  and after, :func:`ngffreg.registration.coarse.overlap_fraction`,
  :func:`ngffreg.qc.field_report`, :func:`ngffreg.qc.overlay_figure`).

Examples
--------
>>> import numpy as np
>>> import ngffreg
>>> img = ngffreg.make_image(np.zeros((4, 5, 6), "float32"), spacing=(2.0, 1.0, 0.5),
...                          origin=(10.0, 0.0, -1.0), unit="um")
>>> img.reg.spacing, img.reg.units
((2.0, 1.0, 0.5), 'micrometer')
>>> lower, upper = img.reg.bbox
>>> lower.tolist(), upper.tolist()
([10.0, 0.0, -1.0], [16.0, 4.0, 1.5])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError
from .image import direction as _direction
from .image import load, physical_bbox, select_box, to_units
from .image import origin as _origin
from .image import source_direction as _source_direction
from .image import spacing as _spacing
from .image import units as _units
from .io.write import to_ome_zarr as _to_ome_zarr
from .pyramid import level as _level
from .pyramid import levels as _levels
from .pyramid import select_level, to_pyramid
from .qc import field_report, ncc, otsu_threshold, overlay_figure
from .registration.coarse import overlap_fraction
from .registration.register import register as _register
from .transforms import DisplacementField, Identity, Transform, iter_steps
from .warp import choose_moving_level, warp_pyramid
from .warp import warp as _warp

__all__ = ["DataArrayRegAccessor", "DataTreeRegAccessor", "as_transform", "qc_summary"]


def as_transform(transform: Any) -> Transform:
    """An ngffreg :class:`~ngffreg.transforms.Transform` from what a user has in hand: a
    transform, a registration result (its ``.transform``) or the path of an output store
    (its ``registration`` transform, :func:`ngffreg.transforms.read_registration`)."""
    if isinstance(transform, Transform):
        return transform
    inner = getattr(transform, "transform", None)
    if isinstance(inner, Transform):
        return inner
    if isinstance(transform, (str, os.PathLike)):
        from .transforms.ngff import read_registration

        return read_registration(transform)
    raise InputError(
        f"Expected an ngffreg Transform, a registration result or an output store path; got "
        f"{type(transform).__name__}. Read transform files with "
        "ngffreg.transforms.load_transform_files first.")


def _fields(transform: Transform) -> list[DisplacementField]:
    """The displacement fields among the steps of ``transform`` (fixed side first)."""
    return [t for t in iter_steps(transform) if isinstance(t, DisplacementField)]


def _one_level(moving: Any, like: xr.DataArray) -> xr.DataArray:
    """``moving`` itself, or the level of a pyramid whose spacing suits ``like``'s grid
    (:func:`ngffreg.warp.choose_moving_level`)."""
    if isinstance(moving, xr.DataTree):
        lv = _levels(moving)
        return lv[choose_moving_level(lv, _spacing(like), _units(like))[0]]
    if isinstance(moving, xr.DataArray):
        return moving
    raise InputError(f"Expected the moving image as an xarray.DataArray or DataTree; got "
                     f"{type(moving).__name__}. Open a file with ngffreg.open_image first.")


def qc_summary(fixed: xr.DataArray, moving: Any, transform: Any, *, mask: Any = None,
               fields: bool = True, figure: str | os.PathLike | None = None
               ) -> dict[str, Any]:
    """A short quality summary of a registration, on ``fixed``'s grid.

    ``moving`` is resampled onto ``fixed`` without (``before``) and with (``after``) the
    fixed → moving ``transform`` (:func:`ngffreg.warp`), and compared with
    :func:`ngffreg.qc.ncc`. ``fixed`` and both resampled images are held in memory: pass a
    coarse level (``pyramid.reg.qc`` picks one).

    Returns a dict with

    - ``ncc_before``, ``ncc_after``: normalised cross-correlation over ``mask`` (a boolean
      array of ``fixed``'s shape; default: every voxel);
    - ``ncc_before_foreground``, ``ncc_after_foreground``: the same over the fixed image's
      Otsu foreground (:func:`ngffreg.qc.otsu_threshold`);
    - ``overlap``: the fraction of that foreground the transform maps inside the moving
      image (:func:`ngffreg.registration.coarse.overlap_fraction`);
    - ``fields``: with ``fields=True``, one :func:`ngffreg.qc.field_report` per
      displacement field of the transform (Jacobian range, folded voxels), plus its
      ``name`` and ``shape``;
    - ``figure``: with ``figure=PATH``, the PNG written by
      :func:`ngffreg.qc.overlay_figure` (fixed over moving, before and after);
    - ``level_spacing``, ``units``: the grid the numbers were measured on.
    """
    t = as_transform(transform)
    fixed = load(fixed)
    moving = _one_level(moving, fixed)
    if _units(moving) != _units(fixed):  # the transform is in the fixed image's unit
        moving = to_units(moving, _units(fixed))
    f = np.asarray(fixed.values, dtype=np.float64)
    before = np.asarray(_warp(moving, Identity(), like=fixed).values)
    after = np.asarray(_warp(moving, t, like=fixed).values)
    fg = f > otsu_threshold(f)
    m = None if mask is None else np.asarray(mask, dtype=bool)
    out: dict[str, Any] = {
        "ncc_before": ncc(f, before, m), "ncc_after": ncc(f, after, m),
        "ncc_before_foreground": ncc(f, before, fg), "ncc_after_foreground": ncc(f, after, fg),
        "overlap": overlap_fraction(fixed, moving, t),
        "level_spacing": list(_spacing(fixed)), "units": _units(fixed),
    }
    if fields:
        out["fields"] = [{"name": fld.name, "shape": list(fld.grid.shape), **field_report(fld)}
                         for fld in _fields(t)]
    if figure is not None:
        out["figure"] = str(overlay_figure(f, before, after, figure, spacing=_spacing(fixed)))
    return out


def _write(data: xr.DataArray | xr.DataTree, path: str | os.PathLike, transforms: Any,
           kwargs: dict[str, Any]) -> Path:
    """:func:`ngffreg.to_ome_zarr`, with ``transforms`` written into the store before it is
    published (so a failure leaves nothing behind)."""
    if transforms is None:
        return _to_ome_zarr(data, path, **kwargs)
    from .transforms.ngff import write_registration, write_transforms
    from .transforms.scene import IMAGE, IMAGE_SYSTEM, start_scene

    version = kwargs.setdefault("version", "0.6")
    if version != "0.6":
        raise InputError(
            f"Transforms are stored as OME-Zarr 0.6 (RFC-5) metadata; got version={version!r}. "
            "Drop version= or pass version='0.6'.")
    kwargs.setdefault("coordinate_system", IMAGE_SYSTEM)
    kwargs.setdefault("image_group", IMAGE)
    if isinstance(transforms, Mapping):
        named = {k: as_transform(v) for k, v in transforms.items()}

        def store(tmp: Path) -> None:
            start_scene(tmp, image=kwargs["image_group"])
            write_transforms(tmp, named)
    else:
        registration = as_transform(transforms)

        def store(tmp: Path) -> None:
            start_scene(tmp, image=kwargs["image_group"])
            write_registration(tmp, registration)
    user = kwargs.pop("before_publish", None)

    def before_publish(tmp: Path) -> None:
        store(tmp)
        if user is not None:
            user(tmp)

    return _to_ome_zarr(data, path, before_publish=before_publish, **kwargs)


@xr.register_dataarray_accessor("reg")
class DataArrayRegAccessor:
    """``image.reg``: ngffreg on a physically annotated image (dims ``z, y, x``; see
    :func:`ngffreg.make_image`, :func:`ngffreg.open_image`)."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    # metadata ------------------------------------------------------------------------
    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in :attr:`units` (:func:`ngffreg.spacing`)."""
        return _spacing(self._obj)

    @property
    def origin(self) -> tuple[float, float, float]:
        """Physical position (z, y, x) of the centre of voxel (0, 0, 0)
        (:func:`ngffreg.origin`)."""
        return _origin(self._obj)

    @property
    def direction(self) -> np.ndarray:
        """The image's direction cosines (3×3, z, y, x; :func:`ngffreg.direction`): the
        identity unless it is oblique, because a signed-permutation direction is normalised
        away when the image is made; the file's own is :attr:`source_direction`."""
        return _direction(self._obj)

    @property
    def source_direction(self) -> np.ndarray:
        """The direction of the source (3×3, z, y, x) before signed-permutation
        normalisation (:func:`ngffreg.image.source_direction`)."""
        return _source_direction(self._obj)

    @property
    def units(self) -> str:
        """The OME-NGFF length unit of the spatial axes (:func:`ngffreg.units`)."""
        return _units(self._obj)

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper physical corners (z, y, x) of the box holding every voxel
        centre (:func:`ngffreg.physical_bbox`); add half a voxel for the voxels' extent.

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> img = ngffreg.make_image(np.zeros((3, 4, 5)), spacing=1.0, origin=(0, 0, 0),
        ...                          direction=np.diag([1.0, 1.0, -1.0]), unit="mm")
        >>> [v.tolist() for v in img.reg.bbox]
        [[0.0, 0.0, -4.0], [2.0, 3.0, 0.0]]
        """
        return physical_bbox(self._obj)

    def to_units(self, unit: str) -> xr.DataArray:
        """The image with its coordinates in ``unit`` (:func:`ngffreg.to_units`)."""
        return to_units(self._obj, unit)

    # selection ---------------------------------------------------------------------
    def crop(self, lower: Any, upper: Any, *, margin: float = 0.0) -> xr.DataArray:
        """The lazy block holding every voxel whose centre lies in the physical box
        ``[lower - margin, upper + margin]`` (z, y, x, in :attr:`units`;
        :func:`ngffreg.select_box`).

        The box is in physical space, whatever the file's orientation: a flipped or
        permuted source was normalised when opened, so the block holds exactly the voxels
        whose centres lie in the box. An oblique image's block cannot follow the box's
        faces: it is the box's bounding box in the image's own (rotated) frame, which holds
        every voxel centre in the box and some outside it.

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> img = ngffreg.make_image(np.arange(60.0).reshape(3, 4, 5), spacing=1.0,
        ...                          direction=np.diag([1.0, 1.0, -1.0]), unit="mm")
        >>> block = img.reg.crop((0, 1, -1.5), (0, 2, 0))
        >>> block.x.values.tolist(), block.values.tolist()
        ([-1.0, 0.0], [[[6.0, 5.0], [11.0, 10.0]]])
        """
        return select_box(self._obj, lower, upper, margin=margin)

    # pyramid -------------------------------------------------------------------------
    def to_pyramid(self, **kwargs: Any) -> xr.DataTree:
        """A lazy multiscale pyramid (:func:`ngffreg.to_pyramid`; keywords ``n_levels``,
        ``min_size``, ``method``, ``chunks``).

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> img = ngffreg.make_image(np.ones((8, 8, 8)), spacing=1.0, unit="um")
        >>> pyr = img.reg.to_pyramid(n_levels=2)
        >>> [lv.reg.spacing for lv in pyr.reg.levels]
        [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0)]
        """
        return to_pyramid(self._obj, **kwargs)

    # registration --------------------------------------------------------------------
    def register(self, moving: Any, output: str | os.PathLike | None = None,
                 **kwargs: Any) -> Any:
        """Register ``moving`` to this (fixed) image: ``ngffreg.register(self, moving,
        output, **kwargs)`` (see :func:`ngffreg.register` for the keywords). Returns the
        :class:`~ngffreg.registration.register.RegistrationResult`, whose ``transform``
        maps fixed points to moving points.

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> from ngffreg.synthetic import synthetic_volume
        >>> fixed = synthetic_volume((32, 32, 32), spacing=(1.0, 1.0, 1.0),
        ...                          origin=(0.0, 0.0, 0.0), dtype="float32")
        >>> moving = ngffreg.make_image(fixed.data, spacing=1.0, origin=(2.0, -1.0, 1.0),
        ...                             unit="um")  # the content moved by (2, -1, 1) µm
        >>> result = fixed.reg.register(moving, linear_type="Translation",
        ...                             nonlinear_type_coarse=None, nonlinear_type_fine=None,
        ...                             downsample_factor=1, linear_accuracy="low")
        >>> np.round(result.transform.apply([[16.0, 16.0, 16.0]]), 0).tolist()
        [[18.0, 15.0, 17.0]]
        """
        return _register(self._obj, moving, output, **kwargs)

    def warp(self, transform: Any, like: Any = None, **kwargs: Any) -> xr.DataArray:
        """This (moving) image resampled lazily through the fixed → moving ``transform``
        onto ``like``'s grid (:func:`ngffreg.warp`; keywords ``interpolator``,
        ``fill_value``, ``chunks``, ``dtype``, or a grid by ``shape``, ``spacing``,
        ``origin``, ``direction``, ``unit``). ``transform`` may be a Transform, a
        registration result or an output store path; ``like`` an image, a pyramid (its level
        0) or an :class:`ngffreg.image.Grid`.

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> from ngffreg.transforms import Translation
        >>> img = ngffreg.make_image(np.arange(27.0).reshape(3, 3, 3), spacing=1.0, unit="mm")
        >>> out = img.reg.warp(Translation(translation=(0.0, 0.0, 1.0)), like=img)
        >>> out.values[0, 0].tolist()  # out(p) = img(p + 1 mm in x); outside: fill_value
        [1.0, 2.0, 0.0]
        """
        if isinstance(like, xr.DataTree):
            like = _level(like, 0)
        return _warp(self._obj, as_transform(transform), like=like, **kwargs)

    # output --------------------------------------------------------------------------
    def to_ome_zarr(self, path: str | os.PathLike, transforms: Any = None,
                    **kwargs: Any) -> Path:
        """Write the image as an OME-Zarr pyramid (:func:`ngffreg.to_ome_zarr`; keywords
        ``version``, ``chunks``, ``chunks_per_shard``, ``n_levels``, ``method``,
        ``overwrite``, …).

        ``transforms`` (optional) are stored in the same store as OME-NGFF 0.6 (RFC-5)
        coordinate transformations before it is published: a fixed → moving Transform (or a
        registration result) becomes the ``registration`` transform
        (:func:`ngffreg.transforms.write_registration`); a mapping ``{name: transform}``
        is written as given (:func:`ngffreg.transforms.write_transforms`). With transforms
        the version is 0.6 and the image's coordinate system is ``"fixed"`` (override with
        ``coordinate_system=``). Returns the store's path.

        Examples
        --------
        >>> import tempfile, numpy as np, ngffreg
        >>> from ngffreg.transforms import Translation, read_registration
        >>> img = ngffreg.make_image(np.ones((4, 4, 4), "uint8"), spacing=2.0, unit="um")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     store = img.reg.to_ome_zarr(f"{tmp}/a.ome.zarr",
        ...                                 transforms=Translation(translation=(1.0, 0.0, 0.0)))
        ...     read_registration(store).apply([[0.0, 0.0, 0.0]]).tolist()
        [[1.0, 0.0, 0.0]]
        """
        return _write(self._obj, path, transforms, kwargs)

    # quality -------------------------------------------------------------------------
    def qc(self, moving: Any, transform: Any, **kwargs: Any) -> dict[str, Any]:
        """A quality summary of registering ``moving`` to this (fixed) image with the fixed
        → moving ``transform`` (a Transform, registration result or output store path):
        correlation before and after, overlap, the fields' Jacobian range and folds, and
        with ``figure=PATH`` an overlay PNG (:func:`qc_summary`; keywords ``mask``,
        ``fields``, ``figure``). Loads this image and the resampled moving image: call it on
        a coarse level, or on the pyramid (``pyramid.reg.qc`` picks a level).

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> from ngffreg.transforms import Translation
        >>> fixed = ngffreg.make_image(np.random.default_rng(0).random((8, 8, 8)),
        ...                            spacing=1.0, unit="um")
        >>> moving = ngffreg.make_image(fixed.data, spacing=1.0, origin=(1.0, 0.0, 0.0),
        ...                             unit="um")
        >>> report = fixed.reg.qc(moving, Translation(translation=(1.0, 0.0, 0.0)))
        >>> report["ncc_after"] > 0.99 > report["ncc_before"]
        True
        """
        return qc_summary(self._obj, moving, transform, **kwargs)


@xr.register_datatree_accessor("reg")
class DataTreeRegAccessor:
    """``pyramid.reg``: ngffreg on a multiscale pyramid (:func:`ngffreg.to_pyramid`, the
    multiscale-spatial-image layout ``/scale0``, ``/scale1``, …). Metadata properties
    describe level 0 (full resolution)."""

    def __init__(self, obj: xr.DataTree) -> None:
        self._obj = obj

    @property
    def levels(self) -> list[xr.DataArray]:
        """The levels as images, finest first (:func:`ngffreg.levels`)."""
        return _levels(self._obj)

    def level(self, index: int | None = None, *, spacing: Any = None,
              max_voxels: int | None = None, memory_budget: Any = None) -> xr.DataArray:
        """One level as an image: by ``index`` (negative counts from the coarsest;
        :func:`ngffreg.level`), or the one :func:`ngffreg.select_level` picks: the coarsest
        whose spacing is no coarser than ``spacing`` (scalar or z, y, x, in :attr:`units`),
        the finest with at most ``max_voxels`` voxels, or the finest that fits
        ``memory_budget`` (bytes or e.g. ``"2 GiB"``). Give exactly one.

        Examples
        --------
        >>> import numpy as np, ngffreg
        >>> pyr = ngffreg.make_image(np.ones((16, 16, 16)), spacing=1.0,
        ...                          unit="um").reg.to_pyramid(n_levels=3)
        >>> pyr.reg.level(-1).reg.spacing, pyr.reg.level(spacing=2.5).reg.spacing
        ((4.0, 4.0, 4.0), (2.0, 2.0, 2.0))
        """
        given = sum(v is not None for v in (index, spacing, max_voxels, memory_budget))
        if given != 1:
            raise InputError("Give exactly one of index, spacing=, max_voxels=, memory_budget=.")
        if index is None:
            index = select_level(self._obj, target_spacing=spacing, max_voxels=max_voxels,
                                 memory_budget=memory_budget)
        return _level(self._obj, index)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) of level 0."""
        return _spacing(self.level(0))

    @property
    def origin(self) -> tuple[float, float, float]:
        """Physical position (z, y, x) of level 0's voxel (0, 0, 0)."""
        return _origin(self.level(0))

    @property
    def direction(self) -> np.ndarray:
        """Direction cosines (3×3, z, y, x) of level 0 (see the image accessor)."""
        return _direction(self.level(0))

    @property
    def source_direction(self) -> np.ndarray:
        """The source's direction before normalisation (3×3, z, y, x)."""
        return _source_direction(self.level(0))

    @property
    def units(self) -> str:
        """The length unit of the spatial axes."""
        return _units(self.level(0))

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper physical corners (z, y, x) of level 0's voxel centres."""
        return physical_bbox(self.level(0))

    def crop(self, lower: Any, upper: Any, *, level: int = 0,
             margin: float = 0.0) -> xr.DataArray:
        """The lazy block of level ``level`` holding every voxel whose centre lies in the
        physical box (see :meth:`DataArrayRegAccessor.crop`). For a level picked by
        spacing: ``pyramid.reg.level(spacing=4).reg.crop(lower, upper)``."""
        return select_box(self.level(level), lower, upper, margin=margin)

    def register(self, moving: Any, output: str | os.PathLike | None = None,
                 **kwargs: Any) -> Any:
        """Register ``moving`` to this (fixed) pyramid, using its levels:
        ``ngffreg.register(self, moving, output, **kwargs)``."""
        return _register(self._obj, moving, output, **kwargs)

    def warp(self, transform: Any, like: Any, **kwargs: Any) -> xr.DataTree:
        """This (moving) pyramid resampled lazily onto the pyramid of ``like``'s grid (an
        image, or a pyramid's level 0): every output level is warped from the coarsest moving
        level no coarser than it (:func:`ngffreg.warp.warp_pyramid`; keywords ``n_levels``,
        ``interpolator``, ``fill_value``, ``chunks``). For one level, warp an image:
        ``pyramid.reg.level(0).reg.warp(t, like=fixed)``."""
        if isinstance(like, xr.DataTree):
            like = _level(like, 0)
        pyramid, _ = warp_pyramid(self._obj, as_transform(transform), like=like, **kwargs)
        return pyramid

    def to_ome_zarr(self, path: str | os.PathLike, transforms: Any = None,
                    **kwargs: Any) -> Path:
        """Write the pyramid's levels as they are to an OME-Zarr store, with optional
        ``transforms`` (see :meth:`DataArrayRegAccessor.to_ome_zarr`)."""
        return _write(self._obj, path, transforms, kwargs)

    def qc(self, moving: Any, transform: Any, *, level: int | None = None,
           max_voxels: int = 2**23, **kwargs: Any) -> dict[str, Any]:
        """:func:`qc_summary` on one level of this (fixed) pyramid: ``level``, or the finest
        with at most ``max_voxels`` voxels (default 8 Mi). ``moving`` (an image or a
        pyramid; then its level whose spacing suits) is resampled onto that level."""
        fixed = (self.level(level) if level is not None
                 else self.level(max_voxels=max_voxels))
        return qc_summary(fixed, moving, transform, **kwargs)
