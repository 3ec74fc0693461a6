"""Block methods that misbehave on purpose, for testing fault handling on real workers.

They live in the package (not in ``tests/``) because dask worker processes must import
them by name. Each is a frozen dataclass, so it pickles to a worker like any block method.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registration.methods import BlockInfo, BlockResult
from .transforms.model import Identity


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


__all__ = ["FaultyMethod"]
