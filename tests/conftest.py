"""Shared fixtures: the real data folder, and a guard that fails a test if dask computes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest


class _CountingScheduler:
    """A dask scheduler that counts computes and raises past ``max_computes``."""

    def __init__(self, max_computes: int) -> None:
        self.max_computes = max_computes
        self.total = 0

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(
                f"dask computed {self.total} time(s); at most {self.max_computes} allowed here"
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[_CountingScheduler]:
    """Fail when code inside the block triggers more than ``max_computes`` dask computes."""
    scheduler = _CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``$NGFFREG_DATA_DIR`` (``make test`` sets it to ../shared/data); skip when absent."""
    value = os.environ.get("NGFFREG_DATA_DIR", "").strip()
    if not value or not Path(value).is_dir():
        pytest.skip("real data not available: set NGFFREG_DATA_DIR to the shared data folder")
    return Path(value).resolve()


@pytest.fixture
def dataset(data_dir: Path):
    """Resolve a data-catalog entry to a local path (no download in tests)."""
    from ngffreg import catalog

    def resolve(name: str) -> Path:
        try:
            return catalog.fetch(name, download=False)
        except catalog.CatalogError as exc:  # pragma: no cover - depends on the machine
            pytest.skip(str(exc))

    return resolve
