"""HTTP worker processes: connections are shared evenly, crashed workers come back."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sensecare.http_workers import ConnectionLoads
from tests.helpers.server import ServerProcess


def test_loads_track_live_workers_only() -> None:
    loads = ConnectionLoads.create(multiprocessing.get_context("spawn"), 3)
    me = loads.claim(os.getpid())
    assert loads.fewest_elsewhere(me) is None  # alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = loads.claim(dead.pid)
    loads.publish(other, 0)
    loads.publish(me, 5)
    assert loads.holds(dead.pid)
    assert loads.fewest_elsewhere(me) is None  # a dead worker's count does not hold anyone back
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert loads.claim(sleeper.pid) == other  # the dead worker's slot is reused
        loads.publish(other, 2)
        assert loads.fewest_elsewhere(me) == 2
        loads.release(other)
        assert loads.fewest_elsewhere(me) is None
        assert not loads.holds(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def _established_per_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local ``port`` held by each process, from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # 01 = ESTABLISHED
                    inodes.add(fields[9])
    counts = {}
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


def _workers(server: ServerProcess) -> list[int]:
    """The server's HTTP worker processes (not multiprocessing's resource tracker)."""
    assert server.process is not None
    workers = []
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                workers.append(int(pid))
    return workers


@pytest.fixture
def two_worker_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    server = ServerProcess(data, f"sqlite:///{data / 'index.sqlite'}", extra_args=["--workers", "2"]).start()
    try:
        yield server
    finally:
        server.stop()


def _wait_until_both_workers_accept(server: ServerProcess, workers: list[int], timeout_s: float = 60.0) -> None:
    """Return once two keep-alive connections land one per worker.

    The server is ready when one worker answers; on a loaded machine the other may still be
    importing the app and has not joined the balancing yet, so until then its peer rightly takes
    every connection. The even split is a claim about both workers running.
    """
    deadline = time.monotonic() + timeout_s
    counts: dict[int, int] = {}
    while time.monotonic() < deadline:
        clients = [httpx.Client(headers=server.headers, timeout=30) for _ in range(2)]
        try:
            for client in clients:
                assert client.get(server.url + "/api/v1/audit", params={"limit": 1}).status_code == 200
            counts = _established_per_process(workers, server.port)
            if sorted(counts.values()) == [1, 1]:
                return
        finally:
            for client in clients:
                client.close()
        time.sleep(0.5)
    pytest.fail(f"the two workers never shared two connections: {counts}")


def test_keep_alive_connections_are_split_evenly(two_worker_server: ServerProcess) -> None:
    server = two_worker_server
    workers = _workers(server)
    assert len(workers) == 2
    _wait_until_both_workers_accept(server, workers)
    time.sleep(0.5)  # let the workers see the closes
    for attempt in range(3):
        clients = [httpx.Client(headers=server.headers, timeout=30) for _ in range(8)]
        barrier = threading.Barrier(len(clients))

        def connect(client: httpx.Client) -> None:
            barrier.wait()
            assert client.get(server.url + "/api/v1/audit", params={"limit": 1}).status_code == 200

        threads = [threading.Thread(target=connect, args=(c,)) for c in clients]
        try:
            [t.start() for t in threads]
            [t.join(30) for t in threads]
            counts = _established_per_process(workers, server.port)
            assert sum(counts.values()) == 8, counts
            assert max(counts.values()) - min(counts.values()) <= 1, f"attempt {attempt}: {counts}"
        finally:
            for client in clients:
                client.close()
        time.sleep(0.5)  # let the workers see the closes


def test_a_crashed_worker_is_replaced(two_worker_server: ServerProcess) -> None:
    server = two_worker_server
    victim = _workers(server)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 180  # generous: a loaded 2-core CI machine starts Python slowly
    while time.monotonic() < deadline:
        workers = _workers(server)
        if len(workers) == 2 and victim not in workers:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no replacement worker (workers now {_workers(server)}, server exit {server.process.poll()}); "
                    f"log:\n{server.log_text()}")
    for _ in range(300):  # the replacement serves once its app has started
        try:
            if httpx.get(server.url + "/healthz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    with httpx.Client(headers=server.headers, timeout=30) as client:
        for _ in range(6):  # whichever worker answers, it answers
            assert client.get(server.dicomweb + "/studies").status_code == 204
    assert server.process.poll() is None
