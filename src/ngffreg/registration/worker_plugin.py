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
    gone, so a run killed with SIGKILL leaves no workers behind.

    The watch is a thread of the worker: it runs because block methods that hold the GIL
    run in a child process (:mod:`~ngffreg.registration.isolation`), which dies with the
    worker."""

    name = "ngffreg-parent-watch"

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval

    def setup(self, worker: Any) -> None:
        import psutil

        pid, interval = self.pid, self.interval
        # the nanny: a process of its own under `dask worker`, the watched one in a
        # LocalCluster. Named now: once the watched process is gone, the worker's parent
        # may be whatever adopted it (a subreaper), which must not be killed.
        nanny = psutil.Process(os.getppid())

        def gone() -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        def watch() -> None:
            while True:
                time.sleep(interval)
                if gone():
                    if nanny.pid not in (pid, 1):
                        with contextlib.suppress(Exception):
                            nanny.kill()  # psutil refuses a pid reused since
                    os._exit(1)

        threading.Thread(target=watch, name="ngffreg-parent-watch", daemon=True).start()
