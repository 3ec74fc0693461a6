"""The dask worker plugin of the LocalClusters ngffreg starts (imports distributed)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class ParentWatch(WorkerPlugin):
    """The worker (and its nanny) exit once the process that started the LocalCluster is
    gone, so a run killed with SIGKILL leaves no workers behind."""

    name = "ngffreg-parent-watch"

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval

    def setup(self, worker: Any) -> None:
        import psutil

        pid, interval = self.pid, self.interval

        def gone() -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        def watch() -> None:
            while True:
                time.sleep(interval)
                if gone():
                    with contextlib.suppress(Exception):
                        nanny = os.getppid()
                        if nanny not in (pid, 1):
                            os.kill(nanny, 9)
                    os._exit(1)

        threading.Thread(target=watch, name="ngffreg-parent-watch", daemon=True).start()
