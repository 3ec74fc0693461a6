"""Block methods that misbehave on purpose, for testing fault handling on real workers.

They live in the package (not in ``tests/``) because dask worker processes must import
them by name. Each is a frozen dataclass, so it pickles to a worker like any block method.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registration.methods import BlockInfo, BlockResult
from .transforms import Identity


@dataclass(frozen=True)
class FaultyMethod:
    """An identity block method that, for chosen block ids, kills its own worker process
    once (``crash_once``; a marker file in ``marker_dir`` remembers it happened), sleeps
    ``sleep_seconds`` (``sleep``) or raises (``fail``)."""

    marker_dir: str
    crash_once: tuple[int, ...] = ()
    sleep: tuple[int, ...] = ()
    fail: tuple[int, ...] = ()
    sleep_seconds: float = 120.0
    #: It only sleeps (the GIL free), so it runs in the worker's own thread and
    #: ``crash_once`` kills the worker (see :mod:`ngffreg.registration.isolation`).
    releases_gil = True

    def __call__(self, fixed: Any, moving: Any, initial: Any, info: BlockInfo) -> BlockResult:
        marker = Path(self.marker_dir) / f"crashed-{info.id}"
        if info.id in self.crash_once and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if info.id in self.sleep:
            time.sleep(self.sleep_seconds)
        if info.id in self.fail:
            raise RuntimeError(f"block {info.id} fails on purpose")
        return BlockResult("ok", Identity())


@functools.cache
def _spinner() -> Any:
    """A numba function that waits ``seconds`` (monotonic clock) without releasing the GIL,
    as ANTs does for a whole registration."""
    import ctypes

    import numba
    import numpy as np

    clock_gettime = ctypes.CDLL(None).clock_gettime
    clock_gettime.argtypes = [ctypes.c_int, ctypes.c_void_p]
    clock_gettime.restype = ctypes.c_int

    @numba.njit  # not nogil: the GIL is held throughout
    def spin(seconds: float) -> int:
        ts = np.zeros(2, np.int64)
        clock_gettime(1, ts.ctypes.data)  # CLOCK_MONOTONIC
        end = ts[0] + 1e-9 * ts[1] + seconds
        n = 0
        while ts[0] + 1e-9 * ts[1] < end:
            clock_gettime(1, ts.ctypes.data)
            n += 1
        return n

    spin(0.0)  # compiled now, not while holding
    return spin


@dataclass(frozen=True)
class GilHolder:
    """An identity block method that holds the GIL for ``seconds`` (blocks ``hold``; all
    when empty) in a numba function without ``nogil``, then answers ``ok``. Blocks ``fail``
    raise, blocks ``crash`` kill their own process. Every call first writes the id of the
    process it runs in to ``<marker_dir>/<block id>.pid``. ``releases_gil=True`` lies (the
    method then runs in the worker's own thread and silences the worker)."""

    marker_dir: str
    seconds: float = 10.0
    hold: tuple[int, ...] = ()
    fail: tuple[int, ...] = ()
    crash: tuple[int, ...] = ()
    releases_gil: bool = False

    def __call__(self, fixed: Any, moving: Any, initial: Any, info: BlockInfo) -> BlockResult:
        spin = _spinner()
        marker = Path(self.marker_dir) / f"{info.id}.pid"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        if info.id in self.fail:
            raise ValueError(f"block {info.id} fails on purpose in process {os.getpid()}")
        if info.id in self.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        if not self.hold or info.id in self.hold:
            spin(self.seconds)
        return BlockResult("ok", Identity())


__all__ = ["FaultyMethod", "GilHolder"]
