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


@pytest.fixture
def cli_fails(capsys):
    """``cli_fails(argv, *needles)``: run the CLI, expect exit status 2 and an error message
    holding every needle; returns the message."""
    from ngffreg.cli import main

    def run(argv: list[str], *needles: str) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error:" in err
        for needle in needles:
            assert needle in err, err
        return err

    return run


@pytest.fixture(scope="session")
def ants_syn(data_dir: Path) -> dict:
    """Outputs of ``ants.registration(mni, ch2, "SyN")``, computed once per machine.

    Returns ``{"fixed": mni path, "moving": ch2 path, "fwdtransforms": [...],
    "invtransforms": [...]}`` with the transform files in ANTs' own order. The files are
    cached under the ngffreg cache folder (keyed by the antspyx version); a file lock keeps
    parallel test workers from computing them twice.
    """
    import fcntl
    import json
    import shutil

    ants = pytest.importorskip("ants")
    from ngffreg import catalog

    fixed = data_dir / "ants" / "mni.nii.gz"
    moving = data_dir / "ants" / "ch2.nii.gz"
    if not fixed.is_file() or not moving.is_file():
        pytest.skip("ants/mni.nii.gz or ants/ch2.nii.gz missing from the data folder")
    folder = catalog.cache_dir() / "test-fixtures" / f"ants-syn-mni-ch2-{ants.__version__}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.is_file():
            reg = ants.registration(
                ants.image_read(str(fixed)), ants.image_read(str(moving)), "SyN",
                random_seed=1, outprefix=str(folder / "syn_"),
            )
            listing = {}
            for key in ("fwdtransforms", "invtransforms"):
                names = []
                for src in reg[key]:
                    dst = folder / Path(src).name
                    if Path(src).resolve() != dst.resolve():
                        shutil.copyfile(src, dst)
                    names.append(dst.name)
                listing[key] = names
            manifest.write_text(json.dumps(listing))
    listing = json.loads(manifest.read_text())
    return {
        "fixed": fixed, "moving": moving,
        **{key: [str(folder / n) for n in names] for key, names in listing.items()},
    }


@pytest.fixture(scope="session")
def tools_python() -> Path:
    """The tools environment's Python (``.venv-tools``: Python 3.12 with the external OME-Zarr
    readers, built by ``make tools-env``) that runs ``tests/external_readers.py``; skip,
    saying why, when it is not built."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    python = root / ".venv-tools" / "bin" / "python"
    if (root / ".venv-tools" / ".ngffreg-tools-installed").is_file() and python.exists():
        return python
    found = subprocess.run(["sh", str(root / "tests" / "tools_python.sh")],
                           capture_output=True, text=True).stdout.strip()
    if not found:
        pytest.skip("no Python 3.12 on this machine (tests/tools_python.sh found none): the "
                    "external OME-Zarr readers need it")
    pytest.skip(f"the tools environment is not built: run `make tools-env` ({found})")


def texture(shape: tuple[int, ...], seed: int):
    """A smooth random texture (white noise smoothed by a 2-voxel Gaussian), float32 of
    mean 500 and standard deviation 100: tissue for registrations whose truth is known."""
    import numpy as np
    from scipy import ndimage

    tissue = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return ((tissue - tissue.mean()) / tissue.std() * 100 + 500).astype(np.float32)


def strip_pair(zy: tuple[int, int], nx: int, start: int, seed: int):
    """A smooth random texture as the fixed image (``(*zy, nx)`` voxels of 1) and as a
    moving image ``moving(p) = fixed(p - 2 x)`` that begins ``start`` voxels in along x,
    as a round that did not image that strip."""
    from ngffreg.image import Grid

    tissue = texture((*zy, nx + 16), seed)
    fixed = Grid.from_origin((*zy, nx), 1.0, (0.0, 0.0, 0.0)).image(tissue[:, :, 8:nx + 8])
    part = tissue[:, :, start + 6:nx + 6].copy()
    moving = Grid.from_origin(part.shape, 1.0, (0.0, 0.0, float(start))).image(part)
    return fixed, moving
