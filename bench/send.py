"""``scpfleet send``: bulk ingestion of an archive of Part 10 files into an SCP.

Theory of operation: the paths (and ``--from-list`` files) are walked recursively and
only each file's File Meta Information is read (PS3.10 7.1); a file that is not Part 10,
or whose meta lacks the Media Storage SOP Class/Instance UIDs, is reported and skipped.
Each file's SOP Class/Instance UIDs are those of its data set, read from its first
bytes (inflating just its head when deflated), as other senders do; a File Meta that
says otherwise is reported on stderr and the data set's UIDs are used. Each distinct
(SOP class, transfer syntax) pair gets a presentation context proposing exactly that
syntax, so every file goes out as stored, streamed from disk without being decoded
(should the SCP accept the SOP class only in another uncompressed syntax, the engine
converts it while streaming; an odd-length deflated data set gets its trailing null
byte, PS3.5 A.5). One association proposes at most 128 contexts (PS3.8 9.3.2.2): with more pairs,
the files are grouped so that each group's pairs fit, and the groups are sent one after
the other. Within a group ``--associations`` tasks on one event loop share a queue.

Transient failures are retried with exponential backoff up to ``--retries`` times: a
connection that fails, an A-ASSOCIATE-RJ rejected-transient, the association closing
between two files, and DIMSE status A7xx (refused, out of resources, PS3.4 Table B.2-1).
A peer that aborts the association while a file is being stored, or aborts the
association request, is reported at once on stderr and the file or association is tried
once more (:data:`ABORT_RETRIES`): a peer that aborts on a file again will do so every
time. A peer that does not answer at all (the timeout runs out) is not retried: another
attempt would only wait the whole timeout again. Anything else (rejected-permanent,
other failure statuses, a context the SCP did not accept) fails the file at once. At the end the failed paths are listed with their reasons and, with
``--failed-list``, written one per line for a rerun (``--from-list``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from engine import aio
from engine.dataset import read_sop_uids
from engine.presentation import build_context
from engine.sop_class import uid_name
from engine.status import status_category, status_description
from storage import NotDicomError, read_file_meta

from . import report as _report
from .common import (
    Progress,
    UsageError,
    add_target_arguments,
    check_target,
    non_negative_int,
    open_association,
    positive_float,
    positive_int,
    requestor_config,
    quiet_engine,
    rsp_cause,
)
from .load import iter_files

__all__ = ["add_parser", "run", "scan", "group_files"]

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255, so 128 per association.
MAX_CONTEXTS = 128
#: Longest pause between retries, however many there were.
MAX_BACKOFF_S = 30.0
#: Failed and skipped files printed in the summary; the rest go to --failed-list.
LIST_LIMIT = 20
#: Further attempts after the peer aborted (a file being stored, or the association
#: request): one, in case the abort had another cause; a peer that aborts on the same
#: file again will do so every time, and more attempts only repeat it.
ABORT_RETRIES = 1
#: Bytes of a data set's head read for its SOP UIDs (group 0008 comes first).
HEAD_BYTES = 16 * 1024

DESCRIPTION = """\
Send an archive of DICOM Part 10 files to a Storage SCP: folders are walked
recursively, only each file's File Meta Information is read, every file is streamed
as stored (never decoded or converted) over --associations parallel associations
proposing exactly the (SOP class, transfer syntax) pairs found. Files that are not
DICOM are reported and skipped. Transient failures (connection failed, association
rejected-transient, status 0xA7xx out of resources) are retried with backoff up to
--retries times; a peer that aborts is reported at once and tried once more; a peer
that does not answer within --timeout is not retried. The C-STORE names the SOP
Class/Instance UIDs of each data set (a File Meta that differs is reported).
Exit status 0 when every DICOM file was stored, 1 when any failed (see
--failed-list), 2 on bad arguments."""

EPILOG = """\
examples:
  scpfleet send /archive/2023 127.0.0.1 11112 --associations 8
  scpfleet send a.dcm b.dcm pacs.example 104 --aec PACS --failed-list failed.txt
  scpfleet send --from-list failed.txt pacs.example 104 --aec PACS"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "send",
        help="bulk-send Part 10 files or folders to an SCP, with retries",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="Part 10 files, or folders to walk recursively")
    add_target_arguments(parser)
    parser.add_argument(
        "--associations", "-A", type=positive_int, default=4, metavar="N",
        help="parallel associations (default 4)",
    )
    parser.add_argument(
        "--retries", type=non_negative_int, default=3, metavar="N",
        help="retries of a transient failure per file and per association (default 3)",
    )
    parser.add_argument(
        "--retry-delay", type=positive_float, default=0.5, metavar="S",
        help="first backoff pause in seconds, doubled on each retry (default 0.5)",
    )
    parser.add_argument("--from-list", metavar="FILE", action="append", default=[],
                        help="also send the paths listed in FILE, one per line")
    parser.add_argument("--failed-list", metavar="FILE",
                        help="write the paths that failed to FILE, one per line")
    parser.add_argument("--report", metavar="FILE", help="write the summary as JSON to FILE")
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="live progress line on stderr (default: when stderr is a terminal; "
        "otherwise a plain line every few seconds; --no-progress: none)",
    )
    parser.set_defaults(func=run)
    return parser


@dataclass
class Entry:
    """One file to send."""

    path: str
    sop_class: str
    transfer_syntax: str
    size: int
    attempts: int = 0


def read_list(path: str) -> list[str]:
    """Paths listed in ``path``, one per line (blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as fobj:
            return [line.rstrip("\r\n") for line in fobj if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read list {path}: {exc.strerror or exc}") from None


def scan(paths: Sequence[str], warn: Any = None) -> tuple[list[Entry], list[tuple[str, str]]]:
    """(files to send, [(path, why skipped)]) reading each file's meta and the head of
    its data set (its SOP UIDs). ``warn(text)`` hears of a File Meta whose UIDs differ
    from the data set's (the data set's are used)."""
    entries: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in iter_files(paths):
        if path in seen:
            continue
        seen.add(path)
        try:
            meta = read_file_meta(path)
            size = os.path.getsize(path) - meta.dataset_offset
            with open(path, "rb") as fobj:
                fobj.seek(meta.dataset_offset)
                head = fobj.read(HEAD_BYTES)
        except (NotDicomError, OSError) as exc:
            skipped.append((path, f"not DICOM: {exc}"))
            continue
        sop_class, sop_instance = read_sop_uids(head, meta.transfer_syntax_uid)
        meta_class = meta.media_storage_sop_class_uid
        meta_instance = meta.media_storage_sop_instance_uid
        if warn is not None and ((sop_class and meta_class and sop_class != meta_class) or (
                sop_instance and meta_instance and sop_instance != meta_instance)):
            warn(f"{path}: the File Meta names {meta_class} / {meta_instance} but the data "
                 f"set {sop_class} / {sop_instance}; sending the data set's")
        sop_class = sop_class or meta_class
        if not sop_class or not (sop_instance or meta_instance):
            skipped.append((path, "no SOP Class/Instance UID in the data set or the meta"))
            continue
        entries.append(Entry(path, sop_class, meta.transfer_syntax_uid, size))
    return entries, skipped


def group_files(entries: Sequence[Entry],
                limit: int = MAX_CONTEXTS) -> list[tuple[list[tuple[str, str]], list[Entry]]]:
    """Split the files so each group needs at most ``limit`` presentation contexts.

    Returns [(pairs, files)]: pairs sorted by SOP class, so one class's syntaxes stay
    together; files in their original order within a group.
    """
    by_pair: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        by_pair.setdefault((entry.sop_class, entry.transfer_syntax), []).append(entry)
    pairs = sorted(by_pair)
    groups = []
    for start in range(0, len(pairs), limit):
        chunk = pairs[start:start + limit]
        wanted = set(chunk)
        files = [e for e in entries if (e.sop_class, e.transfer_syntax) in wanted]
        groups.append((chunk, files))
    return groups


class _Sender:
    """Sends every group with ``--associations`` tasks; keeps the tallies."""

    def __init__(self, args: argparse.Namespace, total: int, progress: Progress | None):
        self.args = args
        self.total = total
        self.progress = progress
        self.tally = _report.Tally()
        self.failed: list[tuple[str, str]] = []
        self.sent: set[str] = set()
        self.retries = 0
        #: Failed association attempts by cause, with the first words seen for each.
        self.assoc_failures: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self.queue: collections.deque[Entry] = collections.deque()
        self.active = 0
        self.stopping = False
        self._stop_event: asyncio.Event | None = None
        self.start = 0.0

    def backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.args.retry_delay * 2 ** (attempt - 1))

    def stop(self) -> None:
        """Ctrl-C: finish the C-STOREs under way, send nothing more, release."""
        self.stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if asked to stop."""
        assert self._stop_event is not None  # created by run()
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def fail(self, entry: Entry, reason: str) -> None:
        self.failed.append((entry.path, reason))
        self.tally.failed += 1

    async def run(self, groups: list[tuple[list[tuple[str, str]], list[Entry]]]) -> None:
        self.start = time.monotonic()
        self._stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._tick()) if self.progress is not None else None
        try:
            for pairs, files in groups:
                if self.stopping:
                    break
                contexts = [build_context(sop, [ts]) for sop, ts in pairs]
                config = requestor_config(self.args, contexts)
                self.queue = collections.deque(files)
                workers = min(self.args.associations, len(files))
                self.active = workers
                await asyncio.gather(*(self._worker(config) for _ in range(workers)))
        finally:
            if ticker is not None:
                ticker.cancel()

    async def _tick(self) -> None:
        progress = self.progress
        assert progress is not None  # only started with a progress line
        progress.rate(0, self.start)
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if not progress.due(now):
                continue
            elapsed = now - self.start
            done = self.tally.ok + self.tally.failed
            rate = progress.rate(done, now)
            mbps = self.tally.bytes / 1e6 / elapsed if elapsed > 0 else 0.0
            extra = f"  retries {self.retries}" if self.retries else ""
            progress.show(_report.progress_text(
                done, self.total, self.tally.failed, elapsed, rate, mbps, extra), now)

    async def _worker(self, config: aio.RequestorConfig) -> None:
        args = self.args
        assoc: aio.Association | None = None
        assoc_failures = 0
        try:
            while self.queue and not self.stopping:
                entry = self.queue.popleft()
                while assoc is None:
                    outcome = await open_association(args.host, args.port, config)
                    if outcome.assoc is not None:
                        assoc, assoc_failures = outcome.assoc, 0
                        self.tally.associations += 1
                        self.tally.setup.record(outcome.setup_s)
                        break
                    assoc_failures += 1
                    cause = outcome.cause
                    self.assoc_failures[cause] = self.assoc_failures.get(cause, 0) + 1
                    self.reasons.setdefault(cause, outcome.reason)
                    limit = association_retry_limit(cause, outcome.transient, args.retries)
                    if cause in ("aborted", "timeout"):
                        self.report(f"association to {args.host}:{args.port}: "
                                    f"{outcome.reason}"
                                    + ("; trying once more" if assoc_failures <= limit else ""))
                    if assoc_failures > limit:
                        self._give_up(entry, outcome.reason)
                        return
                    self.retries += 1
                    await self._pause(self.backoff(assoc_failures))
                    if self.stopping:
                        self.queue.appendleft(entry)
                        return
                verdict, reason, lost = await self._store(assoc, entry)
                if lost:
                    assoc = None
                if verdict == "ok":
                    continue
                limit = {"retry": args.retries,
                         "aborted": min(args.retries, ABORT_RETRIES)}.get(verdict, 0)
                if verdict in ("aborted", "timeout"):
                    self.report(f"{entry.path}: {reason}"
                                + ("; trying once more" if entry.attempts < limit else ""))
                if entry.attempts < limit:
                    entry.attempts += 1
                    self.retries += 1
                    await self._pause(self.backoff(entry.attempts))
                    self.queue.appendleft(entry)
                    continue
                self.fail(entry, reason)
        except asyncio.CancelledError:  # a second Ctrl-C: end the association at once
            if assoc is not None:
                assoc.abort()
                assoc = None
            raise
        finally:
            self.active -= 1
            if assoc is not None and assoc.is_established:
                await assoc.release()

    def report(self, text: str) -> None:
        """Say at once, on stderr, what went wrong (the summary lists it again)."""
        if self.progress is not None:
            self.progress.clear()
        print(text, file=sys.stderr, flush=True)

    def _give_up(self, entry: Entry, reason: str) -> None:
        """This task cannot associate: leave the file to the others, or fail the rest."""
        self.queue.appendleft(entry)
        if self.active > 1:
            return  # the finally clause counts this task out
        while self.queue:
            self.fail(self.queue.popleft(), reason)

    async def _store(self, assoc: aio.Association, entry: Entry) -> tuple[str, str, bool]:
        """C-STORE one file: (verdict, reason, association lost); the verdict is "ok",
        "retry" (transient), "aborted" (the association ended while it was stored),
        "timeout" (no response in time) or "fail"."""
        start = time.perf_counter()  # loop.time() is millisecond-grained on uvloop
        try:
            rsp = await assoc.send_c_store(entry.path)
        except ValueError as exc:
            if "no accepted presentation context" in str(exc):
                return "fail", (
                    f"the SCP did not accept {uid_name(entry.sop_class)} in "
                    f"{uid_name(entry.transfer_syntax)}"
                ), False
            return "fail", str(exc), False
        except (NotDicomError, FileNotFoundError, PermissionError) as exc:
            return "fail", f"cannot read: {exc}", False  # raised before anything was sent
        except RuntimeError:  # the association ended while idle
            return "retry", rsp_cause(assoc)[1], True
        except OSError as exc:  # partway through a message: the association is unusable
            assoc.abort()
            return "fail", f"cannot read: {exc}", True
        status = rsp.get("Status")
        if status is None:
            cause, words = rsp_cause(assoc)
            return ("timeout" if cause == "timeout" else "aborted"), words, True
        category = status_category(status)
        if category in ("Success", "Warning"):
            self.tally.ok += 1
            self.tally.bytes += entry.size
            self.tally.latency.record(time.perf_counter() - start)
            self.sent.add(entry.path)
            if category == "Warning":
                self.tally.warn_status(status)
            return "ok", "", False
        words = f"status 0x{status:04X}: {status_description(status)}"
        comment = rsp.get("ErrorComment")
        if comment:
            words += f" ({comment})"
        if status >> 8 == 0xA7:
            return "retry", words, False
        return "fail", words, False


def association_retry_limit(cause: str, transient: bool, retries: int) -> int:
    """How many more association attempts a failure of ``cause`` is worth: ``retries``
    for a transient one (a refused connection, rejected-transient), one after an abort
    (:data:`ABORT_RETRIES`), none after a timeout (the peer does not answer) or a
    permanent rejection."""
    if cause == "aborted":
        return min(retries, ABORT_RETRIES)
    if cause == "timeout" or not transient:
        return 0
    return retries


def run(args: argparse.Namespace) -> int:
    """Entry point for ``scpfleet send``; returns the exit status."""
    check_target(args.host)
    quiet_engine(args.verbose)
    paths = list(args.paths)
    for listing in args.from_list:
        paths.extend(read_list(listing))
    if not paths:
        raise UsageError("nothing to send: give PATHs or --from-list FILE")
    entries, skipped = scan(paths, warn=lambda text: print(text, file=sys.stderr))
    for path, reason in skipped:
        print(f"skipping {path}: {reason}", file=sys.stderr)
    groups = group_files(entries)
    progress = None if args.progress is False else Progress(args.progress)
    sender = _Sender(args, len(entries), progress)
    started = time.monotonic()
    interrupted = _run_loop(sender, sender.run(groups))
    if progress is not None:
        progress.clear()
    duration = max(time.monotonic() - started, 1e-9)
    if interrupted:  # what was not sent counts as failed, so a rerun picks it up
        settled = sender.sent | {path for path, _ in sender.failed}
        for entry in entries:
            if entry.path not in settled:
                sender.fail(entry, "not sent: interrupted")
    summary = build_summary(args, sender, entries, skipped, groups, duration, interrupted)
    print(format_summary(summary))
    status = 0 if not sender.failed and not interrupted else 1
    if args.failed_list:
        try:
            with open(args.failed_list, "w", encoding="utf-8") as fobj:
                fobj.writelines(f"{path}\n" for path, _ in sender.failed)
        except OSError as exc:
            print(f"cannot write {args.failed_list}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
    if args.report:
        try:
            _report.write_json(args.report, summary)
        except OSError as exc:
            print(f"cannot write {args.report}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
    return 130 if interrupted else status


def _run_loop(sender: _Sender, main: Any) -> bool:
    """Run ``main`` on a fresh loop; True if interrupted.

    The first Ctrl-C asks ``sender`` to stop after the C-STOREs under way; a second one
    cancels everything (associations are aborted).
    """
    loop = aio.new_event_loop()
    task = loop.create_task(main)
    interrupts = []

    def on_sigint() -> None:
        interrupts.append(1)
        if len(interrupts) == 1:
            sender.stop()
        else:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on this platform
        pass
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for leftover in leftovers:
            leftover.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.close()
    return bool(interrupts)


def build_summary(args: argparse.Namespace, sender: _Sender, entries: list[Entry],
                  skipped: list[tuple[str, str]], groups: list, duration: float,
                  interrupted: bool) -> dict[str, Any]:
    tally = sender.tally
    return {
        "command": "send",
        "target": {"host": args.host, "port": args.port, "aec": args.aec, "aet": args.aet},
        "associations_per_group": args.associations,
        "groups": len(groups),
        "files": len(entries) + len(skipped),
        "dicom_files": len(entries),
        "sent": tally.ok,
        "failed": len(sender.failed),
        "skipped": len(skipped),
        "retries": sender.retries,
        "association_failures": dict(sorted(sender.assoc_failures.items())),
        "association_failure_reasons": dict(sorted(sender.reasons.items())),
        "bytes": tally.bytes,
        "duration_s": round(duration, 6),
        "instances_per_s": round(tally.ok / duration, 3),
        "mb_per_s": round(tally.bytes / 1e6 / duration, 3),
        "latency_ms": _report.latency_summary(tally.latency),
        "associations": tally.associations,
        "association_setup_ms": _report.latency_summary(tally.setup),
        "warnings_by_status": dict(sorted(tally.warnings_by_status.items())),
        "failures": [{"path": p, "reason": r} for p, r in sender.failed],
        "skipped_files": [{"path": p, "reason": r} for p, r in skipped],
        "interrupted": interrupted,
    }


def format_summary(summary: dict[str, Any]) -> str:
    t = summary["target"]
    lat = summary["latency_ms"]
    rows: list[tuple[str, Any]] = [
        ("target", f"{t['aec']}@{t['host']}:{t['port']} from {t['aet']}"),
        ("files", f"{summary['files']} found, {summary['dicom_files']} DICOM, "
                  f"{summary['skipped']} skipped"),
        ("sent", summary["sent"]),
        ("failed", summary["failed"]),
        ("retries", summary["retries"]),
        ("data", _report.format_bytes(summary["bytes"])),
        ("duration", _report.format_duration(summary["duration_s"])),
        ("throughput", f"{_report.format_count(summary['instances_per_s'])} files/s, "
                       f"{summary['mb_per_s']:.2f} MB/s"),
        ("C-STORE latency", f"p50 {lat['p50']:.2f} ms  p95 {lat['p95']:.2f} ms  "
                            f"max {lat['max']:.2f} ms"),
    ]
    for cause, n in summary["association_failures"].items():
        words = summary["association_failure_reasons"].get(cause, "")
        rows.append(("association failed", f"{cause}: {n} ({words})"))
    if summary["groups"] > 1:
        rows.append(("context groups", summary["groups"]))
    for key, n in summary["warnings_by_status"].items():
        rows.append(("warnings", f"{key}: {n}"))
    if summary["interrupted"]:
        rows.append(("note", "interrupted: the files not sent are in the failed list"))
    lines = ["scpfleet send summary", _report.format_table(rows)]
    for title, items in (("failed", summary["failures"]), ("skipped", summary["skipped_files"])):
        if not items:
            continue
        lines.append(f"{title}:")
        for item in items[:LIST_LIMIT]:
            lines.append(f"  {item['path']}: {item['reason']}")
        if len(items) > LIST_LIMIT:
            lines.append(f"  ... and {len(items) - LIST_LIMIT} more")
    return "\n".join(lines)
