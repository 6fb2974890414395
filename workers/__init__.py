"""scpfleet's node: the processes behind ``scpfleet serve`` (see docs/architecture.md).

Theory of operation
-------------------
Processes. A **supervisor** (:mod:`.supervisor`) recovers the storage root, binds the
port and starts everything else as fresh interpreters (:mod:`._spawn`): one
**listener** (:mod:`.listener`) accepting TCP connections and passing each, as a file
descriptor over a Unix ``SOCK_SEQPACKET`` channel (``socket.send_fds``), to the
least-loaded of N **workers** (:mod:`.worker`), each one uvloop loop running many
associations through :class:`engine.aio.AssociationServer` (``adopt``; TLS is
handshaken there); and M **indexers** (:mod:`.indexer`) writing the index: SQLite, or
the PostgreSQL index the nodes of a cluster share, as this node's rows (``--node-id``).
A worker, indexer or the listener that dies is restarted; the others carry on.

Load and admission. Workers and listener share a small ``memfd`` array
(:class:`.ipc.SharedSlots`), one slot per worker, written only by that worker: the
associations it holds and the connections it has finished. The listener's load for a
worker is "handed to it" minus "finished by it" (no round trip, no message per
connection). Admission (``ServerConfig.admission``) sums the slots under a POSIX
record lock and takes one, so ``max-associations`` is exact node-wide and answered
with A-ASSOCIATE-RJ (2, 3, 2). A slot is given back as the association is released,
aborted or rejected (before the A-RELEASE-RP leaves, so a peer reconnecting at once is
admitted); the supervisor zeroes a dead worker's slot, so a crash never leaks capacity.

One C-STORE. Fragments go straight from the engine's memoryviews to an upload of the
worker's ``storage.PosixInstanceStore`` (a temporary file in ``<root>/.tmp``); its
``finish`` makes it durable (fsync in executor threads, never on the loop), renames it
to ``<study>/<series>/<sop>.dcm`` and appends its ``InstanceRecord`` to the worker's
own journal segment; only then is the C-STORE-RSP sent. Memory per association is
about one PDU, whatever the instance size.

The journal is the index queue. Each worker appends records to its own journal
segment from several publisher threads; that append is all it spends on the index,
and it sends its indexer nothing. Indexer ``worker % M`` polls the journal directory
and follows each segment of its workers with a ``storage.JournalTail``: one ``fstat``
per segment per poll when nothing is new, a poll every 10 ms while records keep
coming and every 100 ms when idle. The workers' pace never depends on the index: a
slow, blocked or dead indexer only lets the journal grow (``/metrics`` shows the
index lag per indexer), and the indexer catches up from it.

Exactly-once, monotonic progress. Each segment has a single progress writer while the
node runs: the indexer owning its worker; the supervisor replays only before children
start and after they all stopped. Rows and progress commit together
(``Catalog.apply``), and a tail resumes from the committed progress, so progress only
moves forward and a restart or a replay never doubles a row. A tail stops before bytes
that are not yet a whole good frame: while the writer holds the segment's lock, they
are a frame being written (a reader can see part of a concurrent ``write(2)``), read
again next poll.

Dead writers. A worker's store locks ``<segment>.lock`` before creating the segment
and holds it until the segment is closed, so "the lock can be taken" means "the
writer is gone" (pid-reuse proof). The owning indexer tries an idle segment's lock
twice a second; once it can take it,
the segment -- rotated past ``journal-segment-bytes`` and released once the stores
publishing into it were done, or left by a worker that stopped or died -- is read to
its end (a torn tail is ignored), committed and deleted.

Crashes. Nothing acknowledged is lost after kill -9 of any process or all of them: at
start the supervisor removes temporary files (``storage.sweep_temp``), replays every
segment (``storage.replay``), retires them (``storage.retire``) and indexes files that
were renamed into place but never journalled (:mod:`.recovery`, also run when a worker
dies). Temporary files live only under ``.tmp`` and are never indexed.

Behind a balancer. A worker reads the PROXY v2 header (:mod:`.proxy`) of a connection
from ``proxy-protocol-from`` before adopting it with the client's address; the
supervisor's ``/health`` tells the balancer whether the node takes associations, and on
SIGTERM says draining while the workers refuse new associations (``drain-delay``).

Operators. Each association ends with one log line (peer, AE titles, worker,
instances, bytes, duration, outcome); the supervisor logs a summary every
``summary-interval`` and serves Prometheus ``/metrics`` and ``/health`` from counters the
children send it each second (:mod:`.metrics`). ``scpfleet ls`` and ``scpfleet stats``
read the index, a shared one for the whole cluster (:mod:`.cli`).
"""

from __future__ import annotations

from .config import ConfigError, NodeConfig, load_config

__all__ = ["NodeConfig", "ConfigError", "load_config"]
