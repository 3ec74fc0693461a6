"""The registered store as an OME-NGFF 0.6 *scene*, laid out as the spec's own example for
a registration (ngff-spec ``examples/scene/scene_registration.json``).

``OUT.ome.zarr`` (Zarr v3)::

    zarr.json                      ome.scene: the coordinate systems "fixed" (first: the
                                   reference a viewer shows by default) and "moving", and
                                   the transforms between them and the image below
    registered/                    the registered image: an OME-Zarr 0.6 multiscales whose
                                   datasets map (scale, translation) to its own "physical"
                                   system, so 0.4/0.5-only readers place it right too
    coordinateTransformations/     displacement fields, each an OME-Zarr 0.6 multiscales
                                   with a "displacement" axis, its system named "fixed"

The scene's transforms:

- ``registered_image``: ``identity`` from ``{"path": "registered", "name": "physical"}`` to
  ``{"name": "fixed"}`` (the image is sampled on the fixed grid, so its physical space is the
  fixed space);
- ``registration``: fixed → moving, a ``sequence`` (fine field, coarse field, affine), or a
  ``bijection`` holding it and its inverse when the inverse is known.

Stores written before this layout (image at the root, the registration in its multiscales'
``coordinateTransformations``) are still read everywhere.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..image import SPATIAL_DIMS
from .ngff.store import (
    FIXED,
    MOVING,
    declared_systems,
    image_multiscales,
    read_json,
    spatial_unit,
    write_json_atomic,
)

#: The registered image's group in a scene store.
IMAGE = "registered"
#: The registered image's own (intrinsic) coordinate system.
IMAGE_SYSTEM = "physical"
#: The name of the identity transform that places the image in the fixed space.
PLACEMENT = "registered_image"
#: The ``ngffreg`` root attribute that names the layout.
LAYOUT = "scene"


def _space(name: str, unit: str) -> dict:
    return {"name": name, "axes": [{"name": d, "type": "space", "unit": unit}
                                   for d in SPATIAL_DIMS]}


def start_scene(root: Path, *, image: str = IMAGE) -> Path:
    """Make ``root``, which holds the OME-Zarr 0.6 image group ``image``, a scene: declare
    ``fixed`` and ``moving`` in the image's unit and place the image in ``fixed``.

    The registration itself is added by :func:`ngffreg.transforms.write_registration`.
    Returns ``root``.
    """
    root = Path(root)
    ms = image_multiscales(read_json(root / image / "zarr.json"), root / image)
    systems = declared_systems(ms)
    if not systems:
        raise InputError(f"{root / image} declares no coordinate system.")
    # the image's physical system: listed last (an oblique image's datasets map to a grid
    # system first, and one affine takes it to the physical system)
    own = list(systems)[-1]
    unit = spatial_unit(systems[own], own)
    if not unit:
        raise InputError(
            f"{root / image}: its coordinate system {own!r} is not a z, y, x space with a unit.")
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {
        "ome": {"version": "0.6", "scene": {
            "coordinateSystems": [_space(FIXED, unit), _space(MOVING, unit)],
            "coordinateTransformations": [{
                "type": "identity", "name": PLACEMENT,
                "input": {"path": image, "name": own}, "output": {"name": FIXED}}]}},
        "ngffreg": {"layout": LAYOUT, "image": image}}}
    write_json_atomic(root / "zarr.json", doc)
    return root


__all__ = ["IMAGE", "IMAGE_SYSTEM", "PLACEMENT", "start_scene"]
