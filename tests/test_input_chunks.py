"""Inputs stored in tiny chunks: tasks gather them, and a registration whose blocks would
decode thousands of them says so, with the cure."""

from __future__ import annotations

import warnings

import pytest

from ngffreg.io.chunks import MIN_TASK_EDGE, task_chunks
from ngffreg.io.read import open_image
from ngffreg.io.write import to_ome_zarr
from ngffreg.registration.staging import MAX_CHUNKS_PER_BLOCK, small_chunk_warning
from ngffreg.synthetic import synthetic_volume


def test_task_chunks_gather_stored_chunks_along_space_only():
    assert task_chunks((1, 4, 4, 4), (3, 100, 50, 30)) == (1, 64, 50, 30)
    assert task_chunks((128, 128, 128), (300, 300, 300)) == (128, 128, 128)
    assert task_chunks((48, 10, 100), (96, 96, 96)) == (96, 70, 96)  # whole multiples


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 64³ volume stored in 4³ chunks (4,096 chunk files at level 0)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.ome.zarr"
    image = synthetic_volume((64, 64, 64), spacing=(1, 1, 1), seed=3)
    to_ome_zarr(image, path, version="0.5", chunks=4, n_levels=2)
    return path


def test_an_image_in_tiny_chunks_reads_as_few_tasks(tiny):
    image = open_image(tiny)
    assert image.attrs["stored_chunks"] == [4, 4, 4]
    assert image.data.chunksize == (MIN_TASK_EDGE,) * 3  # not 16³ tasks of 4³ voxels
    assert float(image.mean()) > 0


def test_blocks_that_would_read_thousands_of_chunks_are_warned_about(tiny):
    image = open_image(tiny)
    message = small_chunk_warning(image, (48, 48, 48), 8, "fixed")
    assert message is not None
    assert "chunks of 4 × 4 × 4 voxels" in message and "about 2,197 of them" in message
    assert "17,576 for 8 blocks" in message and "ngffreg convert" in message
    assert (13 ** 3 > MAX_CHUNKS_PER_BLOCK
            and small_chunk_warning(image, (16, 16, 16), 8, "fixed") is None)  # 125 chunks
    in_memory = image.compute().copy()
    in_memory.attrs.pop("stored_chunks")
    assert small_chunk_warning(in_memory, (48, 48, 48), 8, "fixed") is None


def test_register_warns_and_still_registers(tiny, tmp_path):
    from ngffreg.registration.register import register

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = register(tiny, tiny, linear_type=None, nonlinear_type_coarse=None,
                          chunk_size=32, workers=1, min_foreground=0.0)
    said = [str(w.message) for w in caught if "stored in chunks of 4 × 4 × 4" in str(w.message)]
    assert len(said) == 2 and "fixed image" in said[0] and "moving image" in said[1]
    assert {r["status"] for r in result.blocks} <= {"ok", "declined", "skipped"}
