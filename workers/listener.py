"""The listener process: accepts TCP connections and hands each to the least-loaded worker.

Theory of operation: the supervisor binds the listening socket (so a restarted
listener keeps the port) and gives this process one ``SOCK_SEQPACKET`` channel per
worker. Every accepted connection goes, as a descriptor attached to a one-byte packet
(``socket.send_fds``), to the worker with the fewest open connections: the listener
counts what it handed to each worker, the worker counts what it finished in the shared
slots, and the difference is the load (ties rotate). TLS is not this process's
business: the worker does the handshake on adopt.

The listener accepts only while at least one worker channel is open, so a node whose
workers are all restarting keeps connections waiting in the kernel's backlog instead
of dropping them. A channel that reports end-of-file belongs to a worker that died;
the supervisor sends the replacement's channel. The listener never reads from a
connection and holds none after handing it over.

One selector loop, no threads: accepting is cheap next to a DICOM association.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
import time

from .ipc import Attach, ListenerStats, Ready, SharedSlots, Spec, Stop, recv_control, send_control

__all__ = ["main", "Listener"]

log = logging.getLogger("scpfleet.listener")

_STATS_INTERVAL_S = 1.0
# Connections accepted per wake-up before looking at the other channels again.
_ACCEPT_BURST = 64
# A connection no worker channel would take (every buffer full) is retried this often.
_RETRY_S = 0.01


class Listener:
    def __init__(self, spec: Spec, ctl: socket.socket) -> None:
        self.spec = spec
        self.ctl = ctl
        self.slots = SharedSlots(spec.shm_fd, spec.workers)
        self.sock = socket.socket(fileno=spec.listen_fd)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.channels: dict[int, socket.socket] = {}
        self.handed = [0] * spec.workers
        # Per worker since its channel was attached: connections handed over, and the
        # worker's finished-connection count at that moment (its load is the difference).
        self.sent_since_attach = [0] * spec.workers
        self.done_at_attach = [0] * spec.workers
        self.accepted = 0
        self.rotate = 0
        self.waiting: collections.deque[socket.socket] = collections.deque()
        self.accepting = False
        self.stopping = False

    # -- channels ---------------------------------------------------------------------------

    def attach(self, worker: int, sock: socket.socket) -> None:
        self.detach(worker)
        sock.setblocking(False)
        self.channels[worker] = sock
        self.sent_since_attach[worker] = 0
        self.done_at_attach[worker] = self.slots.done(worker)
        self.sel.register(sock, selectors.EVENT_READ, ("channel", worker))
        self._update_accepting()

    def detach(self, worker: int) -> None:
        sock = self.channels.pop(worker, None)
        if sock is not None:
            self.sel.unregister(sock)
            sock.close()
        self._update_accepting()

    def _update_accepting(self) -> None:
        want = bool(self.channels) and not self.stopping
        if want and not self.accepting:
            self.sel.register(self.sock, selectors.EVENT_READ, ("listen", -1))
        elif not want and self.accepting:
            self.sel.unregister(self.sock)
        self.accepting = want

    def _pick(self) -> list[int]:
        """Workers by increasing load, ties in rotating order."""
        order = sorted(self.channels)
        n = len(order)
        if not n:
            return []
        start = self.rotate % n
        self.rotate += 1
        rotated = order[start:] + order[:start]
        done = self.slots.done
        return sorted(rotated, key=lambda k: self.sent_since_attach[k] - (done(k) - self.done_at_attach[k]))

    def _hand_over(self, conn: socket.socket) -> bool:
        for worker in self._pick():
            channel = self.channels[worker]
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
            except BlockingIOError:
                continue
            except OSError:
                self.detach(worker)
                continue
            self.handed[worker] += 1
            self.sent_since_attach[worker] += 1
            conn.close()
            return True
        return False

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ECONNABORTED ...: log and keep serving
                log.warning("accept failed: %s", exc)
                return
            self.accepted += 1
            if self.waiting or not self._hand_over(conn):
                self.waiting.append(conn)

    def _retry_waiting(self) -> None:
        while self.waiting:
            if not self._hand_over(self.waiting[0]):
                return
            self.waiting.popleft()

    # -- control ----------------------------------------------------------------------------

    def _on_control(self) -> None:
        while True:
            try:
                got = recv_control(self.ctl)
            except BlockingIOError:
                return
            except (OSError, ValueError) as exc:
                log.error("control channel failed: %s", exc)
                got = None
            if got is None:
                self.stop()
                return
            message, fd = got
            if isinstance(message, Stop):
                self.stop()
            elif isinstance(message, Attach) and fd is not None:
                self.attach(message.worker, socket.socket(fileno=fd))
            elif fd is not None:
                os.close(fd)

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self._update_accepting()

    def _send_stats(self) -> None:
        try:
            send_control(self.ctl, ListenerStats(accepted=self.accepted, handed=list(self.handed)))
        except OSError:
            pass

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.ctl.setblocking(False)
        self.sel.register(self.ctl, selectors.EVENT_READ, ("control", -1))
        for worker, fd in self.spec.streams:
            self.attach(worker, socket.socket(fileno=fd))
        send_control(self.ctl, Ready(os.getpid()))
        log.info("listening on %s:%d", *self.sock.getsockname()[:2])
        next_stats = time.monotonic()
        while not self.stopping:
            timeout = _RETRY_S if self.waiting else max(0.0, next_stats - time.monotonic())
            for key, _mask in self.sel.select(timeout):
                kind, worker = key.data
                if kind == "listen":
                    self._accept()
                elif kind == "control":
                    self._on_control()
                elif kind == "channel":
                    # Workers never write to the channel: readable means it closed.
                    self.detach(worker)
            if self.waiting:
                self._retry_waiting()
            if time.monotonic() >= next_stats:
                self._send_stats()
                next_stats = time.monotonic() + _STATS_INTERVAL_S
        # Connections accepted but not handed over are handed over if anyone takes them.
        self._retry_waiting()
        for conn in self.waiting:
            conn.close()
        self.sock.close()
        self._send_stats()
        return 0


def main(spec: Spec, ctl: socket.socket) -> int:
    return Listener(spec, ctl).run()
