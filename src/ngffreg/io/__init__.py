"""Readers and writers: every format in, OME-Zarr out."""
