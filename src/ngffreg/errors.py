"""Exceptions. One root, :class:`NgffregError`; every message says what to do."""

from __future__ import annotations


class NgffregError(Exception):
    """Root of every error ngffreg raises on purpose."""


class InputError(NgffregError, ValueError):
    """The input data or a parameter cannot be used as given."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A path that should exist does not."""


class MissingSpacingError(InputError):
    """The input carries no voxel size and none was given."""


class UnitError(InputError):
    """A unit name ngffreg does not know, or units that cannot be converted."""


class OrientationError(InputError):
    """A direction matrix that cannot be represented where it is being written."""


class OutputError(NgffregError, OSError):
    """The output cannot be written (exists, not writable, disk full)."""


class CatalogError(NgffregError, LookupError):
    """A data-catalog entry cannot be resolved locally nor downloaded."""


class TransformError(InputError):
    """A transform that is malformed, of the wrong dimension, or that does not chain."""
