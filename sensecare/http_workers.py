"""HTTP worker processes that share connections evenly.

Workers sharing one listening socket race for each new connection, and the one
that wakes first may take several: with four keep-alive clients and two workers
the split was often 3:1 or 4:0, and one core then idled. Measured on the STOW-RS
benchmark, a 2:2 split ingested about 1.4x faster than 4:0. So every worker
publishes how many connections it holds in shared memory, and a worker leaves a
waiting connection to a live peer that holds fewer (for at most ``MAX_DEFER_S``,
so a stuck peer delays nobody for long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from sensecare.errors import WorkerStartError

logger = logging.getLogger(__name__)

#: Longest a worker leaves a waiting connection to a less busy peer.
MAX_DEFER_S = 0.1
#: How often a deferring worker looks again.
RECHECK_S = 0.002


@dataclass
class ConnectionLoads:
    """Per-worker connection counts in shared memory: slot i holds (pid, connections)."""

    shared: Any  # multiprocessing Array of 2 * slots signed 64-bit ints

    @classmethod
    def create(cls, context: Any, slots: int) -> ConnectionLoads:
        return cls(context.Array("q", 2 * slots))

    @property
    def slots(self) -> int:
        return len(self.shared) // 2

    def claim(self, pid: int) -> int:
        """Take a free slot, or the slot of a worker that is gone."""
        with self.shared.get_lock():
            values = self.shared.get_obj()
            for slot in range(self.slots):
                owner = values[2 * slot]
                if owner == 0 or owner == pid or not _alive(owner):
                    values[2 * slot] = pid
                    values[2 * slot + 1] = 0
                    return slot
        raise WorkerStartError("more HTTP workers than connection slots")

    def release(self, slot: int) -> None:
        with self.shared.get_lock():
            values = self.shared.get_obj()
            values[2 * slot] = 0
            values[2 * slot + 1] = 0

    def holds(self, pid: int) -> bool:
        """Whether ``pid`` took a slot, i.e. started serving (a crashed worker keeps its slot)."""
        values = self.shared.get_obj()
        return any(values[2 * slot] == pid for slot in range(self.slots))

    def publish(self, slot: int, connections: int) -> None:
        self.shared.get_obj()[2 * slot + 1] = connections  # one aligned word: no lock needed

    def fewest_elsewhere(self, slot: int) -> int | None:
        """The smallest connection count of the other live workers (None when alone)."""
        values = self.shared.get_obj()
        counts = [
            values[2 * other + 1]
            for other in range(self.slots)
            if other != slot and values[2 * other] and _alive(values[2 * other])
        ]
        return min(counts) if counts else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BalancedServer(uvicorn.Server):
    """A uvicorn server that accepts connections itself, deferring to less busy peers."""

    def __init__(self, config: uvicorn.Config, loads: ConnectionLoads) -> None:
        super().__init__(config)
        self.loads = loads
        self._acceptor: _Acceptor | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # An empty list makes uvicorn set everything up but listen on nothing.
        await super().startup(sockets=[])
        if not self.started or not sockets:
            return
        config = self.config
        counted = _counted_protocol(config.http_protocol_class)

        def create_protocol() -> asyncio.Protocol:
            protocol = counted(config=config, server_state=self.server_state, app_state=self.lifespan.state)
            protocol._sensecare_on_close = self._publish  # type: ignore[attr-defined]
            return protocol

        self._acceptor = _Acceptor(sockets[0], create_protocol, self.loads, self.server_state.connections)
        self._acceptor.start()

    def _publish(self) -> None:
        if self._acceptor is not None:
            self._acceptor.publish()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
        await super().shutdown(sockets=sockets)


def _counted_protocol(base: type) -> type:
    """The HTTP protocol class, telling its server when a connection closes."""

    class Counted(base):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            on_close = getattr(self, "_sensecare_on_close", None)
            if on_close is not None:
                on_close()

    Counted.__name__ = f"Counted{base.__name__}"
    return Counted


class _Acceptor:
    """Accepts from the shared socket unless a live peer holds fewer connections."""

    def __init__(self, sock: socket.socket, protocol_factory: Any, loads: ConnectionLoads, connections: set) -> None:
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.loads = loads
        self.connections = connections
        self.slot = loads.claim(os.getpid())
        self.pending = 0  # accepted, transport not yet made
        self.deferred_since: float | None = None
        self.loop = asyncio.get_running_loop()
        self.reading = False
        self.stopped = False
        self.refresher: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.sock.setblocking(False)
        self._resume()
        self._refresh()

    def stop(self) -> None:
        self.stopped = True
        self._pause()
        if self.refresher is not None:
            self.refresher.cancel()
        self.loads.release(self.slot)

    def held(self) -> int:
        return len(self.connections) + self.pending

    def publish(self) -> None:
        if not self.stopped:
            self.loads.publish(self.slot, self.held())

    def _refresh(self) -> None:
        # Connections can also close without connection_lost reaching us (shutdown paths).
        self.publish()
        if not self.stopped:
            self.refresher = self.loop.call_later(0.25, self._refresh)

    def _resume(self) -> None:
        if not self.stopped and not self.reading:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False

    def _on_readable(self) -> None:
        held = self.held()
        self.loads.publish(self.slot, held)
        fewest = self.loads.fewest_elsewhere(self.slot)
        now = time.monotonic()
        if fewest is not None and fewest < held:
            if self.deferred_since is None:
                self.deferred_since = now
            if now - self.deferred_since < MAX_DEFER_S:
                self._pause()
                self.loop.call_later(RECHECK_S, self._resume)
                return
        self.deferred_since = None
        try:
            conn, _address = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return  # a peer took it
        except OSError as exc:  # EMFILE and the like: back off instead of spinning
            logger.warning("accept failed: %s", exc)
            self._pause()
            self.loop.call_later(0.1, self._resume)
            return
        conn.setblocking(False)
        self.pending += 1
        self.loads.publish(self.slot, self.held())
        self.loop.create_task(self._connect(conn))

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn)
        except Exception as exc:  # the client went away during set-up
            logger.debug("connection set-up failed: %s", exc)
            conn.close()
        finally:
            self.pending -= 1
            self.publish()


def run_workers(config: uvicorn.Config, workers: int) -> None:
    """Serve ``config`` from ``workers`` processes until SIGINT/SIGTERM; restart crashed ones."""
    context = multiprocessing.get_context("spawn")
    sock = config.bind_socket()
    sock.listen(config.backlog)  # uvicorn leaves listen() to create_server, which we do not use
    loads = ConnectionLoads.create(context, workers)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start() -> Any:
        process = context.Process(target=_worker_main, args=(config, sock, loads), name="sensecare-http")
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    try:
        while not stop.wait(0.5):
            for index, process in enumerate(processes):
                if process.is_alive():
                    continue
                # A worker that quits with an error status before it ever served will do so again
                # (bad settings, database unreachable); one killed by a signal is just restarted.
                if not loads.holds(process.pid) and (process.exitcode or 0) > 0:
                    raise WorkerStartError(
                        f"an HTTP worker exited with code {process.exitcode} before serving; see the log above"
                    )
                logger.error("HTTP worker %s exited with code %s; starting another", process.pid, process.exitcode)
                processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes requests in flight
        deadline = time.monotonic() + (config.timeout_graceful_shutdown or 10) + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        sock.close()
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def _worker_main(config: uvicorn.Config, sock: socket.socket, loads: ConnectionLoads) -> None:
    config.configure_logging()  # logging is not inherited by spawned processes
    BalancedServer(config, loads).run(sockets=[sock])
