"""How dask tasks cover a store's chunks."""

from __future__ import annotations

from typing import Any

#: A dask task gathers stored chunks (or shards) along each spatial axis until it is at
#: least this many voxels long: a store of tiny chunks would otherwise make one task per
#: chunk, and graphs of millions of tasks.
MIN_TASK_EDGE = 64


def task_chunks(stored: Any, shape: Any) -> tuple[int, ...]:
    """Dask chunks over a store's chunks: whole multiples of them, at least
    :data:`MIN_TASK_EDGE` voxels along the last three (spatial) axes where the array is."""
    out = []
    for k, (c, n) in enumerate(zip(stored, shape, strict=True)):
        spatial = k >= len(shape) - 3
        out.append(int(min(n, c * max(1, -(-MIN_TASK_EDGE // c)))) if spatial else int(c))
    return tuple(out)


def stored_chunks(chunks: Any) -> dict[str, list[int]]:
    """``{"stored_chunks": [z, y, x]}``, an image attribute: the voxels one read of its
    store decodes at least (its chunks' last three axes), for a reader to judge the cost
    of a region."""
    return {"stored_chunks": [int(c) for c in tuple(chunks)[-3:]]}
