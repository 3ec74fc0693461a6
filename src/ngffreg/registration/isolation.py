"""Block methods that hold the GIL run in a child process of the dask worker.

antspyx holds the GIL for a whole registration. A dask worker whose GIL is held cannot run
its event loop: it sends no heartbeats, the scheduler gives it up after
``distributed.scheduler.worker-ttl`` (5 minutes) and the block starts again, so a block
longer than that never finishes. Nor can the worker's threads that watch for the death of
the run's process, so a killed run left its workers computing.

So on a dask worker, :func:`call_method` sends the block to a child process (one per worker
thread, reused: a method's imports are paid once) and waits for the answer on a socket, a
wait that releases the GIL. The child

- is started with ``subprocess`` (exec, no bare fork of the multithreaded worker; and
  ``multiprocessing`` may not start children from a daemonic worker process), with the
  worker's environment (one thread per library on ngffreg's LocalClusters) and
  ``sys.path``;
- dies with the worker, even while it holds its own GIL: Linux sends it SIGKILL
  (``PR_SET_PDEATHSIG``) when the *thread* that started it exits, so children are started
  by one launcher thread that lives as long as the worker;
- counts against the worker's memory limit: the nanny, which restarts a worker past its
  limit, sees only the worker, so the child is killed here when the two together pass it.

A child that dies fails its block (a ``RuntimeError`` naming the signal or exit code) and
the next block gets a new one. A method that releases the GIL itself (it declares
``releases_gil = True``), or any method outside a dask worker, runs in the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

_idle: list[_Child] = []  # children waiting for a block
_lock = threading.Lock()
#: Starts the children. Its one thread lives until the worker exits (an executor's
#: threads never retire), so a child's parent-death signal comes only then.
_launcher = ThreadPoolExecutor(1, thread_name_prefix="ngffreg-isolation")


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the child (set as its ``__cause__``)."""


def call_method(method: Any, fixed: Any, moving: Any, initial: Any, info: Any) -> Any:
    """``method(fixed, moving, initial, info)``, in a child process when on a dask worker
    and the method does not declare ``releases_gil``; its exceptions are raised here."""
    worker = None if getattr(method, "releases_gil", False) else _worker()
    if worker is None:
        return method(fixed, moving, initial, info)
    with _lock:
        while _idle and _idle[-1].proc.poll() is not None:  # died while idle
            _idle.pop().conn.close()
        child = _idle.pop() if _idle else None
    child = child or _launcher.submit(_Child).result()
    try:
        return child.call((method, fixed, moving, initial, info), _memory_limit(worker))
    finally:
        if child.proc.returncode is None:  # alive: ready for the next block
            with _lock:
                _idle.append(child)


def call_in_child(fn: Any, *args: Any, env: dict[str, str] | None = None,
                  **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new child process with ``env`` added to its
    environment (e.g. one ITK thread, which makes ANTs give the same answer run after
    run, whatever this process has already set up), closed afterwards."""
    import functools

    child = _launcher.submit(_Child, env).result()
    try:
        return child.call((functools.partial(fn, **kwargs), *args), None)
    finally:
        child.conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=10)


def _worker() -> Any:
    if "distributed" not in sys.modules:  # never imported: not on a dask worker
        return None
    try:
        return sys.modules["distributed"].get_worker()
    except ValueError:
        return None


def _memory_limit(worker: Any) -> float | None:
    import dask

    limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
    fraction = dask.config.get("distributed.worker.memory.terminate", 0.95)
    return limit * fraction if limit and fraction else None


class _Child:
    """A child process and the connection to it."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        ours, theirs = socket.socketpair()
        code = (f"import sys; sys.path[:] = {sys.path!r}; "
                "from ngffreg.registration.isolation import _serve; "
                f"_serve({theirs.fileno()}, {os.getpid()})")
        with theirs:
            self.proc = subprocess.Popen([sys.executable, "-c", code],
                                         pass_fds=[theirs.fileno()],
                                         env=None if env is None else {**os.environ, **env})
        self.conn = Connection(ours.detach())

    def call(self, args: tuple[Any, ...], limit: float | None) -> Any:
        import cloudpickle  # as dask: a method defined in the client's __main__ too

        data = cloudpickle.dumps(args)  # may raise (does not pickle): the child stays usable
        over = ""
        try:
            self.conn.send_bytes(data)
            while not self.conn.poll(1.0):  # waits in poll(), the GIL released
                if limit and not over and _memory(self.proc.pid) > limit:
                    over = f" for using more than {limit / 2**30:.2f} GiB with its worker"
                    self.proc.kill()
            kind, value, tb = self.conn.recv()
        except (EOFError, OSError):
            self.conn.close()
            code = self.proc.wait()
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with code {code}")
            raise RuntimeError(f"the block method's process (pid {self.proc.pid}) {how}"
                               f"{over or '; out of memory?'}") from None
        if kind == "error":
            value.__cause__ = RemoteTraceback(tb)
            raise value
        return value


def _memory(pid: int) -> int:
    """Resident bytes of this process and process ``pid``."""
    import psutil

    try:
        return psutil.Process().memory_info().rss + psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def _serve(fd: int, parent: int) -> None:
    """The child: run the calls that come on ``fd`` until the worker closes it."""
    import traceback

    with contextlib.suppress(OSError, AttributeError):  # Linux only
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run, not for blocks
    import dask

    dask.config.set(scheduler="synchronous")  # as on the worker: no threads, no cluster
    conn = Connection(fd)
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:  # the worker closed the connection (or exited)
            return
        try:
            method, *args = pickle.loads(data)
            reply = ("ok", method(*args), None)
        except Exception as exc:
            reply = ("error", _portable(exc), traceback.format_exc())
        try:
            conn.send(reply)  # pickled whole before anything is written
        except Exception as exc:  # a result that does not pickle
            conn.send(("error", _portable(exc), traceback.format_exc()))


def _portable(exc: Exception) -> Exception:
    """``exc``, or its text in a RuntimeError when it would not load back in the worker."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
