"""Transforms as OME-NGFF 0.6 (RFC-5) coordinate-transformation metadata.

What is written (the output-store convention of DESIGN.md)
------------------------------------------------------------
An OME-Zarr 0.6 image store (Zarr v3) whose root multiscales

- declares the coordinate systems ``fixed`` and ``moving`` (axes ``z, y, x`` of type
  ``space`` with the unit), beside the one its datasets map to (``fixed`` for a
  registered image, written with ``to_ome_zarr(..., coordinate_system="fixed")``);
- lists, in its own ``coordinateTransformations``, named transforms between those
  systems; the registration is named ``registration``, ``input`` {name: fixed},
  ``output`` {name: moving}, stored as a ``bijection`` when its inverse is known.

Our types map onto RFC-5 types: :class:`~ngffreg.transforms.Identity` → ``identity``,
``Translation`` → ``translation``, ``Scale`` → ``scale``, ``Affine`` → ``affine``
(inline, the upper 3×4 block of the homogeneous matrix, row-major, last column the
translation), ``Sequence`` → ``sequence``, ``Bijection`` → ``bijection`` and
``DisplacementField`` → ``displacements`` with ``interpolation: "linear"``. A
thin-plate spline has no RFC-5 type: it is sampled onto a grid the caller gives
(:func:`~ngffreg.transforms.sample_field`) or refused.

Matrices are kept inline as JSON numbers. Python writes a float64 as the shortest
decimal that reads back as the same float64 (``repr``), so the round trip is exact.
ngff-zarr's own writer moves matrices into arrays instead; the reader here accepts both
forms (RFC-5 "affine": ``"affine"`` *or* ``"path"``).

A displacement field is a multiscale image under the store's ``coordinateTransformations``
group (RFC-5: "zarr arrays [holding transformation parameters] SHOULD be stored in a zarr
group coordinateTransformations"), at ``coordinateTransformations/<name>``: dims
``(c, z, y, x)``, the ``c`` axis of type ``displacement`` (``discrete: true``) holding the
z, y, x components in physical units, and its own 0.6 multiscales whose datasets map to
a coordinate system named like the transform's input system (RFC-5: "The field coordinate
system MUST contain an axis identical to every axis of its input coordinate system in the
same order", and "MUST have exactly one axis with type displacement"; the component axis
comes first as ngff-zarr's ``declare_field_transform`` and the 0.6 example
``displacement_field.json`` have it). It is written chunk by chunk through
:func:`ngffreg.io.write.to_ome_zarr`, atomically. ngffreg's "outside" policy, which RFC-5
does not describe, is kept in that group's ``ngffreg`` attributes (default ``"zero"``,
ITK's rule).

Modules: :mod:`~ngffreg.transforms.ngff.encode` (writing),
:mod:`~ngffreg.transforms.ngff.decode` (reading) and :mod:`~ngffreg.transforms.ngff.store`
(what both share, and the store's other readers use: the root document, its coordinate
systems, atomic JSON writes).

Semantics followed when reading (RFC-5, ome/ngff-spec ``specification.md``):

- a ``sequence`` applies its first transformation first; sequences may nest (the
  "top-levelness of sequence" rule was removed in RFC-5 response 2, 2025-11-18);
- an ``affine`` is the upper ``M×(N+1)`` block of the homogeneous matrix;
- ``displacements`` map ``p`` to ``p + d(p)``, ``d`` interpolated (linearly) in the field
  at ``p`` through the field's own scale/translation; the ``i``-th component refers to
  the ``i``-th axis of the output system;
- a ``bijection`` holds ``forward`` and ``inverse``; inner transforms may omit ``input``
  and ``output``.
"""

from __future__ import annotations

from .decode import read_registration, read_transforms
from .encode import axis_aligned, write_registration, write_transforms
from .store import FIELD_GROUP, FIXED, MOVING, REGISTRATION

__all__ = [
    "FIELD_GROUP",
    "FIXED",
    "MOVING",
    "REGISTRATION",
    "axis_aligned",
    "read_registration",
    "read_transforms",
    "write_registration",
    "write_transforms",
]
