"""``python -m bench.compare``: scpfleet serve side by side with DCMTK, pynetdicom and Orthanc.

Theory of operation: one command builds the test data (bench.corpus: tiny instances,
512x512 16-bit CTs, 80 MB multi-frames; one set per client, every file its own SOP
Instance UID) in a temporary folder, then runs a matrix of *cells*. A cell is one load
(kind x concurrent associations), one client (DCMTK ``storescu``: one process, one
association each, sharing the files; or ``scpfleet load --files``: P processes x A
associations, the same count) and one server on a loopback port: ``scpfleet serve``
with 1 and N workers (N = CPUs) and durability ``none`` and ``fsync``, DCMTK
``storescp --fork`` (which never syncs: compare it with ``none``), pynetdicom's
``storescp`` and, for the tiny and CT loads driven by ``scpfleet load``, Orthanc from
Debian's package (which syncs each file by default).

Order: for each repeat, for each load, every server in turn (rotated by one each
repeat, so drift on a shared machine hits all servers alike). Each server is started
fresh, with empty storage, for its load; both clients run against it in turn (their
order swapped each repeat), the first one's stored files deleted before the second
starts; then it is stopped. After each run the stored files are counted: a cell passes
only when the client saw no failure and exactly the expected number of instances is
stored (nothing silently dropped). Wall time is the client's: ``scpfleet load``'s own
report (first association to last response; data preparation excluded) or, for
storescu, the processes' lifetime. A server that does not start or a client that errs
or overruns makes a failed cell with its reason; Ctrl-C (or SIGTERM) stops every
process this module started (each runs in its own process group) and writes nothing.

Output (``--out``, default bench/results): ``latest.md`` (median tables and ratios),
``latest.json`` (every cell, the medians and the machine) and ``latest.png`` (grouped
bars of instances/s). It never talks to anything but 127.0.0.1 and never writes a
machine path into its results.

The package's modules, one reason to change each: ``matrix`` (the loads, clients,
servers and which cells exist), ``run`` (running a cell and the matrix, the checks),
``report`` (medians, ratios, latest.md and latest.png) and ``cli`` (the options and the
run from start to finish). Starting the servers is bench.servers' job, the clients and
their files bench.clients', the machine and versions bench.machine's.
"""

from bench.clients import load_shape
from bench.compare.cli import build_parser, main
from bench.compare.matrix import LOADS, in_matrix, reference_key, server_specs
from bench.compare.report import render_markdown, summarize

__all__ = ["main", "build_parser", "LOADS", "server_specs", "summarize", "render_markdown",
           "reference_key", "in_matrix", "load_shape"]
