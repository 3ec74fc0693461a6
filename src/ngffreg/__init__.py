"""ngffreg: chunked registration of very large 3-D volumes on xarray / OME-NGFF.

The functional core is importable from here; the CLI (:mod:`ngffreg.cli`) and the
other faces are thin wrappers over it.
"""

from __future__ import annotations

from . import accessor, transforms  # accessor: registers .reg on DataArray and DataTree
from .errors import (
    CatalogError,
    InputError,
    InputNotFoundError,
    MissingSpacingError,
    NgffregError,
    OrientationError,
    OutputError,
    UnitError,
)
from .image import (
    direction,
    make_image,
    origin,
    physical_bbox,
    select_box,
    spacing,
    to_units,
    units,
)
from .io.read import open_image
from .io.write import to_ome_zarr
from .pipeline import ChunkedRegistration
from .pyramid import level, levels, select_level, to_pyramid
from .registration.register import register
from .warp import warp

__version__ = "0.1.0"

__all__ = [
    "CatalogError",
    "ChunkedRegistration",
    "InputError",
    "InputNotFoundError",
    "MissingSpacingError",
    "NgffregError",
    "OrientationError",
    "OutputError",
    "UnitError",
    "__version__",
    "accessor",
    "direction",
    "level",
    "levels",
    "make_image",
    "open_image",
    "origin",
    "physical_bbox",
    "register",
    "select_box",
    "select_level",
    "spacing",
    "to_ome_zarr",
    "to_pyramid",
    "to_units",
    "transforms",
    "units",
    "warp",
]
