"""Physical units: the OME-NGFF names, aliases users type, and conversion factors; and
memory sizes (:func:`parse_bytes`, the one parser of ``"8 GiB"``-style budgets)."""

from __future__ import annotations

from typing import Any

from .errors import InputError, UnitError

# Length units of OME-NGFF (UDUNITS-2 names), in metres.
_LENGTH_IN_METRES: dict[str, float] = {
    "angstrom": 1e-10,
    "attometer": 1e-18,
    "centimeter": 1e-2,
    "decimeter": 1e-1,
    "exameter": 1e18,
    "femtometer": 1e-15,
    "foot": 0.3048,
    "gigameter": 1e9,
    "hectometer": 1e2,
    "inch": 0.0254,
    "kilometer": 1e3,
    "megameter": 1e6,
    "meter": 1.0,
    "micrometer": 1e-6,
    "mile": 1609.344,
    "millimeter": 1e-3,
    "nanometer": 1e-9,
    "parsec": 3.0857e16,
    "petameter": 1e15,
    "picometer": 1e-12,
    "terameter": 1e12,
    "yard": 0.9144,
    "yoctometer": 1e-24,
    "yottameter": 1e24,
    "zeptometer": 1e-21,
    "zettameter": 1e21,
}

_ALIASES: dict[str, str] = {
    "m": "meter",
    "metre": "meter",
    "meters": "meter",
    "cm": "centimeter",
    "mm": "millimeter",
    "millimetre": "millimeter",
    "millimeters": "millimeter",
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "micrometre": "micrometer",
    "micrometers": "micrometer",
    "\\u00b5m": "micrometer",
    "nm": "nanometer",
    "nanometre": "nanometer",
    "nanometers": "nanometer",
    "pm": "picometer",
    "a": "angstrom",
    "å": "angstrom",
}


def normalize_unit(unit: str) -> str:
    """Return the OME-NGFF name of a length unit (``"um"`` → ``"micrometer"``).

    Raises :class:`~ngffreg.errors.UnitError` for a unit that is not a length.
    """
    if not isinstance(unit, str) or not unit.strip():
        raise UnitError(
            f"Unit {unit!r} is empty. Give a length unit such as 'micrometer' or 'millimeter'."
        )
    key = unit.strip()
    name = _ALIASES.get(key, _ALIASES.get(key.lower(), key.lower()))
    if name not in _LENGTH_IN_METRES:
        raise UnitError(
            f"Unknown unit {unit!r}. Use an OME-NGFF length unit, e.g. 'micrometer' (um), "
            f"'millimeter' (mm), 'nanometer' (nm); known: {', '.join(sorted(_LENGTH_IN_METRES))}."
        )
    return name


def unit_factor(from_unit: str, to_unit: str) -> float:
    """Factor that converts a length in ``from_unit`` to ``to_unit``: the ratio of the
    units' lengths in metres taken in decimal, so that millimetre → micrometre is 1000
    exactly (1e-3 / 1e-6 in binary floating point is 1000.0000000000001)."""
    from decimal import Decimal

    a, b = (_LENGTH_IN_METRES[normalize_unit(u)] for u in (from_unit, to_unit))
    return float(Decimal(repr(a)) / Decimal(repr(b)))


def parse_bytes(value: Any) -> int:
    """A memory size in bytes: a number, or text such as ``"8 GiB"``, ``"500MB"``; refused
    with a message when unreadable or not positive."""
    from dask.utils import parse_bytes as parse

    try:
        out = parse(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        raise InputError(f"Cannot read {value!r} as a memory size; write e.g. '8 GiB' or "
                         "a number of bytes.") from None
    if out <= 0:
        raise InputError(f"A memory size must be positive; got {value!r}.")
    return out
