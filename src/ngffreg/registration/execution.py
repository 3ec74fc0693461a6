"""Where block registrations run, and within what memory.

- **In this process** (``workers=1``, no time limit): one block after the other.
- **A LocalCluster** (``workers`` > 1, or a ``block_timeout``): that many worker processes
  with one thread each (ITK, BLAS and numba told to use one thread too), started for the
  block passes and closed before the warp so their memory is given back. The workers
  exit on their own when the process that started them dies (a killed run leaves no
  orphans behind).
- **Any dask cluster**: ``client=`` (a ``dask.distributed.Client``) or a scheduler
  address (``tcp://host:8786``); the workers must have ngffreg installed and see the same
  paths (inputs and ``OUT.ome.zarr.partial``). The dashboard address is printed.

:func:`plan_resources` turns one memory budget for the whole process tree into a worker
count, a block size and the coarse step's share.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..blocks import BLOCK_BASE_BYTES, auto_block_size, block_bytes
from ..errors import InputError, NgffregError
from ..sampling import CHUNK_CACHE_BYTES, REGION_BYTES
from ..units import parse_bytes

#: Environment of LocalCluster workers: one thread per library, the worker being the unit
#: of parallelism (and ANTs giving the same result run after run).
WORKER_ENV = {
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
#: Memory of the main process while the blocks run (Python with ANTs, ITK and dask loaded,
#: the plan, the coarse result held lazily), measured on the brain benchmark.
MAIN_BASE_BYTES = 700 * 2**20
#: The main process's share of a budget during the coarse step (the workers are not yet
#: started then; what ANTs held is mostly given back before they start).
COARSE_SHARE = 0.5
#: The largest block core the memory budget picks by itself (voxels per axis): bigger
#: blocks only cost more memory per worker for the same work.
MAX_AUTO_BLOCK = 128
#: The smallest block core a budget may choose before it asks for more memory.
MIN_AUTO_BLOCK = 32
#: Seconds to wait for a scheduler given by address.
CONNECT_TIMEOUT = 10
#: What one thread of the stages after the blocks (blend, warp, QC: threads of the main
#: process) holds at most: a region read in one piece (:data:`ngffreg.sampling.REGION_BYTES`)
#: and its output chunk's buffers.
STAGE_THREAD_BYTES = REGION_BYTES + 64 * 2**20


class ClusterError(NgffregError, RuntimeError):
    """The dask cluster could not be reached or could not run the block tasks."""


@dataclass(frozen=True)
class Resources:
    """What a memory budget allows: ``workers`` block processes of ``block_memory`` bytes
    each, blocks of ``chunk_size`` (voxels per axis), and ``coarse_memory`` bytes for the
    coarse step."""

    workers: int
    block_memory: int
    chunk_size: Any
    coarse_memory: int
    budget: int
    stage_threads: int = 1
    cache_bytes: int = CHUNK_CACHE_BYTES

    def describe(self) -> str:
        gib = 2**30
        return (f"memory budget {self.budget / gib:.1f} GiB: coarse step ≤ "
                f"{self.coarse_memory / gib:.1f} GiB, {self.workers} block worker(s) of "
                f"{self.block_memory / gib:.2f} GiB, blocks of {self.chunk_size} voxels; "
                f"blend, warp and QC on {self.stage_threads} thread(s) with a "
                f"{self.cache_bytes / 2**20:.0f} MiB chunk cache")


@contextlib.contextmanager
def stage_limits(resources: Resources | None) -> Iterator[None]:
    """Hold the stages after the blocks (threads of this process) to ``resources``: dask's
    thread count and the chunk cache's size; nothing changes without a budget."""
    if resources is None:
        yield
        return
    import dask

    from ..sampling import CHUNK_CACHE

    with dask.config.set(num_workers=resources.stage_threads), \
            CHUNK_CACHE.limited(resources.cache_bytes):
        yield


class StageMemory:
    """Peak resident memory of this process and its child processes (the workers of a
    LocalCluster started here; not those of a cluster elsewhere), per stage of a run,
    sampled every ``interval`` seconds by a daemon thread while :meth:`watching`.

    ``stage(name)`` starts a stage (a no-op when nothing watches), so that the stages can
    be marked where they begin without passing the watcher around; one run watches at a
    time (:data:`STAGE_MEMORY`)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._current: str | None = None
        self._out: dict[str, float] = {}
        self._stop: Any = None

    def stage(self, name: str) -> None:
        if self._stop is not None:
            self._current = name
            self._sample()

    def _sample(self) -> None:
        import psutil

        try:
            me = psutil.Process()
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        except psutil.Error:  # pragma: no cover - the process is ending
            return
        name, gib = self._current, round(total / 2**30, 3)
        if name is not None and gib > self._out.get(name, 0.0):
            self._out[name] = gib

    @contextlib.contextmanager
    def watching(self) -> Iterator[dict[str, float]]:
        """Watch until the block ends; yields the peaks so far (GiB per stage, kept up to
        date while it watches). A nested call watches nothing more and yields an empty
        dict."""
        import threading

        if self._stop is not None:
            yield {}
            return
        out: dict[str, float] = {}
        self._out, self._current = out, None
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.wait(self.interval):
                self._sample()

        thread = threading.Thread(target=run, name="ngffreg-stage-memory", daemon=True)
        thread.start()
        try:
            yield out
        finally:
            self._sample()
            self._stop.set()
            thread.join()
            self._stop = None


#: The watcher :func:`~ngffreg.registration.register.register` uses.
STAGE_MEMORY = StageMemory()


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity set (``taskset``, cgroup cpusets,
    a batch scheduler's allocation), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def plan_resources(memory_budget: Any, *, workers: int | None = None,
                   chunk_size: Any = None, overlap_fraction: float = 0.25,
                   cpus: int | None = None) -> Resources:
    """Split ``memory_budget`` (the whole process tree) between the main process and the
    block workers.

    The main process keeps :data:`MAIN_BASE_BYTES`; each worker needs
    :func:`ngffreg.blocks.block_bytes` for its block. With ``chunk_size`` ``None`` or
    ``"auto"`` the block is the largest (≤ :data:`MAX_AUTO_BLOCK`) that lets ``workers``
    (default: the CPUs this process may use, :func:`usable_cpus`) run at once, shrinking
    to :data:`MIN_AUTO_BLOCK` before running fewer workers; an explicit ``chunk_size``
    (voxels) fixes the block and the budget sets how many run at once. A budget too small
    for one block is refused with the smallest that would do.
    """
    budget = parse_bytes(memory_budget)
    cpus = max(1, int(cpus or usable_cpus()))
    wanted = max(1, int(workers)) if workers else cpus
    room = budget - MAIN_BASE_BYTES
    auto = chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto")
    if auto:  # the smallest block first: how many workers fit at all
        per = block_bytes(MIN_AUTO_BLOCK, overlap_fraction)
        what, advice = f"a worker with a {MIN_AUTO_BLOCK}³ block", ""
    else:
        sides = np.broadcast_to(np.asarray(chunk_size, dtype=np.int64), (3,))
        per = block_bytes(tuple(int(s) for s in sides), overlap_fraction)
        what = f"a worker with a block of {chunk_size} voxels"
        advice = ", or a smaller --chunk-size (or chunk_size='auto')"
    n = int(min(wanted, room // per)) if room > 0 else 0
    if n < 1:
        raise InputError(
            f"A memory budget of {memory_budget} is too small for one block: the main "
            f"process needs about {MAIN_BASE_BYTES / 2**20:.0f} MiB and {what} about "
            f"{per / 2**20:.0f} MiB. Give at least "
            f"{math.ceil((MAIN_BASE_BYTES + per) / 2**30 * 10) / 10:.1f} GiB{advice}.")
    size: Any = chunk_size
    if auto:  # then the largest block those workers can share the room with
        size = min(MAX_AUTO_BLOCK, auto_block_size(room // n, overlap_fraction))
        per = block_bytes(size, overlap_fraction)
    coarse = int(max(budget * COARSE_SHARE, budget - n * BLOCK_BASE_BYTES - MAIN_BASE_BYTES))
    # after the blocks their workers are gone: the room is the main process's threads'
    cache = int(min(CHUNK_CACHE_BYTES, room // 4))
    threads = int(max(1, min(cpus, (room - cache) // STAGE_THREAD_BYTES)))
    return Resources(workers=n, block_memory=int(per), chunk_size=size,
                     coarse_memory=min(coarse, budget), budget=budget, stage_threads=threads,
                     cache_bytes=cache)


def connect(address: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A client of the dask scheduler at ``address``, or a clear error."""
    from dask.distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"Could not reach a dask scheduler at {address} within {timeout:.0f} s ({exc}). "
            "Check the address (tcp://HOST:PORT, as printed by `dask scheduler`), that the "
            "scheduler is running and that this machine can reach it; or leave "
            "--scheduler-address out to run on a local cluster.") from None


class OnDemandCluster:
    """A LocalCluster started on first use, with no more workers than blocks to run:
    :meth:`for_blocks` gives the client for ``n`` blocks (``None``: run them here), and
    :meth:`close` stops what was started."""

    def __init__(self, workers: int, *, memory_limit: int | None = None,
                 need_cluster: bool = False, log: Any = None) -> None:
        self.workers = max(1, int(workers))
        self.memory_limit = memory_limit
        self.need_cluster = need_cluster
        self.log = log
        self._stack = contextlib.ExitStack()
        self._client: Any = None

    def for_blocks(self, n: int) -> Any:
        if self._client is not None:
            return self._client
        workers = min(self.workers, max(1, n))
        if workers <= 1 and not self.need_cluster:
            return None
        from dask.distributed import Client, LocalCluster

        from .worker_plugin import ParentWatch

        cluster = self._stack.enter_context(LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True,
            memory_limit=self.memory_limit or 0, dashboard_address=":0",
            env=dict(WORKER_ENV), host="127.0.0.1", silence_logs=40))
        self._client = self._stack.enter_context(Client(cluster, set_as_default=False))
        self._client.register_plugin(ParentWatch(os.getpid()))
        _announce(self._client, self.log)
        return self._client

    def close(self) -> None:
        self._client = None
        self._stack.close()


@contextlib.contextmanager
def block_client(workers: int, *, client: Any = None, address: str | None = None,
                 memory_limit: int | None = None, need_cluster: bool = False,
                 log: Any = None) -> Iterator[Any]:
    """What the blocks run on: ``client`` as given, a client connected to ``address``,
    or an :class:`OnDemandCluster` of at most ``workers`` single-threaded processes
    (started only when there are blocks to run: more than one, or ``need_cluster``).
    Connections and clusters opened here are closed on exit."""
    if client is not None:
        _announce(client, log)
        yield client
        return
    if address:
        c = connect(address)
        try:
            _announce(c, log)
            yield c
        finally:
            c.close()
        return
    cluster = OnDemandCluster(workers, memory_limit=memory_limit, need_cluster=need_cluster,
                              log=log)
    try:
        yield cluster
    finally:
        cluster.close()


def _announce(client: Any, log: Any) -> None:
    link = None
    with contextlib.suppress(Exception):
        link = client.dashboard_link
    n = len(client.scheduler_info().get("workers", {}))
    msg = f"dask: {n} worker(s) at {client.scheduler.address}"
    if link:
        msg += f"; dashboard {link}"
    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)


__all__ = [
    "STAGE_MEMORY",
    "ClusterError",
    "OnDemandCluster",
    "Resources",
    "StageMemory",
    "block_client",
    "connect",
    "plan_resources",
    "stage_limits",
    "usable_cpus",
]


def run_on_cluster(client: Any, task: Any, items: list[Any], args: tuple[Any, ...], *,
                   key: Any, timeout: float | None, progress: Any, flag: Any, started: Any,
                   forget: Any, needs: str) -> None:
    """Run ``task(item, *args)`` for every item on ``client``'s workers and report each
    result to ``progress``; nothing keeps running for this call when it stops early.

    A worker that dies mid-task has its task retried elsewhere (dask's
    ``allowed-failures``); an item whose worker died every time is given up:
    ``flag(item, message)`` makes its result. With ``timeout``, an item whose ``started``
    mark (``{"start", "worker", "worker_id"}``, written by the task) is older than
    ``timeout`` seconds on a worker still alive is cancelled, flagged, and its worker
    restarted (``forget(item)`` drops the mark of an item whose worker died: dask retries
    it). Any other task error is a :class:`ClusterError` saying the workers need ``needs``.
    """
    # the arguments every item shares travel once, as the result of one task the items
    # depend on (recomputed if the worker holding it dies), not once per item: sent with
    # each of 3,468 blocks, 115 kB of lazy images and transform held 0.6 GiB in this process
    shared = client.submit(_pack, *args, key=f"ngffreg-shared-{uuid.uuid4().hex[:8]}",
                           pure=False)
    by_key, pending = {}, []
    for item in items:
        fut = client.submit(_unpack, task, item, shared,
                            key=f"{key(item)}-{uuid.uuid4().hex[:6]}", pure=False, retries=0)
        by_key[fut.key] = item
        pending.append(fut)
    try:
        while pending:
            _collect_done(pending, by_key, progress, flag, needs)
            if timeout:
                _stop_overdue(client, pending, by_key, timeout, progress, flag, started,
                              forget)
    finally:  # stopped early (an error, Ctrl-C)
        for fut in pending:
            fut.cancel()
        shared.release()


def _pack(*args: Any) -> tuple[Any, ...]:
    return args


def _unpack(task: Any, item: Any, args: tuple[Any, ...]) -> Any:
    return task(item, *args)


def _collect_done(pending: list[Any], by_key: dict[str, Any], progress: Any, flag: Any,
                  needs: str) -> None:
    from distributed.scheduler import KilledWorker

    batch = [f for f in pending if f.done()]
    if not batch:
        time.sleep(0.25)
    for fut in batch:
        pending.remove(fut)
        try:
            result = fut.result()
        except KilledWorker as exc:
            result = flag(by_key[fut.key], "the worker process died every time it ran this "
                          f"block (out of memory? {exc})")
        except OSError:  # e.g. the disk is full: the caller says so
            raise
        except Exception as exc:
            raise ClusterError(
                f"A block task failed on the dask cluster ({type(exc).__name__}: {exc}). "
                f"The workers need {needs}.") from exc
        if progress:
            progress(result)


def _stop_overdue(client: Any, pending: list[Any], by_key: dict[str, Any], timeout: float,
                  progress: Any, flag: Any, started: Any, forget: Any) -> None:
    now = time.time()
    for fut in list(pending):
        item = by_key[fut.key]
        mark = started(item)
        if fut.done() or mark is None or now - mark["start"] <= timeout:
            continue
        if not _worker_alive(client, mark):  # its worker died: dask retries the task
            forget(item)
            continue
        pending.remove(fut)
        fut.cancel()
        result = flag(item, f"timed out: still running after {timeout:g} s "
                            "(block_timeout); its worker was restarted")
        if mark.get("worker"):
            with contextlib.suppress(Exception):
                client.restart_workers([mark["worker"]], timeout=60)
        if progress:
            progress(result)


def _worker_alive(client: Any, mark: dict[str, Any]) -> bool:
    """Whether the worker that started a task (its mark) is still there (a restarted worker
    has the same address but a new local directory)."""
    info = client.scheduler_info(n_workers=-1)["workers"].get(mark.get("worker"))
    return info is not None and info.get("local_directory") == mark.get("worker_id")
