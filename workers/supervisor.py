"""The supervisor: the process ``scpfleet serve`` runs as; starts, watches and stops the rest.

Theory of operation: before any child exists the supervisor takes the storage root's
lock and brings the root and its index back in line (:mod:`workers.startup`: temporary
files of a crash removed, journals replayed and retired, unjournalled files indexed, a
corrupt index set aside and rebuilt). Only then does it bind the listening socket and
start M indexers, N workers and one listener, each a fresh interpreter
(:mod:`workers._spawn`) given its descriptors with ``pass_fds``; ``/metrics`` is served
from here (:mod:`workers.metrics`).

It then waits: on each child's pidfd (exit) and control socket (readiness and
counters). A child that exits while the node runs is started again after a short
back-off. A new worker gets a fresh listener channel whose other end is sent to the
running listener (``SCM_RIGHTS``); a new listener gets fresh channels to every running
worker. Workers and indexers share no channel (an indexer follows its workers'
journal segments), so neither needs anything when the other restarts. A dead worker's
admission slot is zeroed before its successor starts.

With an index shared by the nodes of a cluster (a ``postgresql://`` URL) the database
is not on the path of a C-STORE: at start the replay is tried a few times
(:data:`_INDEX_START_TRIES`) and, when the database cannot be reached, the node starts
anyway -- its indexers follow the journals from the progress the database holds once
it is back, and the files a crash left unjournalled are reconciled at the next stop or
start that reaches it.

SIGTERM or SIGINT stops the node. ``/health`` says ``draining`` at once. With
``drain-delay``, the workers first refuse new associations (A-ASSOCIATE-RJ, transient)
while the open ones go on as usual and the listener still accepts, for at least that
long (a load balancer's health checks take the node out meanwhile) and until no
association is open, within ``drain-timeout``. Then the listener stops (no new
connections), then the workers (stores in flight finish within ``drain-timeout``), then
the indexers; last, with every child gone, the supervisor replays the journals once
more so the index holds everything that was acknowledged, and exits 0. A second signal
kills the children at once (the final replay still runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import msgspec

from storage import (
    ACCELERATED,
    CatalogUnavailable,
    FileCheck,
    journal_dir,
    redact_url,
    replay,
    retire,
)

from .config import NodeConfig
from .ipc import (
    Attach,
    Drain,
    IndexerStats,
    ListenerStats,
    Ready,
    SharedSlots,
    Spec,
    Stop,
    WorkerStats,
    recv_control,
    send_control,
)
from .metrics import NodeMetrics, start_metrics_server
from .recovery import PUBLISH_MARGIN_S, reconcile, sweep_orphan_temp
from .startup import RootStartup, StartupError

__all__ = ["Supervisor", "StartupError"]

log = logging.getLogger("scpfleet.supervisor")

# Connections the kernel queues while no listener accepts (a burst of modalities during
# a restart): well above what a node's listener falls behind by.
_BACKLOG = 1024
# Children report Ready in well under a second; this only catches a broken install.
_READY_TIMEOUT_S = 60.0
# Restart back-off: a child that lived this long is restarted at once, one that keeps
# dying is restarted at most every _BACKOFF_MAX_S.
_STABLE_S = 10.0
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0
# A control message to a child that does not read for this long is dropped.
_SEND_WAIT_S = 2.0
# A dead worker's temporary files are looked for this long after its death (a live
# worker renames a file it closed within microseconds; see recovery.sweep_orphan_temp).
_TEMP_SWEEP_DELAY_S = 1.0
# How long the clean-up after a dead worker waits for its indexer to finish its segment.
_CRASH_CLEANUP_WAIT_S = 30.0
# After Stop: the listener closes at once; indexers read what the stopped workers left.
_LISTENER_STOP_S = 5.0
_INDEXER_STOP_S = 30.0
# Workers get drain-timeout for their associations plus this for the publisher's flush.
_WORKER_STOP_MARGIN_S = 10.0
# A SIGKILLed process is gone in milliseconds; this only bounds a stuck kernel.
_KILLED_EXIT_S = 5.0
# While draining before the stop, how often open associations are counted.
_DRAIN_POLL_S = 0.2


class _Child:
    __slots__ = ("role", "slot", "popen", "pidfd", "ctl", "ready", "started", "segment", "exited")

    def __init__(self, role: str, slot: int, popen: subprocess.Popen, ctl: socket.socket) -> None:
        self.role = role
        self.slot = slot
        self.popen = popen
        self.ctl = ctl
        self.pidfd = -1
        self.ready = False
        self.started = time.monotonic()
        self.segment = ""
        self.exited: asyncio.Future[int] | None = None

    @property
    def alive(self) -> bool:
        return self.exited is not None and not self.exited.done()

    @property
    def name(self) -> str:
        return self.role if self.role == "listener" else f"{self.role} {self.slot}"


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


class Supervisor:
    def __init__(self, config: NodeConfig, ready_file: str | None = None) -> None:
        root = os.path.abspath(config.storage)
        index = config.index_path if config.index_shared else os.path.abspath(config.index_path)
        self.config = msgspec.structs.replace(
            config, storage=root, index=index, workers=config.worker_count, node_id=config.node
        )
        self.root = root
        #: Replay and recovery decide records against the files (storage/_integrity.py).
        self.files = FileCheck(root, self.config.duplicates)
        #: The storage root's lock and its recovery before any child starts.
        self.startup = RootStartup(self.config, self.files)
        self.ready_file = os.path.abspath(ready_file) if ready_file else None
        self.nworkers = self.config.worker_count
        self.nindexers = self.config.indexers
        self.workers: dict[int, _Child] = {}
        self.indexers: dict[int, _Child] = {}
        self.listener: _Child | None = None
        self.stopping = False
        self.draining = False
        self.forced = False
        self.metrics = NodeMetrics(root, self.config.index_path, self.nindexers, self.config.node)
        self.metrics_server: Any = None
        self.metrics_port: int | None = None
        self.lock_fd = -1
        self.lsock: socket.socket | None = None
        self.slots: SharedSlots | None = None
        self.address: tuple[str, int] = ("", 0)
        self._backoff: dict[tuple[str, int], float] = {}
        self._unclean_since: float | None = None
        self._env = dict(os.environ)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)

    # -- before the children --------------------------------------------------------------

    def prepare(self) -> None:
        """Lock the root, recover it, bind the port; raises StartupError."""
        cfg = self.config
        self.lock_fd = self.startup.lock()
        self._unclean_since = self.startup.recover()
        self.lsock = self._bind(cfg.host, cfg.port)
        self.address = self.lsock.getsockname()[:2]
        self.slots = SharedSlots.create(self.nworkers)
        if cfg.metrics_port is not None:
            try:
                self.metrics_server, self.metrics_port = start_metrics_server(
                    self.metrics, cfg.metrics_host, cfg.metrics_port
                )
            except ImportError:
                raise StartupError("metrics-port needs prometheus-client (pip install 'scpfleet[metrics]')") from None
            except OSError as exc:
                raise StartupError(f"metrics {cfg.metrics_host}:{cfg.metrics_port}: {exc.strerror or exc}") from None

    def _bind(self, host: str, port: int) -> socket.socket:
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise StartupError(f"host {host}: {exc.strerror}") from None
        family, _type, _proto, _name, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(_BACKLOG)
        except OSError as exc:
            sock.close()
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sock.set_inheritable(False)
        return sock

    # -- children -------------------------------------------------------------------------

    def _spawn(self, role: str, slot: int, fds: dict[str, int], streams: list[tuple[int, int]]) -> _Child:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        passed = [child.fileno(), self.lock_fd, *fds.values(), *(fd for _, fd in streams)]
        argv = [sys.executable, "-m", "workers._spawn", role, str(slot), str(child.fileno())]
        try:
            popen = subprocess.Popen(argv, pass_fds=passed, stdin=subprocess.DEVNULL, env=self._env)
        finally:
            child.close()
        spec = Spec(role=role, index=slot, config=self.config, lock_fd=self.lock_fd, streams=streams,
                    workers=self.nworkers, **fds)
        send_control(parent, spec)
        parent.setblocking(False)
        rec = _Child(role, slot, popen, parent)
        loop = asyncio.get_running_loop()
        rec.exited = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_control, rec)
        try:
            rec.pidfd = os.pidfd_open(popen.pid)
            loop.add_reader(rec.pidfd, self._on_exit, rec)
        except (AttributeError, OSError):  # pragma: no cover - kernels before 5.3
            loop.create_task(self._poll_exit(rec))
        return rec

    async def _poll_exit(self, rec: _Child) -> None:  # pragma: no cover - see _spawn
        while rec.popen.poll() is None:
            await asyncio.sleep(0.2)
        self._on_exit(rec)

    def _give(self, rec: _Child | None, message: Attach, sock: socket.socket) -> None:
        """Hand ``sock`` to a running child (then close our copy), or just close it."""
        try:
            if rec is not None and rec.alive:
                self._send(rec, message, sock.fileno())
        finally:
            sock.close()

    def _send(self, rec: _Child, message: Any, fd: int | None = None) -> None:
        for _ in range(2):
            try:
                send_control(rec.ctl, message, fd)
                return
            except BlockingIOError:
                select.select([], [rec.ctl], [], _SEND_WAIT_S)
            except OSError as exc:
                log.debug("cannot reach %s: %s", rec.name, exc)
                return
        log.warning("%s does not read its control socket; message dropped", rec.name)

    def _start_worker(self, k: int) -> None:
        assert self.slots is not None  # prepare() ran
        fds = {"shm_fd": self.slots.fd}
        channel = worker_end = None
        if self.listener is not None and self.listener.alive:
            channel, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            fds["channel_fd"] = worker_end.fileno()
        try:
            self.workers[k] = self._spawn("worker", k, fds, [])
        finally:
            if worker_end is not None:
                worker_end.close()
        if channel is not None:
            self._give(self.listener, Attach(k), channel)

    def _start_listener(self) -> None:
        assert self.slots is not None and self.lsock is not None  # prepare() ran
        pairs = []
        for k, worker in sorted(self.workers.items()):
            if worker.alive:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                pairs.append((k, ours, theirs))
        try:
            self.listener = self._spawn(
                "listener", 0, {"shm_fd": self.slots.fd, "listen_fd": self.lsock.fileno()},
                [(k, ours.fileno()) for k, ours, _ in pairs],
            )
        finally:
            for _, ours, _theirs in pairs:
                ours.close()
        for k, _ours, theirs in pairs:
            self._give(self.workers[k], Attach(k), theirs)

    def _start_indexer(self, j: int) -> None:
        self.indexers[j] = self._spawn("indexer", j, {}, [])

    def _start(self, role: str, slot: int) -> None:
        if self.stopping:
            return
        try:
            if role == "worker":
                self._start_worker(slot)
            elif role == "indexer":
                self._start_indexer(slot)
            else:
                self._start_listener()
        except OSError as exc:
            log.error("cannot start %s %d: %s; retrying", role, slot, exc)
            asyncio.get_running_loop().call_later(_BACKOFF_MAX_S, self._start, role, slot)

    # -- events ---------------------------------------------------------------------------

    def _on_control(self, rec: _Child) -> None:
        while True:
            try:
                got = recv_control(rec.ctl)
            except BlockingIOError:
                return
            except (OSError, ValueError) as exc:
                log.debug("%s control: %s", rec.name, exc)
                got = None
            if got is None:
                asyncio.get_running_loop().remove_reader(rec.ctl.fileno())
                return
            message, fd = got
            if fd is not None:
                os.close(fd)
            if isinstance(message, (WorkerStats, IndexerStats, ListenerStats)):
                self.metrics.update(rec.role, rec.slot, message)
                if isinstance(message, WorkerStats) and message.segment:
                    rec.segment = message.segment
            elif isinstance(message, Ready):
                rec.ready = True
                rec.segment = message.segment
                self._on_ready(rec)

    def _update_health(self) -> None:
        """The process counts /health judges by (metrics.NodeMetrics.health)."""
        self.metrics.running_workers = sum(1 for w in self.workers.values() if w.alive and w.ready)
        self.metrics.listening = self.listener is not None and self.listener.alive and self.listener.ready

    def _on_ready(self, rec: _Child) -> None:
        self._update_health()
        if rec.role == "worker" and self.draining:
            self._send(rec, Drain())
        if self._all_ready.is_set():
            log.info("%s restarted (pid %d)", rec.name, rec.popen.pid)
            self._write_ready_file()
        elif all(c.ready for c in self._children()) and len(self.workers) == self.nworkers and (
            len(self.indexers) == self.nindexers and self.listener is not None
        ):
            self._all_ready.set()

    def _children(self) -> list[_Child]:
        children = [*self.indexers.values(), *self.workers.values()]
        if self.listener is not None:
            children.append(self.listener)
        return children

    def _on_exit(self, rec: _Child) -> None:
        loop = asyncio.get_running_loop()
        if rec.pidfd >= 0:
            loop.remove_reader(rec.pidfd)
            os.close(rec.pidfd)
            rec.pidfd = -1
        rc = rec.popen.wait()
        self._on_control(rec)  # its last counters, if they arrived
        loop.remove_reader(rec.ctl.fileno())
        rec.ctl.close()
        self.metrics.retire(rec.role, rec.slot)
        if rec.role == "worker" and self.slots is not None:
            self.slots.reset(rec.slot)
            if rc != 0:
                # Its last renames may have missed the journal (see workers.recovery).
                died = time.time()
                since = died - PUBLISH_MARGIN_S
                self._unclean_since = min(self._unclean_since or since, since)
                if not self.stopping:
                    loop.create_task(self._after_worker_crash(rec.segment, died))
        if rec.exited is not None and not rec.exited.done():
            rec.exited.set_result(rc)
        self._update_health()
        if self.stopping:
            level = logging.INFO if rc == 0 or self.forced else logging.WARNING
            log.log(level, "%s (pid %d) %s", rec.name, rec.popen.pid, _describe_exit(rc))
            return
        key = (rec.role, rec.slot)
        lived = time.monotonic() - rec.started
        delay = _BACKOFF_MIN_S if lived >= _STABLE_S else min(self._backoff.get(key, 0.0) * 2 or _BACKOFF_MIN_S,
                                                              _BACKOFF_MAX_S)
        self._backoff[key] = delay
        log.warning("%s (pid %d) %s after %.1f s; restarting in %.1f s",
                    rec.name, rec.popen.pid, _describe_exit(rc), lived, delay)
        self.metrics.restarted(rec.role)
        if self._all_ready.is_set():
            self._write_ready_file()
        loop.call_later(delay, self._start, rec.role, rec.slot)

    def _on_signal(self, signum: int) -> None:
        if not self._stop.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
            if self.config.drain_delay > 0 and self._all_ready.is_set():
                # The workers refuse new associations before /health says so.
                self.draining = True
                for worker in self.workers.values():
                    if worker.alive:
                        self._send(worker, Drain())
            self.metrics.state = "draining"
            self._stop.set()
        elif not self.forced:
            log.warning("%s received again: killing the children now", signal.Signals(signum).name)
            self.forced = True
            for child in self._children():
                if child.alive:
                    child.popen.kill()

    # -- ready file and summary -------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What the ready file holds: where the node listens and which pids serve it."""
        return {
            "pid": os.getpid(),
            "host": self.address[0],
            "port": self.address[1],
            "aet": self.config.aet,
            "metrics_port": self.metrics_port,
            "storage": self.root,
            "index": redact_url(self.config.index_path),
            "node": self.config.node,
            "workers": {str(k): c.popen.pid for k, c in sorted(self.workers.items()) if c.alive},
            "indexers": {str(j): c.popen.pid for j, c in sorted(self.indexers.items()) if c.alive},
            "listener": self.listener.popen.pid if self.listener is not None and self.listener.alive else None,
        }

    def _write_ready_file(self) -> None:
        if self.ready_file is None:
            return
        temp = self.ready_file + ".tmp"
        with open(temp, "w") as fp:
            json.dump(self.state(), fp)
        os.replace(temp, self.ready_file)

    async def _after_worker_crash(self, segment: str, died: float) -> None:
        """Once its indexer has finished the dead worker's segment (everything it
        journalled is indexed), index what it renamed but did not journal, and remove
        its temporary files."""
        log_path = os.path.join(journal_dir(self.root), segment + ".log")
        deadline = time.monotonic() + _CRASH_CLEANUP_WAIT_S
        await asyncio.sleep(_TEMP_SWEEP_DELAY_S)
        while segment and os.path.exists(log_path) and time.monotonic() < deadline and not self.stopping:
            await asyncio.sleep(0.1)
        if self.stopping:
            return  # the final flush reconciles
        live = [w.popen.pid for w in self.workers.values() if w.alive]
        await asyncio.get_running_loop().run_in_executor(None, self._crash_cleanup, live, died)

    def _crash_cleanup(self, live: list[int], died: float) -> None:
        try:
            removed = sweep_orphan_temp(self.root, live, died)
            with self.startup.open_index() as index:
                count = reconcile(self.root, index, died - PUBLISH_MARGIN_S, died, files=self.files,
                                  digest_algorithm=self.config.digest)
        except Exception as exc:  # the next start reconciles again
            log.warning("cleaning up after the dead worker failed: %s", exc)
            return
        if removed or count:
            log.info("after the dead worker: %d temporary file(s) removed, %d file(s) published but not "
                     "journalled indexed", removed, count)

    async def _summaries(self) -> None:
        interval = self.config.summary_interval
        self.metrics.summary()  # the baseline for the first rates
        while True:
            await asyncio.sleep(interval)
            log.info("%s", await asyncio.get_running_loop().run_in_executor(None, self.metrics.summary))

    # -- life -----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; the exit status (0 after a clean stop)."""
        self.prepare()
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._main())
        finally:
            loop.close()
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
                self.metrics_server.server_close()
            self.metrics.close()
            if self.ready_file is not None:
                try:
                    os.unlink(self.ready_file)
                except FileNotFoundError:
                    pass

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._all_ready = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP ignored: restart to reconfigure"))
        for j in range(self.nindexers):
            self._start_indexer(j)
        for k in range(self.nworkers):
            self._start_worker(k)
        self._start_listener()
        ready = loop.create_task(self._all_ready.wait())
        stop = loop.create_task(self._stop.wait())
        done, _ = await asyncio.wait({ready, stop}, timeout=_READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        status = 0
        if not self._all_ready.is_set() and not self._stop.is_set():
            log.error("the node's processes did not start within %.0f s", _READY_TIMEOUT_S)
            status = 1
        summaries = None
        if self._all_ready.is_set():
            if not self._stop.is_set():
                self.metrics.state = "ready"
            self._write_ready_file()
            cfg = self.config
            log.info(
                "scpfleet serving %s on %s:%d%s: %d worker(s), %d indexer(s), storage %s, durability %s, "
                "node %s, index %s%s",
                cfg.aet, self.address[0], self.address[1], " (TLS)" if cfg.tls_cert else "", self.nworkers,
                self.nindexers, self.root, cfg.durability, cfg.node,
                redact_url(cfg.index_path) if cfg.index_shared else "sqlite",
                f", metrics on http://{cfg.metrics_host}:{self.metrics_port}/metrics" if self.metrics_port else "",
            )
            if not ACCELERATED and not os.environ.get("SCPFLEET_PURE_PYTHON"):
                log.warning("storage._speedups is not built: the metadata walk runs in pure Python "
                            "(about 10 us more CPU per instance); reinstall with a C compiler to build it")
            summaries = loop.create_task(self._summaries())
            await stop
            await self._drain_first()
        stop.cancel()
        if summaries is not None:
            summaries.cancel()
        return await self._shutdown(status)

    async def _drain_first(self) -> None:
        """With drain-delay (the workers refuse new associations since the signal): let
        the open ones go on, for at least drain-delay and until none is open, within
        drain-timeout (module doc)."""
        cfg = self.config
        if not self.draining or self.forced:
            return
        log.info("draining: new associations refused for at least %.1f s, open ones served to their end "
                 "(at most %.0f s)", cfg.drain_delay, cfg.drain_timeout)
        started = time.monotonic()
        while not self.forced:
            elapsed = time.monotonic() - started
            if elapsed >= cfg.drain_timeout:
                log.warning("draining: %d association(s) still open after %.0f s",
                            int(self.metrics.totals()["active"]), elapsed)
                return
            if elapsed >= cfg.drain_delay and not self.metrics.totals()["active"]:
                return
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _wait(self, children: list[_Child], timeout: float) -> None:
        waiting = [c.exited for c in children if c.alive and c.exited is not None]
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=timeout)
        if pending:
            for child in children:
                if child.alive:
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.popen.kill()
            await asyncio.wait(pending, timeout=_KILLED_EXIT_S)

    async def _shutdown(self, status: int) -> int:
        self.stopping = True
        self.metrics.state = "stopping"
        cfg = self.config
        if self.listener is not None and self.listener.alive:
            self._send(self.listener, Stop())
        if self.lsock is not None:
            self.lsock.close()
        await self._wait([self.listener] if self.listener else [], _LISTENER_STOP_S)
        workers = list(self.workers.values())
        if any(w.alive for w in workers):
            log.info("draining the workers (at most %.0f s)", cfg.drain_timeout)
        for worker in workers:
            if worker.alive:
                self._send(worker, Stop())
        await self._wait(workers, cfg.drain_timeout + _WORKER_STOP_MARGIN_S)
        indexers = list(self.indexers.values())
        for indexer in indexers:
            if indexer.alive:
                self._send(indexer, Stop())
        await self._wait(indexers, _INDEXER_STOP_S)
        try:
            with self.startup.open_index() as index:
                replayed = replay(self.root, index, files=self.files)
                retire(self.root, index, ())
                if self._unclean_since is not None:
                    reconcile(self.root, index, self._unclean_since, files=self.files,
                              digest_algorithm=cfg.digest)
            self.startup.remove_stale_locks()
        except CatalogUnavailable as exc:
            if not cfg.index_shared:
                log.error("final index flush failed: %s", exc)
                return 1
            # Nothing is lost: the journal keeps it, and the next start replays it.
            log.warning("final index flush: index %s unreachable (%s); the journal keeps what is not "
                        "indexed for the next start", redact_url(cfg.index_path), exc)
            return 1 if self.forced else status
        except Exception as exc:  # the journal still holds it all; the next start replays
            log.error("final index flush failed: %s", exc)
            return 1
        totals = self.metrics.totals()
        log.info("stopped: %d instance(s) stored this run; %d record(s) indexed at the final flush",
                 int(totals["instances"]), replayed)
        return 1 if self.forced else status
