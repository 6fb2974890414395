"""What operators see: node-wide counters, the periodic summary, ``/metrics`` and ``/health``.

Theory of operation: every child sends its cumulative counters to the supervisor once a
second over its control socket (:class:`~workers.ipc.WorkerStats` ...). The supervisor
keeps, per worker and indexer *slot*, the latest report of the running process plus the
sum of its dead predecessors' last reports, so a counter never goes backwards when a
process is restarted (a process killed outright loses at most its last second). From
these :class:`NodeMetrics` computes the summary line and, through :class:`NodeCollector`,
the Prometheus exposition served by the supervisor alone -- no per-process files, no
``PROMETHEUS_MULTIPROC_DIR``. Index lag is measured, not counted: the journal bytes
(and frames) beyond each segment's indexed offset, per indexer (the journal is the
index queue, so this is the one measure of how far the index is behind).

With an index shared by several nodes (PostgreSQL) the offsets are this node's rows of
``journal_progress``, read through one lazily connected catalog kept for the purpose;
while the database is unreachable the last offsets read stand (the lag then grows with
every record journalled). Every lag series carries the ``node`` label, so a cluster's
nodes can be told apart wherever their metrics meet.

``/health`` says whether the node wants new associations, for a load balancer's health
checks: 200 with ``{"status": "ready", ...}`` once every process is up and while a
listener and at least one worker run; 503 with ``starting``, ``degraded`` (no listener
or no worker running just now), ``draining`` (from the moment SIGTERM arrives: it
refuses new associations and finishes the open ones) or ``stopping``.

The HTTP server is a small threaded WSGI server of this module's: ``/health`` is
answered here, everything else by prometheus-client's exposition. The supervisor's loop
updates the numbers; a lock keeps each scrape consistent.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from storage import CatalogError, is_url, open_catalog, segment_names, segment_path

from .indexer import segment_worker
from .ipc import LATENCY_BUCKETS, IndexerStats, ListenerStats, WorkerStats

__all__ = ["NodeMetrics", "NodeCollector", "index_lag", "format_bytes", "start_metrics_server", "HEALTH_STATES"]

#: What ``/health`` reports; only ``ready`` is answered 200.
HEALTH_STATES = ("starting", "ready", "degraded", "draining", "stopping")

_WORKER_COUNTERS = ("instances", "bytes", "failures", "associations", "rejected")
_INDEXER_COUNTERS = ("indexed", "batches", "retired", "commit_errors", "polls")
# Counting unindexed journal frames stops here; past it the lag is "at least" this.
_LAG_FRAMES_MAX = 200_000
# A journal frame's payload is a record of a few hundred bytes (storage._journal).
_FRAME_MAX = 64 * 1024
# Scrapes and summaries within this many seconds share one lag measurement.
_LAG_CACHE_S = 1.0
# A scrape waits at most this long for the catalog (an indexer committing).
_CATALOG_WAIT_S = 1.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _count_frames(path: str, start: int, size: int) -> int:
    """Whole journal frames in ``path`` between ``start`` and ``size`` (walking lengths)."""
    count = 0
    header = struct.Struct("<I")
    with open(path, "rb") as fp:
        fp.seek(start)
        pos = start
        while count < _LAG_FRAMES_MAX:
            raw = fp.read(4)
            if len(raw) < 4:
                break
            (length,) = header.unpack(raw)
            if length > _FRAME_MAX:
                break
            pos += 8 + length
            if pos > size:
                break
            fp.seek(length + 4, os.SEEK_CUR)
            count += 1
    return count


def index_lag(root: str, index_path: str | None = None, indexers: int = 1, *,
              progress: Mapping[str, int] | None = None) -> dict[int, tuple[int, int]]:
    """``{indexer: (records, bytes)}`` journalled but not yet in the index, for each of
    ``indexers`` (segments of worker ``k`` are indexer ``k % indexers``'s). The indexed
    offsets are ``progress`` when given, else read from the SQLite index at ``index_path``."""
    lag = {j: (0, 0) for j in range(indexers)}
    if progress is None:
        progress = {}
        if index_path is not None and os.path.exists(index_path):
            try:
                with open_catalog(index_path, read_only=True, timeout_s=_CATALOG_WAIT_S) as catalog:
                    progress = catalog.journal_progress()
            except CatalogError:
                pass  # no index yet (or busy): everything journalled counts as lag
    for name in segment_names(root):
        worker = segment_worker(name)
        if worker is None:
            continue  # no worker's: only the supervisor's replay reads it
        path = segment_path(root, name)
        start = progress.get(name, 0)
        try:
            size = os.stat(path).st_size
            if size > start:
                records, lag_bytes = lag[worker % indexers]
                lag[worker % indexers] = (records + _count_frames(path, start, size), lag_bytes + size - start)
        except OSError:
            continue  # retired while we looked
    return lag


class NodeMetrics:
    """Counters of every slot, surviving restarts (see module doc)."""

    def __init__(self, root: str, index_path: str, indexers: int = 1, node: str = "") -> None:
        self.root = root
        self.index_path = index_path
        self.nindexers = indexers
        #: This node's id (the ``node`` label).
        self.node = node
        self.lock = threading.Lock()
        #: The node's life, for /health (one of HEALTH_STATES; set by the supervisor).
        self.state = "starting"
        #: Processes running now, for /health (set by the supervisor).
        self.running_workers = 0
        self.listening = False
        # A shared index is read through one catalog kept open (module doc).
        self._shared = None
        self._progress: dict[str, int] = {}
        if is_url(index_path):
            self._shared = open_catalog(index_path, node=node, read_only=True, lazy=True,
                                        timeout_s=_CATALOG_WAIT_S)
        self.workers: dict[int, WorkerStats] = {}
        self.worker_base: dict[int, dict[str, float]] = {}
        self.latency_base: dict[int, list[int]] = {}
        self.latency_sum_base: dict[int, float] = {}
        self.indexers: dict[int, IndexerStats] = {}
        self.indexer_base: dict[int, dict[str, int]] = {}
        self.listener = ListenerStats()
        self.accepted_base = 0
        self.restarts: dict[str, int] = {}
        self._lag: dict[int, tuple[int, int]] = {}
        self._lag_at = -1e9
        self._last_summary: tuple[float, int, int] | None = None

    # -- updates (supervisor loop) ------------------------------------------------------

    def update(self, role: str, slot: int, stats: Any) -> None:
        with self.lock:
            if role == "worker":
                self.workers[slot] = stats
            elif role == "indexer":
                self.indexers[slot] = stats
            elif role == "listener":
                self.listener = stats

    def retire(self, role: str, slot: int) -> None:
        """The process in ``slot`` ended: fold its last counters into the base."""
        with self.lock:
            if role == "worker" and slot in self.workers:
                last = self.workers.pop(slot)
                base = self.worker_base.setdefault(slot, {})
                for name in _WORKER_COUNTERS:
                    base[name] = base.get(name, 0) + getattr(last, name)
                lat = self.latency_base.setdefault(slot, [0] * (len(LATENCY_BUCKETS) + 1))
                for i, n in enumerate(last.latency_counts[: len(lat)]):
                    lat[i] += n
                self.latency_sum_base[slot] = self.latency_sum_base.get(slot, 0.0) + last.latency_sum
            elif role == "indexer" and slot in self.indexers:
                last = self.indexers.pop(slot)
                base = self.indexer_base.setdefault(slot, {})
                for name in _INDEXER_COUNTERS:
                    base[name] = base.get(name, 0) + getattr(last, name)
            elif role == "listener":
                self.accepted_base += self.listener.accepted
                self.listener = ListenerStats()

    def restarted(self, role: str) -> None:
        with self.lock:
            self.restarts[role] = self.restarts.get(role, 0) + 1

    # -- reads --------------------------------------------------------------------------

    def _worker_total(self, slot: int, name: str) -> float:
        current = self.workers.get(slot)
        return self.worker_base.get(slot, {}).get(name, 0) + (getattr(current, name) if current else 0)

    def _slots(self, current: dict, base: dict) -> list[int]:
        return sorted(set(current) | set(base))

    def totals(self) -> dict[str, float]:
        with self.lock:
            slots = self._slots(self.workers, self.worker_base)
            out = {name: sum(self._worker_total(s, name) for s in slots) for name in _WORKER_COUNTERS}
            out["active"] = sum(w.active for w in self.workers.values())
            out["indexed"] = sum(
                self.indexer_base.get(j, {}).get("indexed", 0) + (self.indexers[j].indexed if j in self.indexers else 0)
                for j in self._slots(self.indexers, self.indexer_base)
            )
            out["restarts"] = sum(self.restarts.values())
            return out

    def lag(self) -> dict[int, tuple[int, int]]:
        """``{indexer: (records, bytes)}`` not yet indexed (measured at most once a
        ``_LAG_CACHE_S``)."""
        now = time.monotonic()
        with self.lock:
            if now - self._lag_at < _LAG_CACHE_S:
                return self._lag
        if self._shared is not None:
            try:
                self._progress = self._shared.journal_progress()
            except CatalogError:
                pass  # unreachable: the last offsets read stand
            lag = index_lag(self.root, None, self.nindexers, progress=self._progress)
        else:
            lag = index_lag(self.root, self.index_path, self.nindexers)
        with self.lock:
            self._lag, self._lag_at = lag, now
        return lag

    def health(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body of ``/health`` (module doc)."""
        with self.lock:
            state = self.state
            if state == "ready" and not (self.listening and self.running_workers):
                state = "degraded"
            body = {
                "status": state,
                "node": self.node,
                "workers": self.running_workers,
                "active_associations": sum(w.active for w in self.workers.values()),
            }
        return (200 if state == "ready" else 503), body

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()

    def summary(self) -> str:
        """The periodic summary line: rates since the previous call, gauges, lag."""
        totals = self.totals()
        now = time.monotonic()
        instances, nbytes = int(totals["instances"]), int(totals["bytes"])
        if self._last_summary is None:
            rate = mbps = 0.0
        else:
            then, before_i, before_b = self._last_summary
            span = max(now - then, 1e-6)
            rate = (instances - before_i) / span
            mbps = (nbytes - before_b) / span / 1e6
        self._last_summary = (now, instances, nbytes)
        with self.lock:
            per_worker = " ".join(f"w{k}={w.active}" for k, w in sorted(self.workers.items()))
        lag = self.lag()
        lag_records = sum(records for records, _ in lag.values())
        lag_bytes = sum(nbytes for _, nbytes in lag.values())
        per_indexer = " ".join(f"i{j}={records}" for j, (records, _) in sorted(lag.items()))
        return (
            f"summary: {rate:.1f} instances/s, {mbps:.2f} MB/s, {int(totals['active'])} active associations"
            f" ({per_worker or 'no workers'}),"
            f" index lag {lag_records} records ({format_bytes(lag_bytes)}{'; ' + per_indexer if len(lag) > 1 else ''}),"
            f" {instances} instances / {format_bytes(nbytes)} stored,"
            f" {int(totals['failures'])} failed, {int(totals['rejected'])} rejected,"
            f" {int(totals['restarts'])} restarts"
        )

    def families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        lag = self.lag()
        with self.lock:
            slots = self._slots(self.workers, self.worker_base)
            specs = (
                ("instances", "scpfleet_instances_received", "Instances stored and acknowledged"),
                ("bytes", "scpfleet_bytes_received", "Bytes of instances stored (Part 10 files)"),
                ("failures", "scpfleet_store_failures", "C-STOREs answered with a failure status"),
                ("associations", "scpfleet_associations", "Associations served to their end"),
                ("rejected", "scpfleet_associations_rejected", "Associations refused at the node-wide limit"),
            )
            for attr, name, doc in specs:
                family = CounterMetricFamily(name, doc, labels=["worker"])
                for slot in slots:
                    family.add_metric([str(slot)], self._worker_total(slot, attr))
                yield family
            active = GaugeMetricFamily("scpfleet_active_associations", "Open associations", labels=["worker"])
            for slot, stats in sorted(self.workers.items()):
                active.add_metric([str(slot)], stats.active)
            yield active
            indexed = CounterMetricFamily("scpfleet_indexed_records", "Records committed to the index",
                                          labels=["indexer"])
            polls = CounterMetricFamily("scpfleet_indexer_polls", "Polls of the journal segments",
                                        labels=["indexer"])
            pending = GaugeMetricFamily("scpfleet_index_pending_records", "Records read, not yet committed",
                                        labels=["indexer"])
            for slot in self._slots(self.indexers, self.indexer_base):
                current = self.indexers.get(slot)
                base = self.indexer_base.get(slot, {})
                indexed.add_metric([str(slot)], base.get("indexed", 0) + (current.indexed if current else 0))
                polls.add_metric([str(slot)], base.get("polls", 0) + (current.polls if current else 0))
                pending.add_metric([str(slot)], current.pending if current else 0)
            yield indexed
            yield polls
            yield pending
            lag_records = GaugeMetricFamily("scpfleet_index_lag_records", "Journalled records not yet indexed",
                                            labels=["node", "indexer"])
            lag_bytes = GaugeMetricFamily("scpfleet_index_lag_bytes", "Journal bytes not yet indexed",
                                          labels=["node", "indexer"])
            for slot, (records, nbytes) in sorted(lag.items()):
                lag_records.add_metric([self.node, str(slot)], records)
                lag_bytes.add_metric([self.node, str(slot)], nbytes)
            yield lag_records
            yield lag_bytes
            ready = GaugeMetricFamily("scpfleet_ready", "1 while /health says ready (taking associations)",
                                      labels=["node"])
            ready.add_metric([self.node], 1 if self.state == "ready" and self.listening and self.running_workers
                             else 0)
            yield ready
            yield CounterMetricFamily("scpfleet_connections_accepted", "TCP connections accepted",
                                      value=self.accepted_base + self.listener.accepted)
            restarts = CounterMetricFamily("scpfleet_process_restarts", "Child processes restarted",
                                           labels=["role"])
            for role in ("worker", "indexer", "listener"):
                restarts.add_metric([role], self.restarts.get(role, 0))
            yield restarts
            counts = [0] * (len(LATENCY_BUCKETS) + 1)
            total_sum = 0.0
            for slot in slots:
                for i, n in enumerate(self.latency_base.get(slot, ())):
                    counts[i] += n
                total_sum += self.latency_sum_base.get(slot, 0.0)
                current = self.workers.get(slot)
                if current is not None:
                    for i, n in enumerate(current.latency_counts[: len(counts)]):
                        counts[i] += n
                    total_sum += current.latency_sum
        buckets = []
        running = 0
        for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts):
            running += n
            buckets.append((bound, running))
        yield HistogramMetricFamily(
            "scpfleet_store_latency_seconds",
            "C-STORE time from command to durable (data set received, file and journal synced)",
            buckets=buckets, sum_value=total_sum,
        )


class NodeCollector:
    """A prometheus-client collector over :class:`NodeMetrics`."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and health checks every second would drown the node's log


def start_metrics_server(metrics: NodeMetrics, host: str, port: int) -> tuple[Any, int]:
    """Serve ``/metrics`` and ``/health`` in a daemon thread; returns (server, bound
    port). Needs prometheus-client (ImportError otherwise)."""
    from prometheus_client import CollectorRegistry, make_wsgi_app

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(metrics))  # type: ignore[arg-type]
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/health":
            code, body = metrics.health()
            data = json.dumps(body).encode()
            start_response("200 OK" if code == 200 else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
            return [data]
        return exposition(environ, start_response)

    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server = server_class((host, port), _Quiet)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, server.server_port
