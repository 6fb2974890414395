"""``scpfleet load``: a multiprocess C-STORE load generator.

Theory of operation: the parent validates the arguments and prepares the instances once:
a synthesized :class:`~bench.synth.Template` (encoded once, patched per instance with
fresh UIDs) or Part 10 files read into memory (or, with ``--stream``, streamed from
disk each time). It starts ``--processes`` children (fork where the platform has it, so
the prepared bytes are shared copy-on-write) joined to it by a duplex pipe each. Every
child runs one uvloop event loop with ``--associations`` tasks; each task keeps one
association and sends C-STOREs back to back, one outstanding at a time (the
asynchronous operations window is 1), reassociating after ``--instances-per-association``
or after an abort. Work is drawn from the process's own budget (``--count`` split over
the processes, or ``--duration``) so fast associations send more; ``--rate`` paces each
process with a token bucket at rate/P.

Children report msgspec-encoded counters twice a second and their full
:class:`~bench.report.Tally` (latency and set-up histograms, failures by status and by
cause) at the end; the parent merges them, draws the progress line and prints the
summary (and ``--report`` JSON). Timing starts when every child is ready (process
start-up and data preparation are not measured). Every failed instance is counted once:
by its DIMSE status, or by a cause (``rejected``, ``aborted``, ``timeout``,
``connect-failed``, ``context-rejected``, ``not-sent`` when all associations gave up).
With both ``--count`` and ``--duration``, whichever ends first ends the run: the count
left when the duration ends is reported as *not sent*, which is no failure.
Ctrl-C in the parent stops the children gracefully (they ignore SIGINT themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import textwrap
import time
from typing import Any, Sequence

import msgspec

from engine import aio
from engine.presentation import build_context
from engine.status import status_category
from storage import NotDicomError, read_file_meta

from . import report as _report
from .common import (
    UsageError,
    add_target_arguments,
    check_target,
    open_association,
    positive_float,
    positive_int,
    requestor_config,
    quiet_engine,
    rsp_cause,
    Progress,
)
from .synth import (
    SOP_CLASS_ALIASES,
    TRANSFER_SYNTAX_ALIASES,
    Spread,
    Synthetic,
    Template,
    build_synthetic,
    file_template,
    instance_uid,
    new_run_root,
)

__all__ = ["add_parser", "run", "DEFAULT_COUNT"]


#: Instances sent when neither --count nor --duration is given: a bounded run.
DEFAULT_COUNT = 1000
#: One 512x512 16-bit slice plus its attributes: a typical CT instance.
DEFAULT_SIZE = 512 * 512 * 2
#: Files kept in memory at most; above it --stream is required (this is a load tool,
#: not a way to fill the machine's RAM).
MAX_IN_MEMORY = 2 << 30
#: Association attempts in a row a task makes before giving up (connect-failed,
#: rejected-transient, aborted): enough to ride out a restart, few enough to end fast.
MAX_ASSOCIATION_ATTEMPTS = 3
#: First pause after a failed association attempt; doubles on each further failure.
ASSOCIATION_BACKOFF_S = 0.1
#: Seconds between a child's counter reports (the progress line refreshes at this pace).
REPORT_INTERVAL_S = 0.5
#: Seconds the parent waits for all children to be ready (start-up, data preparation).
READY_TIMEOUT_S = 120.0
#: Seconds the parent waits for children to finish after asking them to stop.
STOP_GRACE_S = 30.0
_SUCCESS = "Success"
_WARNING = "Warning"

DESCRIPTION = """\
Push C-STOREs at a Storage SCP as fast as it takes them (or at --rate), from
--processes processes each driving --associations concurrent associations, and
report instances/s, MB/s, C-STORE latency percentiles and failures.

Instances are synthesized in memory (--sop-class, --transfer-syntax, --size; fresh
UIDs for every instance, spread over --patients/--studies/--series) or taken from
Part 10 files (--files: read into memory once and sent as raw bytes, or --stream
them from disk each time). The run is bounded by --count (default 1000) or
--duration, or both (whichever ends first; what the count had left when the duration
ended is reported as not sent). Exit status 0 when every instance sent was stored
(Success or Warning), 1 when any failed, 2 on bad arguments."""

EPILOG = textwrap.fill(
    f"SOP classes: {', '.join(SOP_CLASS_ALIASES)} or a UID. Transfer syntaxes: "
    f"{', '.join(TRANSFER_SYNTAX_ALIASES)} or a UID (compressed ones carry fake "
    "encapsulated pixel data: no SCP under load should decode it).", 80
) + """

examples:
  scpfleet load 127.0.0.1 11112 --processes 2 --associations 8 --count 20000 --size 4096
  scpfleet load 127.0.0.1 11112 --duration 60 --rate 500 --report run.json
  scpfleet load 127.0.0.1 11112 --files /data/sample --count 5000 --unique-uids"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "load",
        help="multiprocess C-STORE load generator",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(parser)
    bound = parser.add_argument_group("how much")
    bound.add_argument(
        "--count", type=positive_int, metavar="N",
        help=f"instances to send in total (default {DEFAULT_COUNT} unless --duration)",
    )
    bound.add_argument(
        "--duration", type=positive_float, metavar="S",
        help="send for S seconds (with --count: whichever ends first)",
    )
    bound.add_argument(
        "--rate", type=positive_float, metavar="N",
        help="target instances/s for the whole run, shared by the processes",
    )
    shape = parser.add_argument_group("how")
    shape.add_argument(
        "--processes", "-P", type=positive_int, default=1, metavar="P",
        help="sender processes, one event loop each (default 1)",
    )
    shape.add_argument(
        "--associations", "-A", type=positive_int, default=4, metavar="A",
        help="concurrent associations per process (default 4)",
    )
    shape.add_argument(
        "--instances-per-association", type=positive_int, metavar="K",
        help="release and reassociate after K instances (default: one association "
        "for the whole run)",
    )
    data = parser.add_argument_group("what")
    data.add_argument(
        "--files", nargs="+", metavar="PATH",
        help="Part 10 files or folders (recursive) to send in turn instead of "
        "synthesized instances; put it after HOST PORT",
    )
    data.add_argument(
        "--stream", action="store_true",
        help="with --files: stream each file from disk every time instead of from memory",
    )
    data.add_argument(
        "--unique-uids", action="store_true",
        help="with --files: give every sent instance a fresh SOP Instance UID "
        "(uncompressed or encapsulated data sets, not deflated ones)",
    )
    data.add_argument(
        "--size", type=positive_int, default=DEFAULT_SIZE, metavar="BYTES",
        help=f"synthesized data set size, approximately (default {DEFAULT_SIZE})",
    )
    data.add_argument(
        "--sop-class", default="ct", metavar="NAME|UID",
        help="synthesized SOP class (default ct)",
    )
    data.add_argument(
        "--transfer-syntax", default="explicit", metavar="NAME|UID",
        help="synthesized transfer syntax (default explicit: Explicit VR Little Endian)",
    )
    data.add_argument("--patients", type=positive_int, default=10, metavar="N",
                      help="distinct patients in a synthesized run (default 10)")
    data.add_argument("--studies", type=positive_int, default=20, metavar="N",
                      help="distinct studies, spread over the patients (default 20)")
    data.add_argument("--series", type=positive_int, default=40, metavar="N",
                      help="distinct series, spread over the studies (default 40)")
    out = parser.add_argument_group("output")
    out.add_argument("--report", metavar="FILE", help="write the summary as JSON to FILE")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="live progress line on stderr (default: when stderr is a terminal; "
        "otherwise a plain line every few seconds; --no-progress: none)",
    )
    parser.set_defaults(func=run)
    return parser


# ---------------------------------------------------------------------------------------
# What the children send


class Instance(msgspec.Struct, frozen=True):
    """A Part 10 file as the load generator sends it."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    data: bytes | None = None


#: What a source gives for instance ``k``: SOP class, SOP instance, transfer syntax, the
#: data set bytes (or None to stream ``path``), the path, the data set size.
Payload = tuple[str, str, str, bytes | None, str | None, int]


class Source:
    """Instances by global number ``k`` (see :data:`Payload`)."""

    contexts: list[tuple[str, str]]

    def payload(self, k: int) -> Payload:
        raise NotImplementedError


class SyntheticSource(Source):
    def __init__(self, synthetic: Synthetic) -> None:
        self.synthetic = synthetic
        self.template = synthetic.template
        self.root = synthetic.root
        self.by_series = synthetic.values_for_series()
        self.contexts = [(self.template.sop_class_uid, self.template.transfer_syntax_uid)]

    def payload(self, k: int) -> Payload:
        template = self.template
        uid = instance_uid(self.root, k)
        values = dict(self.by_series[k % len(self.by_series)])
        raw = uid.encode("ascii")
        values["sop"] = raw + b"\0" if len(raw) % 2 else raw
        data = template.render(values)
        return template.sop_class_uid, uid, template.transfer_syntax_uid, data, None, len(data)


class FileSource(Source):
    def __init__(self, files: list[Instance], templates: list[Template] | None,
                 root: str, stream: bool) -> None:
        self.files = files
        self.templates = templates
        self.root = root
        self.stream = stream
        pairs = {(f.sop_class_uid, f.transfer_syntax_uid): None for f in files}
        self.contexts = list(pairs)

    def payload(self, k: int) -> Payload:
        index = k % len(self.files)
        item = self.files[index]
        if self.templates is None:  # as stored: from memory, or streamed from disk
            return (item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid,
                    None if self.stream else item.data, item.path, item.size)
        uid = instance_uid(self.root, k)
        raw = uid.encode("ascii")
        data = self.templates[index].render({"sop": raw + b"\0" if len(raw) % 2 else raw})
        return item.sop_class_uid, uid, item.transfer_syntax_uid, data, None, len(data)


class Plan(msgspec.Struct, frozen=True):
    """Everything a child needs besides its source."""

    host: str
    port: int
    aec: str
    aet: str
    timeout: float
    max_pdu: int
    processes: int
    associations: int
    counts: list[int] | None
    duration: float | None
    rate_per_process: float | None
    per_association: int | None
    verbose: bool


class Message(msgspec.Struct):
    """Child to parent: ``ready``, ``progress``, ``done`` or ``error``."""

    kind: str
    proc: int
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    tally: _report.Tally | None = None
    reasons: dict[str, str] = msgspec.field(default_factory=dict)
    error: str | None = None
    #: ``done``: instances of the count left unsent because the duration ended first.
    not_sent: int = 0


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


# ---------------------------------------------------------------------------------------
# Preparing (parent)


def iter_files(paths: Sequence[str]) -> list[str]:
    """Files named, and files under folders named (recursive, sorted); UsageError for a
    path that does not exist."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(folder, n) for n in sorted(names))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UsageError(f"no such file or folder: {path}")
    return found


def _load_files(paths: Sequence[str], stream: bool) -> list[Instance]:
    items: list[Instance] = []
    total = 0
    skipped = 0
    for path in iter_files(paths):
        try:
            if stream:
                meta = read_file_meta(path)
                size = os.path.getsize(path) - meta.dataset_offset
                data = None
            else:
                with open(path, "rb") as fobj:
                    blob = fobj.read()
                meta = read_file_meta(io.BytesIO(blob))
                data = blob[meta.dataset_offset:]
                size = len(data)
        except (NotDicomError, OSError) as exc:
            skipped += 1
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if not meta.media_storage_sop_class_uid or not meta.media_storage_sop_instance_uid:
            skipped += 1
            print(f"skipping {path}: no Media Storage SOP Class/Instance UID", file=sys.stderr)
            continue
        total += size
        if total > MAX_IN_MEMORY and not stream:
            raise UsageError(
                f"the files hold more than {MAX_IN_MEMORY >> 30} GiB: use --stream"
            )
        items.append(Instance(
            path=path,
            sop_class_uid=meta.media_storage_sop_class_uid,
            sop_instance_uid=meta.media_storage_sop_instance_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            size=size,
            data=data,
        ))
    if not items:
        raise UsageError("no DICOM Part 10 files to send" + (
            f" ({skipped} skipped)" if skipped else ""))
    return items


def prepare(args: argparse.Namespace) -> tuple[Plan, Source, dict[str, Any]]:
    """Validate ``args`` and build the plan and the source; UsageError on bad input."""
    check_target(args.host)
    if args.files is None and (args.stream or args.unique_uids):
        raise UsageError("--stream and --unique-uids apply to --files only")
    if args.stream and args.unique_uids:
        raise UsageError("--unique-uids needs the files in memory: drop --stream")
    count = args.count
    if count is None and args.duration is None:
        count = DEFAULT_COUNT
    processes = args.processes
    if count is not None and processes > count:
        processes = count  # a process with nothing to send would only skew the timing
    counts = None
    if count is not None:
        share, extra = divmod(count, processes)
        counts = [share + (1 if i < extra else 0) for i in range(processes)]
    root = new_run_root()
    described: dict[str, Any]
    source: Source
    if args.files is not None:
        files = _load_files(args.files, args.stream)
        templates = None
        if args.unique_uids:
            templates = []
            for item in files:
                try:
                    templates.append(file_template(
                        item.sop_class_uid, item.transfer_syntax_uid, item.data or b"", root
                    ))
                except ValueError as exc:
                    raise UsageError(f"--unique-uids: {item.path}: {exc}") from None
        source = FileSource(files, templates, root, args.stream)
        described = {
            "source": "files",
            "files": len(files),
            "file_bytes": sum(f.size for f in files),
            "stream": args.stream,
            "unique_uids": args.unique_uids,
        }
    else:
        try:
            spread = Spread(args.patients, args.studies, args.series)
            synthetic = build_synthetic(
                sop_class_text=args.sop_class,
                transfer_syntax_text=args.transfer_syntax,
                size=args.size,
                spread=spread,
                root=root,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        source = SyntheticSource(synthetic)
        described = {
            "source": "synthesized",
            "sop_class": synthetic.template.sop_class_uid,
            "transfer_syntax": synthetic.template.transfer_syntax_uid,
            "instance_size": synthetic.instance_size,
            "patients": spread.patients,
            "studies": spread.studies,
            "series": spread.series,
            "uid_root": root,
        }
    if len(source.contexts) > 128:
        raise UsageError(
            f"the files need {len(source.contexts)} presentation contexts, more than the "
            "128 one association can propose (PS3.8 9.3.2): split them, or use 'send'"
        )
    plan = Plan(
        host=args.host,
        port=args.port,
        aec=args.aec,
        aet=args.aet,
        timeout=args.timeout,
        max_pdu=args.max_pdu,
        processes=processes,
        associations=args.associations,
        counts=counts,
        duration=args.duration,
        rate_per_process=args.rate / processes if args.rate else None,
        per_association=args.instances_per_association,
        verbose=args.verbose,
    )
    return plan, source, described


# ---------------------------------------------------------------------------------------
# Sending (child)


class _Sender:
    """One child's loop: ``associations`` tasks sharing a budget, a pacer and a tally."""

    def __init__(self, index: int, plan: Plan, source: Source,
                 conn: multiprocessing.connection.Connection,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.index = index
        self.plan = plan
        self.source = source
        self.conn = conn
        self.loop = loop
        self.tally = _report.Tally()
        self.reasons: dict[str, str] = {}
        self.remaining = plan.counts[index] if plan.counts is not None else None
        self.deadline = loop.time() + plan.duration if plan.duration else None
        self.seq = 0
        self.stopped = False
        self.interval = 1.0 / plan.rate_per_process if plan.rate_per_process else None
        self.next_slot = loop.time()
        namespace = argparse.Namespace(
            aec=plan.aec, aet=plan.aet, timeout=plan.timeout, max_pdu=plan.max_pdu
        )
        contexts = [build_context(sop, [ts]) for sop, ts in source.contexts]
        self.config = requestor_config(namespace, contexts)

    def take(self) -> int | None:
        """The next instance number of this process, or None when the budget is spent."""
        if self.stopped:
            return None
        if self.deadline is not None and self.loop.time() >= self.deadline:
            return None
        if self.remaining is not None:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
        k = self.index + self.plan.processes * self.seq
        self.seq += 1
        return k

    async def pace(self) -> None:
        """Token bucket at rate/P, holding at most one token per association."""
        interval = self.interval
        if interval is None:
            return
        now = self.loop.time()
        slot = max(self.next_slot, now - interval * self.plan.associations)
        self.next_slot = slot + interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def fail(self, cause: str, reason: str, instances: int = 1) -> None:
        self.tally.fail_cause(cause, instances)
        self.reasons.setdefault(cause, reason)

    async def run(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self._on_control)
        reporter = self.loop.create_task(self._report_loop())
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.plan.associations)))
        finally:
            reporter.cancel()
            self.loop.remove_reader(self.conn.fileno())
        not_sent = 0
        if self.remaining and not self.stopped:
            if self.deadline is not None and self.loop.time() >= self.deadline:
                not_sent = self.remaining  # the duration ended first: not a failure
            else:
                self.fail("not-sent", "every association gave up", self.remaining)
            self.remaining = 0
        self._send(Message(kind="done", proc=self.index, tally=self.tally,
                           reasons=self.reasons, not_sent=not_sent))

    def _on_control(self) -> None:
        try:
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            data = b"stop"  # the parent is gone: stop sending
        if data == b"stop":
            self.stopped = True
            self.loop.remove_reader(self.conn.fileno())

    def _send(self, message: Message) -> None:
        try:
            self.conn.send_bytes(_encoder.encode(message))
        except (BrokenPipeError, OSError):
            self.stopped = True

    async def _report_loop(self) -> None:
        tally = self.tally
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self._send(Message(kind="progress", proc=self.index, ok=tally.ok,
                               failed=tally.failed, bytes=tally.bytes))

    async def _associate(self) -> aio.Association | None | bool:
        """An association; None after a retryable failure; False to give up."""
        plan = self.plan
        outcome = await open_association(plan.host, plan.port, self.config)
        if outcome.assoc is None:
            self.fail(outcome.cause, outcome.reason)
            return None if outcome.transient else False
        assoc = outcome.assoc
        if not assoc.accepted_contexts:
            self.fail("context-rejected", "the SCP accepted none of the presentation contexts")
            await assoc.release()
            return False
        self.tally.associations += 1
        self.tally.setup.record(outcome.setup_s)
        return assoc

    async def _worker(self) -> None:
        tally = self.tally
        latency = tally.latency
        source = self.source
        perf_counter = time.perf_counter
        per_association = self.plan.per_association
        assoc: aio.Association | None = None
        on_assoc = 0
        attempts = 0
        try:
            while True:
                k = self.take()
                if k is None:
                    break
                if assoc is None:
                    got = await self._associate()
                    if not got:
                        attempts += 1
                        # The instance this association was for is lost.
                        if got is False or attempts >= MAX_ASSOCIATION_ATTEMPTS:
                            break
                        await asyncio.sleep(ASSOCIATION_BACKOFF_S * 2 ** (attempts - 1))
                        continue
                    assoc, on_assoc, attempts = got, 0, 0  # type: ignore[assignment]
                await self.pace()
                sop_class, sop_instance, ts, data, path, size = source.payload(k)
                start = perf_counter()  # loop.time() is millisecond-grained on uvloop
                try:
                    if data is not None:
                        rsp = await assoc.send_c_store_raw(sop_class, sop_instance, ts, data)
                        status = rsp.status if rsp is not None else None
                    else:
                        status = (await assoc.send_c_store(path)).get("Status")
                except ValueError as exc:  # no accepted context for this SOP class / TS
                    self.fail("context-rejected", str(exc))
                    continue
                except RuntimeError as exc:  # the association ended while idle
                    self.fail("aborted", str(exc))
                    assoc = None
                    continue
                except OSError as exc:
                    self.fail("file-error", f"{path}: {exc}")
                    assoc.abort()
                    assoc = None
                    continue
                if status is None:
                    cause, words = rsp_cause(assoc)
                    self.fail(cause, words)
                    assoc = None
                    continue
                category = status_category(status)
                if category == _SUCCESS or category == _WARNING:
                    tally.ok += 1
                    tally.bytes += size
                    latency.record(perf_counter() - start)
                    if category == _WARNING:
                        tally.warn_status(status)
                else:
                    tally.fail_status(status)
                on_assoc += 1
                if per_association is not None and on_assoc >= per_association:
                    await assoc.release()
                    assoc = None
        finally:
            if assoc is not None and assoc.is_established:
                await assoc.release()


def _child_main(index: int, plan: Plan, source: Source,
                conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    quiet_engine(plan.verbose)
    try:
        conn.send_bytes(_encoder.encode(Message(kind="ready", proc=index)))
        if conn.recv_bytes() != b"go":
            return
        loop = aio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(_Sender(index, plan, source, conn, loop).run())
        finally:
            loop.close()
    except (EOFError, BrokenPipeError):
        return  # the parent went away
    except BaseException as exc:  # report, do not die silently
        try:
            conn.send_bytes(_encoder.encode(
                Message(kind="error", proc=index, error=f"{type(exc).__name__}: {exc}")
            ))
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Running and summing up (parent)


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


class _Run:
    """The parent's view of the children while they run."""

    def __init__(self, plan: Plan, progress: Progress | None) -> None:
        self.plan = plan
        self.progress = progress
        self.latest: dict[int, Message] = {}
        self.final: dict[int, Message] = {}
        self.errors: list[str] = []
        self.start = 0.0
        self.end = 0.0
        self.interrupted = False

    @property
    def total(self) -> int | None:
        return sum(self.plan.counts) if self.plan.counts is not None else None

    def counts(self) -> tuple[int, int, int]:
        ok = failed = size = 0
        for proc in range(self.plan.processes):
            msg = self.final.get(proc) or self.latest.get(proc)
            if msg is None:
                continue
            if msg.tally is not None:
                ok, failed, size = ok + msg.tally.ok, failed + msg.tally.failed, size + msg.tally.bytes
            else:
                ok, failed, size = ok + msg.ok, failed + msg.failed, size + msg.bytes
        return ok, failed, size

    def tick(self, now: float) -> None:
        progress = self.progress
        if progress is None or not progress.due(now):
            return
        ok, failed, size = self.counts()
        done = ok + failed
        elapsed = now - self.start
        rate = progress.rate(done, now)
        mbps = size / 1e6 / elapsed if elapsed > 0 else 0.0
        progress.show(_report.progress_text(done, self.total, failed, elapsed, rate, mbps), now)


def run(args: argparse.Namespace) -> int:
    """Entry point for ``scpfleet load``; returns the exit status."""
    plan, source, described = prepare(args)
    quiet_engine(plan.verbose)
    progress = None if args.progress is False else Progress(args.progress)
    state = _Run(plan, progress)
    ctx = _context()
    procs = []
    conns: dict[Any, int] = {}
    try:
        for index in range(plan.processes):
            mine, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=_child_main, args=(index, plan, source, theirs),
                               name=f"scpfleet-load-{index}", daemon=True)
            proc.start()
            theirs.close()
            procs.append(proc)
            conns[mine] = index
        _wait_ready(conns, procs)
        state.start = time.monotonic()
        if progress is not None:
            progress.rate(0, state.start)
        for conn in conns:
            conn.send_bytes(b"go")
        _collect(state, conns, procs)
    except KeyboardInterrupt:
        state.interrupted = True
        _stop(conns)
        _collect(state, conns, procs, grace=STOP_GRACE_S)
    except RuntimeError as exc:
        print(f"scpfleet load: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.clear()
        for conn in conns:  # a child still waiting for "go" sees EOF and returns
            conn.close()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    return _finish(args, plan, state, described)


def _wait_ready(conns: dict[Any, int], procs: list) -> None:
    waiting = set(conns)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("the sender processes did not start in time")
        for conn in multiprocessing.connection.wait(list(waiting), timeout=min(left, 1.0)):
            try:
                msg = _decoder.decode(conn.recv_bytes())
            except EOFError:
                raise RuntimeError(
                    f"sender process {conns[conn]} exited while starting"
                ) from None
            if msg.kind == "error":
                raise RuntimeError(f"sender process {msg.proc} failed: {msg.error}")
            waiting.discard(conn)


def _stop(conns: dict[Any, int]) -> None:
    for conn in conns:
        try:
            conn.send_bytes(b"stop")
        except OSError:
            pass


def _collect(state: _Run, conns: dict[Any, int], procs: list,
             grace: float | None = None) -> None:
    """Read the children's messages until each has finished (or died)."""
    open_conns = [c for c in conns if conns[c] not in state.final]
    deadline = time.monotonic() + grace if grace is not None else None
    while open_conns:
        timeout = REPORT_INTERVAL_S
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
            if timeout <= 0:
                break
        try:
            ready = multiprocessing.connection.wait(open_conns, timeout=timeout)
        except KeyboardInterrupt:
            if grace is not None:  # a second Ctrl-C: give up waiting
                break
            raise
        for conn in ready:
            index = conns[conn]
            try:
                msg = _decoder.decode(conn.recv_bytes())
            except (EOFError, OSError):
                open_conns.remove(conn)
                if index not in state.final:
                    code = procs[index].exitcode
                    state.errors.append(f"sender process {index} exited early (code {code})")
                continue
            if msg.kind == "progress":
                state.latest[index] = msg
            elif msg.kind == "done":
                state.final[index] = msg
                open_conns.remove(conn)
                state.end = time.monotonic()
            elif msg.kind == "error":
                state.errors.append(f"sender process {index} failed: {msg.error}")
                open_conns.remove(conn)
        state.tick(time.monotonic())
    if not state.end:
        state.end = time.monotonic()


def _finish(args: argparse.Namespace, plan: Plan, state: _Run,
            described: dict[str, Any]) -> int:
    tally = _report.merge_tallies(m.tally for m in state.final.values() if m.tally)
    reasons: dict[str, str] = {}
    for msg in state.final.values():
        for cause, words in msg.reasons.items():
            reasons.setdefault(cause, words)
    # Instances of a child that never reported back are failures too.
    for index in range(plan.processes):
        if index in state.final:
            continue
        planned = plan.counts[index] if plan.counts is not None else None
        last = state.latest.get(index)
        got_ok = last.ok if last else 0
        got_failed = last.failed if last else 0
        tally.ok += got_ok
        if planned is not None and not state.interrupted:
            tally.fail_cause("worker-died", planned - got_ok)
            reasons.setdefault("worker-died", "a sender process ended without reporting")
        else:
            tally.failed += got_failed
    duration = max(state.end - state.start, 1e-9)
    not_sent = sum(m.not_sent for m in state.final.values())
    summary = build_summary(args, plan, tally, reasons, duration, described, state, not_sent)
    print(format_summary(summary))
    if args.report:
        try:
            _report.write_json(args.report, summary)
        except OSError as exc:
            print(f"cannot write {args.report}: {exc}", file=sys.stderr)
            return 1
    if state.interrupted:
        return 130
    return 0 if tally.failed == 0 and not state.errors else 1


def build_summary(args: argparse.Namespace, plan: Plan, tally: _report.Tally,
                  reasons: dict[str, str], duration: float, described: dict[str, Any],
                  state: _Run, not_sent: int = 0) -> dict[str, Any]:
    """The run as a JSON-ready dict (the ``--report`` file). ``not_sent``: instances of
    the count left when the duration ended (not failures)."""
    return {
        "command": "load",
        "target": {"host": plan.host, "port": plan.port, "aec": plan.aec, "aet": plan.aet},
        "processes": plan.processes,
        "associations_per_process": plan.associations,
        "requested_count": sum(plan.counts) if plan.counts is not None else None,
        "requested_duration_s": plan.duration,
        "requested_rate": args.rate,
        "instances_per_association": plan.per_association,
        "data": described,
        "instances": tally.ok,
        "failures": tally.failed,
        "attempted": tally.ok + tally.failed,
        "not_sent": not_sent,
        "bytes": tally.bytes,
        "duration_s": round(duration, 6),
        "instances_per_s": round(tally.ok / duration, 3),
        "mb_per_s": round(tally.bytes / 1e6 / duration, 3),
        "latency_ms": _report.latency_summary(tally.latency),
        "associations": tally.associations,
        "association_setup_ms": _report.latency_summary(tally.setup),
        "failures_by_status": dict(sorted(tally.failures_by_status.items())),
        "failures_by_cause": dict(sorted(tally.failures_by_cause.items())),
        "failure_reasons": dict(sorted(reasons.items())),
        "warnings_by_status": dict(sorted(tally.warnings_by_status.items())),
        "errors": state.errors,
        "interrupted": state.interrupted,
    }


def format_summary(summary: dict[str, Any]) -> str:
    t = summary["target"]
    lat = summary["latency_ms"]
    setup = summary["association_setup_ms"]
    rows: list[tuple[str, Any]] = [
        ("target", f"{t['aec']}@{t['host']}:{t['port']} from {t['aet']}"),
        ("senders", f"{summary['processes']} process(es) x "
                    f"{summary['associations_per_process']} association(s)"),
        ("instances", f"{summary['instances']} stored, {summary['failures']} failed"
                      + (f", {summary['not_sent']} not sent (the duration ended first)"
                         if summary.get("not_sent") else "")
                      + (f" (of {summary['requested_count']})"
                         if summary["requested_count"] else "")),
        ("data", _report.format_bytes(summary["bytes"])),
        ("duration", _report.format_duration(summary["duration_s"])),
        ("throughput", f"{_report.format_count(summary['instances_per_s'])} instances/s, "
                       f"{summary['mb_per_s']:.2f} MB/s"),
        ("C-STORE latency", f"p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  "
                            f"p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms"),
        ("association set-up", f"p50 {setup['p50']:.2f} ms  max {setup['max']:.2f} ms  "
                               f"({summary['associations']} associations)"),
    ]
    for key, n in summary["warnings_by_status"].items():
        rows.append(("warnings", f"{key}: {n}"))
    for key, n in summary["failures_by_status"].items():
        rows.append(("failed, status", f"{key}: {n}"))
    for key, n in summary["failures_by_cause"].items():
        words = summary["failure_reasons"].get(key, "")
        rows.append(("failed, cause", f"{key}: {n}" + (f" ({words})" if words else "")))
    for error in summary["errors"]:
        rows.append(("error", error))
    if summary["interrupted"]:
        rows.append(("note", "interrupted: the run was stopped early"))
    return "scpfleet load summary\n" + _report.format_table(rows)
