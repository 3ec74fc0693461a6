"""The data catalog: find, download and check the real volumes named in data-catalog.yaml.

A dataset is looked for, in order, in ``$NGFFREG_DATA_DIR/<path>``, in the download cache
(``$NGFFREG_CACHE_DIR``, default ``~/.cache/ngffreg``) and finally downloaded from its
public origin with :mod:`urllib.request`, checked against its sha256 and renamed into
the cache atomically. ``$NGFFREG_CATALOG`` selects another catalog file.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import http.client
import importlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import CatalogError

__all__ = ["cache_dir", "data_dir", "fetch", "folder_digest", "generate", "list_datasets",
           "load_catalog", "verify"]  # fmt: skip

CATALOG_ENV = "NGFFREG_CATALOG"
DATA_DIR_ENV = "NGFFREG_DATA_DIR"
CACHE_DIR_ENV = "NGFFREG_CACHE_DIR"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0

# One stored file of a dataset: (name inside a folder, or None for a single file,
# expected sha256, download URL or None).
_Member = tuple[str | None, str, str | None]


def _catalog_path(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        env = os.environ.get(CATALOG_ENV, "").strip()
        path = env or Path(__file__).resolve().parents[2] / "data-catalog.yaml"
    return Path(path).expanduser().resolve()


@functools.lru_cache(maxsize=8)
def _read_catalog(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    datasets = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(datasets, dict):
        raise CatalogError(f"{path} has no 'datasets:' mapping; it is not an ngffreg data catalog.")
    return datasets


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Read a data catalog.

    Parameters
    ----------
    path
        The catalog file. Default: ``$NGFFREG_CATALOG`` if set, else ``data-catalog.yaml``
        at the repository root.

    Returns
    -------
    dict
        Dataset name -> entry, a fresh copy of the parse cached on (path, mtime).

    Raises
    ------
    CatalogError
        The file does not exist or is not a catalog.
    """
    resolved = _catalog_path(path)
    try:
        mtime_ns = resolved.stat().st_mtime_ns
    except FileNotFoundError:
        raise CatalogError(
            f"Data catalog {resolved} does not exist. Set {CATALOG_ENV} to the path of a "
            f"data-catalog.yaml (a non-editable install does not ship one), or unset it to "
            "use the one at the repository root."
        ) from None
    return copy.deepcopy(_read_catalog(resolved, mtime_ns))


def list_datasets() -> list[str]:
    """Return the sorted names of every dataset in the catalog."""
    return sorted(load_catalog())


def data_dir() -> Path | None:
    """Return the local data folder ``$NGFFREG_DATA_DIR`` (resolved), or None if unset."""
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    """Return the download cache: ``$NGFFREG_CACHE_DIR``, else ``$XDG_CACHE_HOME/ngffreg``,
    else ``~/.cache/ngffreg``. It is not created here."""
    value = os.environ.get(CACHE_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return (Path(base).expanduser() / "ngffreg").resolve()


def folder_digest(files: Mapping[str, str]) -> str:
    """Combined digest of a folder: sha256 of ``"<sha256>  <name>\\n"`` lines sorted by name,
    i.e. ``LC_ALL=C sha256sum * | sha256sum`` run inside the folder."""
    listing = "".join(f"{files[name]}  {name}\n" for name in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(name: str) -> dict[str, Any]:
    catalog = load_catalog()
    if name not in catalog:
        known = ", ".join(sorted(catalog))
        raise CatalogError(f"Unknown dataset {name!r}. Known datasets: {known}.")
    return catalog[name]


def _members(name: str, entry: Mapping[str, Any]) -> list[_Member]:
    kind = entry.get("kind")
    url = (entry.get("origin") or {}).get("url")
    if kind == "file":
        return [(None, entry["sha256"], url)]
    if kind == "folder":
        return [
            (fname, digest, url.format(name=urllib.parse.quote(fname)) if url else None)
            for fname, digest in sorted(entry["files"].items())
        ]
    if kind == "generated":
        raise CatalogError(
            f"{name!r} is generated, not stored: call ngffreg.catalog.generate({name!r}) "
            "instead of fetch()."
        )
    raise CatalogError(f"{name!r} has unknown kind {kind!r}; expected file, folder or generated.")


def _at(root: Path, member: _Member) -> Path:
    return root / member[0] if member[0] is not None else root


def _mismatches(root: Path, members: list[_Member]) -> list[tuple[Path, str, str]]:
    bad = []
    for member in members:
        path = _at(root, member)
        actual = _sha256(path) if path.is_file() else "missing"
        if actual != member[1]:
            bad.append((path, member[1], actual))
    return bad


def _prune_empty(directory: Path, stop: Path) -> None:
    while directory != stop and directory.is_relative_to(stop):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _download(url: str, target: Path, expected: str, cache: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise CatalogError(
                f"Checksum mismatch for {target.name} downloaded from {url}: expected sha256 "
                f"{expected}, got {actual}. The bad download was deleted; the file upstream "
                "may have changed, or the transfer was corrupted: retry, or check the catalog."
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _prune_empty(target.parent, cache)
        raise


def _unavailable(name: str, entry: Mapping[str, Any], cache: Path, reason: str) -> CatalogError:
    rel, local = entry["path"], data_dir()
    url = (entry.get("origin") or {}).get("url")
    where = f"{local} does not hold {rel}" if local else "is not set"
    return CatalogError(
        f"Dataset {name!r} is not available: {DATA_DIR_ENV} {where}, the download cache "
        f"{cache} does not hold it, and {reason}. To fix this, either set {DATA_DIR_ENV} to a "
        f"folder that holds '{rel}' (e.g. the project's shared/data folder), or allow network "
        f"access to {url} so that fetch() can download it into {cache} (set {CACHE_DIR_ENV} "
        "to cache elsewhere)."
    )


def fetch(name: str, *, download: bool = True, verify: bool = False) -> Path:
    """Return the local path of a stored dataset, downloading it into the cache if needed.

    Parameters
    ----------
    name
        A dataset name from :func:`list_datasets`, e.g. ``"ants/mni"``.
    download
        Whether to download the dataset when neither the data folder nor the cache holds it.
    verify
        Also check the sha256 of files found in ``$NGFFREG_DATA_DIR`` or in the cache
        (downloads are always checked). Bad cached files are deleted and downloaded again;
        files in the data folder are never deleted.

    Returns
    -------
    Path
        The file, or for a ``folder`` dataset the folder.

    Raises
    ------
    CatalogError
        Unknown name, ``generated`` entry, neither local nor downloadable, bad checksum.
    """
    entry = _entry(name)
    members = _members(name, entry)
    rel = entry["path"]
    local = data_dir()
    if local is not None and all(_at(local / rel, m).is_file() for m in members):
        if verify and (bad := _mismatches(local / rel, members)):
            path, expected, actual = bad[0]
            raise CatalogError(
                f"Checksum mismatch for {path} ({len(bad)} bad file(s) in {name!r}): expected "
                f"sha256 {expected}, got {actual}. Replace it with the original from "
                f"{(entry.get('origin') or {}).get('url')}, or unset {DATA_DIR_ENV}."
            )
        return local / rel
    cache = cache_dir()
    target = cache / rel
    if verify:
        for path, _, actual in _mismatches(target, members):
            if actual != "missing":
                path.unlink()
    missing = [m for m in members if not _at(target, m).is_file()]
    if missing and not download:
        raise _unavailable(name, entry, cache, "downloads are disabled (download=False)")
    for member in missing:
        url = member[2]
        if url is None:
            raise _unavailable(name, entry, cache, "the catalog entry has no origin URL")
        try:
            _download(url, _at(target, member), member[1], cache)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise _unavailable(name, entry, cache, f"downloading {url} failed ({exc})") from exc
    return target


def verify(name: str, path: str | os.PathLike[str] | None = None) -> bool:
    """Check a dataset's sha256 digests.

    Parameters
    ----------
    name
        A stored dataset's name.
    path
        The file or folder to check. Default: where :func:`fetch` finds it, without
        downloading.

    Returns
    -------
    bool
        True when every file exists and matches the catalog.

    Raises
    ------
    CatalogError
        As ``fetch(name, download=False)``, or a folder's ``sha256`` disagrees with ``files``.
    """
    entry = _entry(name)
    members = _members(name, entry)
    if entry["kind"] == "folder" and folder_digest(entry["files"]) != entry["sha256"]:
        raise CatalogError(f"Catalog entry {name!r}: sha256 does not match its 'files' mapping.")
    root = Path(path) if path is not None else fetch(name, download=False)
    return not _mismatches(root, members)


def generate(name: str, **overrides: Any) -> Any:
    """Make a ``generated`` dataset by calling its generator.

    Parameters
    ----------
    name
        A ``generated`` entry, e.g. ``"builtin/synthetic"``.
    **overrides
        Parameters replacing the catalog's (YAML lists are passed as tuples).

    Returns
    -------
    Any
        What the generator returns (for ``builtin/synthetic``, an ``xarray.DataArray``).

    Raises
    ------
    CatalogError
        Unknown name, a stored entry, or a generator that cannot be imported.
    """
    entry = _entry(name)
    if entry.get("kind") != "generated":
        raise CatalogError(
            f"{name!r} is a stored {entry.get('kind')} dataset, not a generated one: "
            f"call ngffreg.catalog.fetch({name!r}) to get its path."
        )
    spec = str(entry.get("generator", ""))
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CatalogError(
            f"Generator {spec!r} of {name!r} cannot be imported ({exc}); the catalog's "
            "'generator:' must be 'module:function'."
        ) from exc
    params = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in (entry.get("parameters") or {}).items()
    }
    params.update(overrides)
    return func(**params)
