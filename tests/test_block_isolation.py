"""Block methods that hold the GIL (issue 14) on a real LocalCluster: they run in a child
process of the worker (:mod:`ngffreg.registration.isolation`), so the worker keeps sending
heartbeats, its blocks finish, and a killed run leaves no process behind.

The method is :class:`ngffreg.testing.GilHolder`: a numba loop without ``nogil``, as ANTs
holds the GIL for a whole registration. The scheduler here gives up a silent worker after
5 s (``worker-ttl`` 2 s; the scheduler never waits less than ten heartbeat intervals, 10 ×
0.5 s) and the first time a worker dies under a block the block is lost
(``allowed-failures`` 0), so a worker that is silenced even once fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pytest

pytestmark = pytest.mark.slow

CONFIG = {"distributed.scheduler.worker-ttl": "2s",
          "distributed.scheduler.allowed-failures": 0}
#: How long a block holds the GIL: longer than the 5 s the scheduler waits, plus its
#: 2 s check period.
HOLD = 9.0


@pytest.fixture(scope="module")
def cluster():
    """ngffreg's own LocalCluster (single-threaded workers, parent watch): 2 workers of
    2 GiB."""
    import distributed  # noqa: F401 - its config defaults first: leaving set() keeps them

    from ngffreg.registration.execution import OnDemandCluster

    cluster = OnDemandCluster(2, memory_limit=2 * 2**30, need_cluster=True,
                              log=lambda msg: None)
    with dask.config.set(CONFIG):  # read when the scheduler starts
        client = cluster.for_blocks(2)
    client.wait_for_workers(2, timeout=60)
    yield cluster
    cluster.close()


def _plan(blocks: int):
    """A random 16 × 16 × 16·``blocks`` image and its plan of ``blocks`` 16³ blocks."""
    from ngffreg.blocks import plan_blocks
    from ngffreg.image import Grid, make_image

    data = np.random.default_rng(0).random((16, 16, 16 * blocks), dtype=np.float32)
    image = make_image(data, spacing=(1, 1, 1))
    plan = plan_blocks(Grid.of(image), 16, 0.25)
    assert len(plan.blocks) == blocks
    return plan, image


def _run(cluster, method, work: Path, blocks: int) -> dict[int, dict]:
    from ngffreg.registration.blockwise import run_blocks
    from ngffreg.transforms import Identity

    plan, image = _plan(blocks)
    records = run_blocks(plan, image, image, Identity(), method, work, client=cluster)
    return {r["id"]: r for r in records}


def _workers(client) -> dict[str, int]:
    return client.run(os.getpid)


def _ttl_events(client) -> list[dict]:
    return [msg for _, msg in client.get_events("scheduler")
            if isinstance(msg, dict) and msg.get("action") == "worker-ttl-timed-out"]


def _pids(markers: Path) -> dict[int, int]:
    """Block id → the process its method ran in."""
    return {int(p.stem): int(p.read_text()) for p in markers.glob("*.pid")}


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children()]


def test_blocks_holding_the_gil_past_the_ttl_finish(cluster, tmp_path):
    import psutil

    from ngffreg.testing import GilHolder

    client = cluster.for_blocks(2)
    workers, events = _workers(client), len(_ttl_events(client))
    method = GilHolder(str(tmp_path / "markers"), seconds=HOLD)
    records = _run(cluster, method, tmp_path / "work", blocks=2)
    assert [r["status"] for r in records.values()] == ["ok", "ok"], records
    assert all(r["method_seconds"] >= HOLD for r in records.values())
    # the workers were never given up: same processes, no time-out event
    assert _workers(client) == workers
    assert len(_ttl_events(client)) == events
    # each block ran in a child process of the worker that ran its task
    pids = set(workers.values())
    for bid, child in _pids(tmp_path / "markers").items():
        assert child not in pids
        assert psutil.Process(child).ppid() == workers[records[bid]["worker"]]


def test_an_exception_in_the_child_fails_its_block(cluster, tmp_path):
    from ngffreg.testing import GilHolder

    client = cluster.for_blocks(4)
    workers = _workers(client)
    method = GilHolder(str(tmp_path / "markers"), seconds=0.1, fail=(1,))
    records = _run(cluster, method, tmp_path / "work", blocks=4)
    assert {i: r["status"] for i, r in records.items()} == {0: "ok", 1: "failed", 2: "ok",
                                                            3: "ok"}
    child = _pids(tmp_path / "markers")[1]
    assert records[1]["message"] == (f"ValueError: block 1 fails on purpose in process "
                                     f"{child}")
    assert "testing.py" in records[1]["traceback"]  # the child's traceback comes along
    # one child per worker serves every block (the failure does not end it)
    children = {w: set(_children(pid)) for w, pid in workers.items()}
    for bid, pid in _pids(tmp_path / "markers").items():
        assert children[records[bid]["worker"]] == {pid}


def test_a_child_that_dies_fails_its_block_and_is_replaced(cluster, tmp_path):
    from ngffreg.registration.isolation import call_method
    from ngffreg.registration.methods import BlockInfo
    from ngffreg.testing import GilHolder

    client = cluster.for_blocks(2)
    workers = _workers(client)
    markers = tmp_path / "markers"
    method = GilHolder(str(markers), seconds=0.1, crash=(0,))
    records = _run(cluster, method, tmp_path / "work", blocks=2)
    dead = _pids(markers)[0]
    assert records[0]["status"] == "failed"
    assert records[0]["message"] == (f"RuntimeError: the block method's process (pid {dead}) "
                                     "was killed by SIGKILL; out of memory?")
    assert records[1]["status"] == "ok"
    assert _workers(client) == workers  # the worker lived on
    # the next block on that worker gets a new child
    where = records[0]["worker"]
    info = BlockInfo(5, (0, 0, 5), ((0, 16),) * 3, ((0, 16),) * 3, 0, "micrometer")
    result = client.submit(call_method, method, None, None, None, info, workers=[where],
                           pure=False).result()
    assert result.status == "ok"
    assert _pids(markers)[5] not in (dead, workers[where])
    assert _children(workers[where]) == [_pids(markers)[5]]


def _set_terminate(fraction):
    dask.config.set({"distributed.worker.memory.terminate": fraction})


def test_a_child_past_the_worker_memory_limit_fails_its_block(cluster, tmp_path):
    """The nanny sees only the worker: the worker itself kills a child that takes the two
    past the memory limit (here 1 % of 2 GiB, less than any Python process)."""
    from ngffreg.testing import GilHolder

    client = cluster.for_blocks(1)
    workers = _workers(client)
    before = client.run(dask.config.get, "distributed.worker.memory.terminate")
    client.run(_set_terminate, 0.01)
    try:
        records = _run(cluster, GilHolder(str(tmp_path / "markers"), seconds=5),
                       tmp_path / "work", blocks=1)
    finally:
        client.run(_set_terminate, next(iter(before.values())))
    child = _pids(tmp_path / "markers")[0]
    assert records[0]["status"] == "failed"
    assert records[0]["message"] == (f"RuntimeError: the block method's process (pid {child}) "
                                     "was killed by SIGKILL for using more than 0.02 GiB with "
                                     "its worker")
    assert _workers(client) == workers


def test_a_killed_run_leaves_no_process_behind(tmp_path):
    """SIGKILL the run while both workers' children hold the GIL: the workers (parent
    watch) and their children (parent-death signal) all exit."""
    import psutil

    markers, work = tmp_path / "markers", tmp_path / "work"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        from ngffreg.blocks import plan_blocks
        from ngffreg.image import Grid, make_image
        from ngffreg.registration.blockwise import run_blocks
        from ngffreg.registration.execution import OnDemandCluster
        from ngffreg.testing import GilHolder
        from ngffreg.transforms import Identity

        if __name__ == "__main__":  # not in the spawned workers
            image = make_image(np.ones((16, 16, 32), dtype=np.float32), spacing=(1, 1, 1))
            plan = plan_blocks(Grid.of(image), 16, 0.25)
            method = GilHolder({str(markers)!r}, seconds=300)
            run_blocks(plan, image, image, Identity(), method, {str(work)!r},
                       client=OnDemandCluster(2, log=print))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    tree: set[int] = set()
    deadline = time.monotonic() + 120
    while len(_pids(markers)) < 2:  # both blocks are holding the GIL in their children
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the blocks never started"
        tree |= {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
        time.sleep(0.1)
    tree |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    assert set(_pids(markers).values()) <= tree
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def alive() -> list[int]:
        out = []
        for pid in tree:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.monotonic() + 20
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), f"left behind by the killed run: {alive()}"


def test_a_worker_whose_gil_is_held_is_given_up(cluster, tmp_path):
    """The control: the same method run in the worker's own thread silences the worker,
    which the scheduler gives up (and the block with it). Last here: it restarts a
    worker."""
    from ngffreg.testing import GilHolder

    client = cluster.for_blocks(1)
    events = len(_ttl_events(client))
    method = GilHolder(str(tmp_path / "markers"), seconds=HOLD, releases_gil=True)
    records = _run(cluster, method, tmp_path / "work", blocks=1)
    assert len(_ttl_events(client)) > events
    assert records[0]["status"] == "failed"
    assert "the worker process died every time" in records[0]["message"]
