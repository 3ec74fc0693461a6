"""Tests of ngffreg.catalog: the real data named in data-catalog.yaml, and the download path.

Real-data tests read ``$NGFFREG_DATA_DIR`` (``make test`` sets it to ../shared/data) and
skip when it is unset or missing. Download tests use ``file://`` URLs only: no network.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import struct
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ngffreg import catalog
from ngffreg.errors import CatalogError

CATALOG_PATH = Path(__file__).resolve().parents[1] / "data-catalog.yaml"
DATASETS: dict[str, dict[str, Any]] = yaml.safe_load(CATALOG_PATH.read_text())["datasets"]
STORED = sorted(name for name, entry in DATASETS.items() if entry["kind"] in ("file", "folder"))
NIFTI = sorted(name for name in STORED if DATASETS[name]["format"] == "nifti")
NIFTI_DTYPES = {2: "uint8", 4: "int16", 16: "float32", 64: "float64", 256: "int8", 512: "uint16"}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Use the repository catalog and a private cache; never touch ~/.cache."""
    monkeypatch.setenv("NGFFREG_CATALOG", str(CATALOG_PATH))
    monkeypatch.setenv("NGFFREG_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def real_data_dir() -> Path:
    """The shared real-data folder, or skip."""
    value = os.environ.get("NGFFREG_DATA_DIR", "").strip()
    if not value:
        pytest.skip("NGFFREG_DATA_DIR is not set (make test sets it to ../shared/data)")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        pytest.skip(f"NGFFREG_DATA_DIR={value} is not a folder")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def _use_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, datasets: dict) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "datasets": datasets}))
    monkeypatch.setenv("NGFFREG_CATALOG", str(path))


def _file_entry(source: Path, sha256: str, rel: str = "x/blob.bin") -> dict[str, Any]:
    origin = {"repository": "none", "path": rel, "url": source.as_uri()}
    return {"path": rel, "kind": "file", "format": "raw", "origin": origin, "sha256": sha256}


# --- real data ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", STORED)
def test_fetch_resolves_real_dataset(name: str, real_data_dir: Path) -> None:
    path = catalog.fetch(name, download=False)
    assert path == real_data_dir / DATASETS[name]["path"]
    assert path.is_dir() if DATASETS[name]["kind"] == "folder" else path.is_file()


@pytest.mark.parametrize("name", STORED)
def test_real_checksums(name: str, real_data_dir: Path) -> None:
    entry = DATASETS[name]
    path = real_data_dir / entry["path"]
    if entry["kind"] == "file":
        assert _sha256(path) == entry["sha256"], path
        assert path.stat().st_size == entry["bytes"]
    else:
        on_disk = {p.name: _sha256(p) for p in path.iterdir() if p.is_file()}
        assert on_disk == entry["files"]
        assert catalog.folder_digest(on_disk) == entry["sha256"]
        assert sum(p.stat().st_size for p in path.iterdir()) == entry["bytes"]
    assert catalog.verify(name)
    assert catalog.fetch(name, download=False, verify=True) == path


@pytest.mark.parametrize("name", NIFTI)
def test_nifti_header_matches_catalog(name: str, real_data_dir: Path) -> None:
    entry = DATASETS[name]
    with gzip.open(real_data_dir / entry["path"]) as fh:
        header = fh.read(348)
    assert struct.unpack("<i", header[:4])[0] == 348
    dim = struct.unpack("<8h", header[40:56])
    datatype = struct.unpack("<h", header[70:72])[0]
    pixdim = struct.unpack("<8f", header[76:108])
    assert dim[0] == 3
    assert list(dim[3:0:-1]) == entry["shape"]
    assert list(pixdim[3:0:-1]) == entry["voxel_size"]
    assert NIFTI_DTYPES[datatype] == entry["dtype"]


def test_tiff_folder_matches_catalog(real_data_dir: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    entry = DATASETS["brainreg/brain"]
    folder = real_data_dir / entry["path"]
    names = sorted(p.name for p in folder.glob("*.tif"))
    assert len(names) == entry["shape"][0] == len(entry["files"])
    for name in (names[0], names[-1]):
        plane = tifffile.imread(folder / name)
        assert list(plane.shape) == entry["shape"][1:]
        assert plane.dtype == np.dtype(entry["dtype"])


def test_verify_detects_corruption_and_keeps_local_file(
    real_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rel = DATASETS["greedy/phantom01_rigid"]["path"]
    bad = tmp_path / "data" / rel
    bad.parent.mkdir(parents=True)
    bad.write_bytes((real_data_dir / rel).read_bytes() + b"\n")
    monkeypatch.setenv("NGFFREG_DATA_DIR", str(tmp_path / "data"))
    assert catalog.fetch("greedy/phantom01_rigid") == bad  # existence only, no hashing
    assert not catalog.verify("greedy/phantom01_rigid")
    with pytest.raises(CatalogError, match=r"phantom01_rigid\.mat") as info:
        catalog.fetch("greedy/phantom01_rigid", verify=True)
    assert DATASETS["greedy/phantom01_rigid"]["sha256"] in str(info.value)
    assert bad.is_file()


# --- catalog content and lookup -------------------------------------------------------------


def test_catalog_entries_are_complete() -> None:
    assert catalog.list_datasets() == sorted(DATASETS)
    assert {"ants/mni", "ants/ch2", "ants/mnia", "brainreg/brain", "builtin/synthetic"} <= set(
        DATASETS
    )
    for name in STORED:
        entry = DATASETS[name]
        for key in ("path", "format", "origin", "licence", "sha256", "description"):
            assert entry.get(key), (name, key)
        assert {"shape", "voxel_size", "unit", "dtype", "orientation"} <= set(entry), name
        assert {"repository", "path", "url"} <= set(entry["origin"]), name
        assert entry["origin"]["url"].startswith("https://raw.githubusercontent.com/"), name
        assert len(entry["sha256"]) == 64, name
        if entry["format"] in ("nifti", "tiff-folder"):
            assert len(entry["shape"]) == len(entry["voxel_size"]) == 3, name
            assert entry["unit"] in ("millimeter", "micrometer"), name
        if entry["kind"] == "folder":
            assert "{name}" in entry["origin"]["url"]
            assert catalog.folder_digest(entry["files"]) == entry["sha256"]


def test_load_catalog_copies_and_rereads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = catalog.load_catalog()
    first["ants/mni"]["path"] = "changed"
    assert catalog.load_catalog()["ants/mni"]["path"] == "ants/mni.nii.gz"
    _use_catalog(tmp_path, monkeypatch, {"a": _file_entry(tmp_path / "a", "0" * 64)})
    assert catalog.list_datasets() == ["a"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"b": {"kind": "file"}}}))
    os.utime(path, ns=(1, 1))  # a different mtime invalidates the cache
    assert catalog.list_datasets() == ["b"]
    monkeypatch.setenv("NGFFREG_CATALOG", str(tmp_path / "missing.yaml"))
    with pytest.raises(CatalogError, match="NGFFREG_CATALOG"):
        catalog.load_catalog()


def test_dirs_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NGFFREG_DATA_DIR", "data")
    assert catalog.data_dir() == tmp_path / "data"
    monkeypatch.delenv("NGFFREG_DATA_DIR")
    assert catalog.data_dir() is None
    monkeypatch.delenv("NGFFREG_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert catalog.cache_dir() == tmp_path / ".cache" / "ngffreg"


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(CatalogError, match="Unknown dataset 'nope'") as info:
        catalog.fetch("nope")
    assert "ants/mni" in str(info.value) and "brainreg/brain" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_generated_entry_is_not_fetched() -> None:
    with pytest.raises(CatalogError, match=r"generate\('builtin/synthetic'\)"):
        catalog.fetch("builtin/synthetic")
    with pytest.raises(CatalogError, match="fetch"):
        catalog.generate("ants/mni")


# --- downloads (file:// URLs only) ----------------------------------------------------------


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("urlopen must not be called")


def test_missing_and_not_downloadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = dict(DATASETS["greedy/phantom01_rigid"])
    url = "file:///nonexistent/ngffreg-test/phantom01_rigid.mat"
    entry["origin"] = {**entry["origin"], "url": url}
    _use_catalog(tmp_path, monkeypatch, {"greedy/phantom01_rigid": entry})
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("NGFFREG_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(CatalogError) as info:
        catalog.fetch("greedy/phantom01_rigid")
    message = str(info.value)
    assert "set NGFFREG_DATA_DIR to a folder that holds 'greedy/phantom01_rigid.mat'" in message
    assert f"allow network access to {url}" in message
    assert not _files(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(CatalogError, match="download=False"):
        catalog.fetch("greedy/phantom01_rigid", download=False)
    with pytest.raises(CatalogError, match="NGFFREG_DATA_DIR"):
        catalog.verify("greedy/phantom01_rigid")


def test_bad_checksum_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"not the expected content")
    _use_catalog(tmp_path, monkeypatch, {"blob": _file_entry(source, "0" * 64)})
    monkeypatch.delenv("NGFFREG_DATA_DIR", raising=False)
    with pytest.raises(CatalogError, match=r"blob\.bin") as info:
        catalog.fetch("blob")
    assert "0" * 64 in str(info.value) and _sha256(source) in str(info.value)
    assert not _files(tmp_path)


def test_good_download_lands_in_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 << 20))  # several read chunks
    _use_catalog(tmp_path, monkeypatch, {"blob": _file_entry(source, _sha256(source))})
    monkeypatch.delenv("NGFFREG_DATA_DIR", raising=False)
    path = catalog.fetch("blob")
    assert path == tmp_path / "cache" / "x" / "blob.bin"
    assert path.read_bytes() == source.read_bytes()
    assert _files(tmp_path) == [path]  # no leftover partial file
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert catalog.fetch("blob") == path  # served from the cache
    assert catalog.verify("blob")


def test_folder_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"plane_{i}.tif").write_bytes(bytes([i]) * 100)
    files = {p.name: _sha256(p) for p in src.iterdir()}
    origin = {"repository": "none", "path": "src", "url": src.as_uri() + "/{name}"}
    entry = {
        "path": "f/planes",
        "kind": "folder",
        "format": "tiff-folder",
        "origin": origin,
        "sha256": catalog.folder_digest(files),
        "files": files,
    }
    bad = {**entry, "path": "f/bad", "files": {**files, "plane_1.tif": "1" * 64}}
    _use_catalog(tmp_path, monkeypatch, {"planes": entry, "bad": bad})
    monkeypatch.delenv("NGFFREG_DATA_DIR", raising=False)
    folder = catalog.fetch("planes")
    assert folder == tmp_path / "cache" / "f" / "planes"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    assert catalog.verify("planes")
    with pytest.raises(CatalogError, match=r"plane_1\.tif"):
        catalog.fetch("bad")
    assert not (tmp_path / "cache" / "f" / "bad" / "plane_1.tif").exists()
    with pytest.raises(CatalogError):  # an incomplete folder never counts as present
        catalog.fetch("bad", download=False)


def test_verify_redownloads_corrupt_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    _use_catalog(tmp_path, monkeypatch, {"blob": _file_entry(source, _sha256(source))})
    monkeypatch.delenv("NGFFREG_DATA_DIR", raising=False)
    path = catalog.fetch("blob")
    path.write_bytes(b"corrupted")
    assert catalog.fetch("blob") == path  # no hashing without verify
    assert catalog.fetch("blob", verify=True).read_bytes() == b"payload"


# --- generated datasets ---------------------------------------------------------------------


def test_generate_calls_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = {"shape": [2, 3], "fill_value": 7}
    entry = {"kind": "generated", "generator": "numpy:full", "parameters": params}
    broken = {"kind": "generated", "generator": "numpy:no_such_function"}
    _use_catalog(tmp_path, monkeypatch, {"gen": entry, "broken": broken})
    out = catalog.generate("gen")
    assert out.shape == (2, 3) and (out == 7).all()
    assert (catalog.generate("gen", fill_value=1, shape=(4,)) == np.ones(4)).all()
    with pytest.raises(CatalogError, match="no_such_function"):
        catalog.generate("broken")


def test_builtin_synthetic_matches_generator() -> None:
    synthetic = pytest.importorskip("ngffreg.synthetic")
    entry = DATASETS["builtin/synthetic"]
    assert entry["generator"] == "ngffreg.synthetic:synthetic_volume"
    signature = inspect.signature(synthetic.synthetic_volume)
    for key, value in entry["parameters"].items():
        default = signature.parameters[key].default
        assert (list(default) if isinstance(default, tuple) else default) == value, key
    image = catalog.generate("builtin/synthetic", shape=(8, 12, 10))
    assert image.shape == (8, 12, 10)
