"""``python -m bench.race``: copies of one instance racing over many associations.

Theory of operation: each *round* makes ``--copies`` different data sets of one new SOP
Instance UID (each with its own Patient ID and size; with ``--paths 2`` half of them
carry another Study Instance UID, so they land at another path) and sends them at the
same moment over as many associations to a fresh ``scpfleet serve`` node
(``--workers``, ``--duplicates``, ``--durability``; any checkout with
``--scpfleet-checkout``). With ``--kill worker`` one worker, with ``--kill node`` the whole
node, is killed with SIGKILL while the copies are in flight (the node is then started
again on the same storage). Once the node is quiet the round is judged from outside:
the index's row for the instance must describe the one file the storage holds for it
(path, size, and the Patient ID read back from the file), exactly one such file must
exist, and an instance a copy of which was acknowledged must have a row. A round that
breaks any of this is a *disagreement*.

It reads the index with plain SQL that every schema version answers and the files with
pydicom, so it judges old and new nodes alike; it only talks to servers it starts on
127.0.0.1 and stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from bench.common import UsageError, positive_int
from bench.corpus import make_dataset, make_uid
from bench.procs import Registry
from bench.servers import HOST, REPO, Launch, Node, RunError, start_scpfleet
from engine import aio, build_context
from engine.dataset import encode_dataset

__all__ = ["RaceResult", "race", "main"]

_EXPLICIT_LE = "1.2.840.10008.1.2.1"
# How long the node gets to become quiet (index caught up) after a round.
_SETTLE_S = 20.0
_POLL_S = 0.05
# When after the copies start a kill lands. A round lasts milliseconds on an idle machine
# and many times that on a loaded one, so the delay is not fixed: the first is half of
# how long an unkilled calibration round took (judged like the others, not counted in
# ``rounds``), and each later one follows what the previous kill found. A kill that found
# nothing acknowledged moves the next one later, one that found everything acknowledged
# moves it earlier, so the kills keep landing while copies are in flight. Each delay is
# jittered by a factor drawn per round from the run's seed.
_FIRST_KILL_FRACTION = 0.5
_KILL_LATER, _KILL_EARLIER = 1.6, 0.6
_KILL_JITTER = (0.7, 1.3)
_KILL_BOUNDS_S = (0.001, 2.0)


@dataclass
class RaceResult:
    rounds: int = 0
    disagreements: int = 0
    acknowledged: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "disagreements": self.disagreements,
                "acknowledged": self.acknowledged, "failed": self.failed,
                "problems": self.problems[:50]}


def _copies(round_no: int, copies: int, paths: int, seed: int) -> tuple[str, list[tuple[str, bytes]]]:
    """A new instance's UID and ``copies`` encodings of it: (SOP Class UID, data set)."""
    base = make_dataset("tiny", seed=seed + round_no)
    uid = make_uid("race", seed, round_no, time.time_ns())
    studies = [make_uid("race-study", seed, round_no, p, time.time_ns()) for p in range(paths)]
    series = [make_uid("race-series", seed, round_no, p, time.time_ns()) for p in range(paths)]
    out = []
    for k in range(copies):
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = studies[k % paths]
        ds.SeriesInstanceUID = series[k % paths]
        ds.PatientID = f"COPY{k}"
        ds.ImageComments = "x" * (16 * k)  # each copy a different size
        out.append((str(ds.SOPClassUID), encode_dataset(ds, _EXPLICIT_LE)))
    return str(uid), out


async def _send_all(port: int, uid: str, copies: list[tuple[str, bytes]]) -> list[int | None]:
    async def one(sop_class: str, data: bytes) -> int | None:
        config = aio.RequestorConfig(
            calling_ae_title=b"RACE".ljust(16), called_ae_title=b"SCPFLEET".ljust(16),
            contexts=[build_context(sop_class, _EXPLICIT_LE)],
            implementation_class_uid="1.2.826.0.1.3680043.8.498.77",
            acse_timeout=10, dimse_timeout=10, network_timeout=10,
        )
        assoc = await aio.associate(HOST, port, config)
        if not assoc.is_established:
            return None
        try:
            rsp = await assoc.send_c_store_raw(sop_class, uid, _EXPLICIT_LE, data)
        except (RuntimeError, ValueError):
            rsp = None
        if assoc.is_established:
            await assoc.release()
        else:
            assoc.abort()
        return None if rsp is None else rsp.status

    return await asyncio.gather(*(one(cls, data) for cls, data in copies))


def _index_row(index: Path, uid: str) -> tuple[str, int] | None:
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        row = db.execute("SELECT path, size FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    return (str(row[0]), int(row[1])) if row else None


def _files_of(store: Path, uid: str) -> list[Path]:
    return [p for p in store.glob(f"*/*/{uid}.dcm")]


def _judge(store: Path, uid: str, acknowledged: bool) -> str | None:
    """None when index and disk agree for ``uid``, else what is wrong."""
    files = _files_of(store, uid)
    row = _index_row(store / "index.sqlite", uid)
    if len(files) > 1:
        return f"{uid}: {len(files)} files"
    if row is None:
        if files:
            return f"{uid}: a file without a row"
        return f"{uid}: acknowledged but neither file nor row" if acknowledged else None
    path, size = row
    if not files:
        return f"{uid}: a row without its file"
    actual = files[0]
    if actual.relative_to(store).as_posix() != path:
        return f"{uid}: row at {path}, file at {actual.relative_to(store)}"
    if actual.stat().st_size != size:
        file_patient = pydicom.dcmread(actual, stop_before_pixels=True).PatientID
        return f"{uid}: row says {size} bytes, the file ({file_patient}) has {actual.stat().st_size}"
    return None


def _settled(store: Path, uid: str, acknowledged: bool, deadline: float) -> str | None:
    verdict = _judge(store, uid, acknowledged)
    while verdict is not None and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        verdict = _judge(store, uid, acknowledged)
    return verdict


def _pids(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "ready.json").read_text())
    except (OSError, ValueError):
        return {}


def race(
    folder: Path,
    *,
    rounds: int,
    copies: int = 8,
    paths: int = 1,
    workers: int = 2,
    duplicates: str = "overwrite",
    durability: str = "none",
    kill: str = "none",
    checkout: Path | None = REPO,
    python: str = sys.executable,
    seed: int = 0,
) -> RaceResult:
    """Run ``rounds`` rounds against a node started in ``folder`` (see the module doc)."""
    result = RaceResult()
    registry = Registry()
    launch = Launch(folder=folder, registry=registry)
    node = Node(python=python, checkout=checkout, workers=workers, durability=durability,
                args=("--duplicates", duplicates, "--log-level", "error"))
    running = start_scpfleet(launch, node)
    try:
        delay = 0.0
        if kill != "none":
            uid, sends = _copies(rounds, copies, paths, seed)  # a round number no round uses
            started = time.monotonic()
            statuses = asyncio.run(_race_round(running, uid, sends, folder, "none", 0.0))
            delay = _FIRST_KILL_FRACTION * (time.monotonic() - started)
            verdict = _settled(launch.store, uid, any(s == 0 for s in statuses), time.monotonic() + _SETTLE_S)
            if verdict is not None:
                result.disagreements += 1
                result.problems.append(f"calibration round: {verdict}")
        jitter = random.Random(seed)
        for round_no in range(rounds):
            uid, sends = _copies(round_no, copies, paths, seed)
            delay = min(max(delay, _KILL_BOUNDS_S[0]), _KILL_BOUNDS_S[1])
            statuses = asyncio.run(_race_round(running, uid, sends, folder, kill,
                                               delay * jitter.uniform(*_KILL_JITTER), round_no))
            acknowledged = any(s == 0 for s in statuses)
            result.acknowledged += sum(1 for s in statuses if s == 0)
            result.failed += sum(1 for s in statuses if s != 0)
            if not acknowledged:
                delay *= _KILL_LATER
            elif all(s == 0 for s in statuses):
                delay *= _KILL_EARLIER
            if kill == "node":
                running.proc.kill()  # (already dead: reaps the group)
                (folder / "ready.json").unlink(missing_ok=True)  # the new node writes its own
                running = start_scpfleet(launch, node)
            verdict = _settled(launch.store, uid, acknowledged, time.monotonic() + _SETTLE_S)
            result.rounds += 1
            if verdict is not None:
                result.disagreements += 1
                result.problems.append(verdict)
    finally:
        running.stop()
        registry.stop_all()
    return result


async def _race_round(running: Any, uid: str, sends: list[tuple[str, bytes]], folder: Path,
                      kill: str, delay: float, round_no: int = 0) -> list[int | None]:
    """Send the copies; with ``kill``, kill ``delay`` seconds after they start (the
    ``round_no``-th worker, in turn, with ``worker``)."""
    task = asyncio.ensure_future(_send_all(running.port, uid, sends))
    if kill == "node":
        await asyncio.sleep(delay)
        running.proc.send_signal(signal.SIGKILL, group=True)
    if kill == "worker":
        await asyncio.sleep(delay)
        pids = list((_pids(folder).get("workers") or {}).values())
        victim = pids[round_no % len(pids)] if pids else None
        if victim:
            try:
                os.kill(int(victim), signal.SIGKILL)
            except ProcessLookupError:
                pass
    return await task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.race",
        description="Send copies of one instance at once over many associations, round "
                    "after round, and count the rounds whose index and disk disagree.")
    parser.add_argument("--rounds", type=positive_int, default=43, help="rounds (default 43)")
    parser.add_argument("--copies", type=positive_int, default=8,
                        help="copies (and associations) per round (default 8)")
    parser.add_argument("--paths", type=positive_int, default=1, choices=(1, 2),
                        help="2: half the copies carry another Study UID (default 1)")
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--duplicates", choices=("overwrite", "keep", "reject"), default="overwrite")
    parser.add_argument("--durability", choices=("none", "fsync", "batch"), default="none")
    parser.add_argument("--kill", choices=("none", "worker", "node"), default="none",
                        help="SIGKILL a worker or the whole node while copies are in flight")
    parser.add_argument("--scpfleet-checkout", type=Path, default=REPO, metavar="DIR",
                        help="run the node of this checkout (default: this one)")
    parser.add_argument("--scpfleet-python", default=sys.executable, metavar="PATH")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scpfleet-race-") as tmp:
        try:
            result = race(Path(tmp), rounds=args.rounds, copies=args.copies, paths=args.paths,
                          workers=args.workers, duplicates=args.duplicates,
                          durability=args.durability, kill=args.kill,
                          checkout=args.scpfleet_checkout, python=args.scpfleet_python)
        except (RunError, UsageError) as exc:
            print(f"race: error: {exc}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"{result.disagreements} of {result.rounds} rounds disagreed "
              f"({result.acknowledged} copies acknowledged, {result.failed} not)")
        for problem in result.problems[:10]:
            print(f"  {problem}")
    return 1 if result.disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
