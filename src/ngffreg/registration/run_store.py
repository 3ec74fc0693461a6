"""Where a registration keeps its work: the ``OUT.ome.zarr.partial`` folder of a run.

- :class:`RunStore` opens it for one run: locked (a second run on the same output is
  refused), stamped with the hash of the run's parameters (a rerun with the same parameters
  resumes from what is there; other parameters start afresh), or a temporary folder when
  the run writes no output;
- the coarse result is saved there (:meth:`RunStore.save_coarse`) and found again by a
  rerun (:meth:`RunStore.load_coarse`); blocks keep their records under ``blocks/``
  (:mod:`~ngffreg.registration.blockwise`);
- :meth:`RunStore.lend` moves work (the block records) into the staged store to be
  published with it, recorded first, so that a run that fails or is killed before the
  store is published gives them back (:meth:`RunStore.take_back`) and a rerun still finds
  them;
- :meth:`RunStore.publish` moves the finished store into place in one rename.

:func:`write_atomic` is the one write-then-rename of the package: a file is either its old
content or its new one, never half written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .coarse import CoarseResult

#: The work-folder file that lists what :meth:`RunStore.lend` moved into the staged store.
LENT = "lent.json"


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file renamed into place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def params_key(params: dict[str, Any]) -> str:
    """The hash that says whether a folder's work was done with these parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class RunStore:
    """The work folder of one run (see the module docstring); close it when done."""

    work: Path
    output: Path | None
    _lock: Any = None
    _tmp: Any = None

    @classmethod
    def open(cls, output: Path | None, params: dict[str, Any], overwrite: bool) -> RunStore:
        """The run's folder: ``OUTPUT.partial`` (locked; its content kept when ``params``
        match the stamp, else removed), or a temporary folder without ``output``."""
        if output is None:
            tmp = tempfile.TemporaryDirectory(prefix="ngffreg-register-")
            return cls(Path(tmp.name), None, _tmp=tmp)
        if output.exists() and not overwrite:
            raise OutputError(f"{output} exists; pass overwrite=True (--overwrite) to replace "
                              "it.")
        work = output.parent / (output.name + ".partial")
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create {work}: {exc}") from None
        store = cls(work, output, _lock=_lock(work, output))
        key = params_key(params)
        try:
            old = json.loads((work / "params.json").read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key") != key:
            for entry in work.iterdir():
                if entry.name != ".lock":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        write_atomic(work / "params.json",
                     json.dumps({"key": key, "params": params}, indent=1, default=str))
        store.take_back()  # the blocks a killed run had moved into its unpublished store
        return store

    @property
    def keepalive(self) -> Any:
        """What keeps a temporary folder (and the fields in it) alive."""
        return self._tmp

    def close(self) -> None:
        """Release the lock (a temporary folder lives on with :attr:`keepalive`)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def load_coarse(self) -> CoarseResult | None:
        """The coarse result an earlier (killed) run of the same parameters saved."""
        try:
            with open(self.work / "coarse" / "result.pkl", "rb") as fh:
                return pickle.load(fh)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            return None

    def save_coarse(self, coarse: CoarseResult) -> CoarseResult:
        """The coarse result with its fields written to ``work/coarse`` (read lazily, small
        to send to workers), saved for a rerun."""
        from .staging import persist_transform

        folder = self.work / "coarse"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        coarse = dataclasses.replace(
            coarse, transform=persist_transform(coarse.transform, folder, "forward"),
            inverse=(persist_transform(coarse.inverse, folder, "inverse")
                     if coarse.inverse is not None else None))
        write_atomic(folder / "result.pkl", pickle.dumps(coarse))
        return coarse

    @property
    def _staged(self) -> Path:
        return self.work / self.output.name

    def staged(self) -> Path:
        """Where the output store is written before it is published (what a killed run
        left there is removed)."""
        staged = self._staged
        if staged.exists():
            shutil.rmtree(staged)
        return staged

    def lend(self, moves: list[tuple[str, str]]) -> None:
        """Move each ``(work path, staged path)`` (relative) from the work folder into the
        staged store: renames, which need no space on a full disk. The list is written
        first to ``work/lent.json``, so that :meth:`take_back` can undo it after a failure
        or a kill."""
        staged = self._staged
        write_atomic(self.work / LENT, json.dumps(moves))
        for src, dst in moves:
            (staged / dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.work / src, staged / dst)

    def take_back(self) -> None:
        """Undo :meth:`lend` (what was moved and is still in the staged store goes back to
        the work folder), so that the work survives a store that is never published: after
        a write that failed, and when a killed run's folder is opened again."""
        try:
            moves = json.loads((self.work / LENT).read_text())
        except (OSError, ValueError):
            return
        staged = self._staged
        for src, dst in reversed(moves):
            if (staged / dst).exists() and not (self.work / src).exists():
                (self.work / src).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged / dst, self.work / src)
        (self.work / LENT).unlink()

    def publish(self, staged: Path) -> Path:
        """Move the finished store into place in one rename (an old one, with overwrite,
        is renamed aside first and removed after); the work folder is removed."""
        output = self.output
        old = None
        if output.exists():
            old = output.parent / f".{output.name}.old-{os.getpid()}"
            os.replace(output, old)
        try:
            os.replace(staged, output)
        except OSError as exc:
            if old is not None:
                os.replace(old, output)
            raise OutputError(f"Could not move the finished result into {output}: {exc}"
                              ) from exc
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return output

    def remove(self) -> None:
        """Remove the work folder (after the output is published)."""
        shutil.rmtree(self.work, ignore_errors=True)


def _lock(work: Path, output: Path) -> Any:
    """Hold ``work/.lock`` for this run (released when the process ends, however it
    ends); a second run on the same output is refused."""
    import fcntl

    fh = open(work / ".lock", "a+")  # held (locked) for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise OutputError(
            f"{output} is being written by another run ({holder or 'unknown process'}). "
            "Wait for it to finish, or stop it; its finished blocks will be reused by the "
            "next run with the same parameters.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
    fh.flush()
    return fh


__all__ = ["RunStore", "params_key", "write_atomic"]
