"""``python -m bench.cpucost``: server CPU time and system calls per stored instance.

Theory of operation: one command measures, side by side on the same files in the same
run, what storing one instance costs each server: ``scpfleet serve`` (2 workers,
durability none, the index on), DCMTK ``storescp --fork``, Orthanc (Debian's, its own
configuration) and pynetdicom's ``storescp``; optionally a second ``scpfleet serve``
(another checkout, interpreter or flags: ``scpfleet-b``). The files (tiny ~2 kB
instances and 512x512x16 CT slices, bench.corpus) are written once to tmpfs; each run
starts one server fresh on a 127.0.0.1 ephemeral port with its storage on tmpfs,
inside its own cgroup (bench.cputime; a /proc fallback where none can be made), waits
until it is idle, reads its CPU, sends every file with 4 DCMTK ``storescu`` processes
(one association each, TCP_NODELAY=1: the same client for every server), waits until
the server is idle again (what follows the last response, such as indexing, counts),
reads its CPU again, counts what it stored and stops it (its whole process group,
then whatever is left in its cgroup). Beside each read it also snapshots every live
process of the tree (bench.cputime.process_times): for an scpfleet node the report
splits the total over its supervisor, listener, workers and indexer. A run passes only
if every storescu exited 0 (every C-STORE acknowledged) and the server stored exactly
the files sent; a failed run is reported with its reason, never as a number.

Order: for each repeat, for each load, every server in turn, rotated by one each repeat
(drift on a shared machine hits all alike). With ``--syscalls``, after the CPU runs,
each (load, server) gets two more fresh starts with ``strace -f -c`` attached to its
whole tree (bench.syscalls): one sending N instances and one sending 4 (one per
association); the difference over N - 4 is the system calls per instance, by name.
strace slows the server, so CPU is never read while it is attached.

Output: a markdown table per load (CPU ms per instance, user / system / total, CPU ms
per MB, system calls per instance, each server over storescp --fork and over Orthanc)
and the node's CPU per instance by process, on stdout and in ``--out``/cpucost.md, and
cpucost.json (every run, the medians, the machine, the versions, the method). Ctrl-C or
SIGTERM stops every process started here and writes nothing. Nothing here talks to
anything but 127.0.0.1 or writes a machine path into its results.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cputime, servers, syscalls
from bench.clients import Prepared, prepare, run_storescu
from bench.common import OneLineParser, choice_list, positive_int
from bench.machine import checkout_commit, command_text, first_line, machine_info
from bench.procs import Registry
from bench.servers import MAX_PDU, REPO, Node, RunError

__all__ = ["main", "build_parser", "LOADS", "summarize", "render_markdown"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Concurrent associations, one storescu process each, for every server.
ASSOCIATIONS = 4
#: Workers of the scpfleet node measured (the machine this was made for has 2 CPUs).
WORKERS = 2
#: Instances of the small --syscalls run: one per association, so association set-up
#: and release are the same in both runs and cancel out.
SMALL = ASSOCIATIONS
#: Data and storage live in memory (tmpfs): 10000 CT slices are 5 GB.
MAX_COUNT = 10_000
#: Seconds one client run may take (a hang fails the run, not the benchmark).
RUN_TIMEOUT_S = 300.0
#: Seconds a server may take to become idle before and after a load (its start, the
#: indexing that follows the last response); past it the run goes on, marked unsettled.
SETTLE_LIMIT_S = 10.0


@dataclass(frozen=True)
class Load:
    key: str
    label: str
    count: int  # default instances per run
    quick: int  # with --quick
    traced: int  # at most this many in a --syscalls run (strace slows the server)


#: Default counts: enough CPU per run (a few hundred ms for the cheapest server) that
#: the kernel's tick-sampled user/system split means something.
LOADS: dict[str, Load] = {
    "tiny": Load("tiny", "tiny (~2 kB)", 2000, 200, 400),
    "ct": Load("ct", "CT 512x512x16 (~0.5 MB)", 300, 40, 80),
}


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    kind: str  # bench.servers.KINDS
    node: Node | None = None
    #: How it runs, in words for the results (no machine paths).
    detail: str = ""


class Interrupted(Exception):
    """SIGTERM arrived (Ctrl-C arrives as KeyboardInterrupt)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


#: Every process group this command started and has not stopped yet.
LIVE = Registry()
#: Every meter (cgroup) opened and not closed yet.
METERS: set[cputime.Meter] = set()

# ---------------------------------------------------------------------------------------
# The servers


def _installed_checkout(python: str) -> Path | None:
    """The folder ``python``'s scpfleet comes from (its checkout, for its commit)."""
    code = ("import os, workers; "
            "print(os.path.dirname(os.path.dirname(os.path.abspath(workers.__file__))))")
    found = first_line([python, "-c", code])
    return Path(found) if found and os.path.isdir(found) else None


def _variant(opts: argparse.Namespace) -> Server | None:
    """scpfleet-b: another checkout, another interpreter's scpfleet or other flags."""
    if not (opts.scpfleet_checkout or opts.scpfleet_python or opts.scpfleet_args or opts.scpfleet_env):
        return None
    args = tuple(shlex.split(opts.scpfleet_args or ""))
    env = tuple((name, value) for name, _, value in (item.partition("=") for item in opts.scpfleet_env))
    checkout = opts.scpfleet_checkout.resolve() if opts.scpfleet_checkout else None
    # abspath, not resolve: a virtualenv's python is a symlink that must stay one.
    python = os.path.abspath(opts.scpfleet_python) if opts.scpfleet_python else None
    if python is None and checkout is not None and (checkout / ".venv/bin/python").exists():
        python = str(checkout / ".venv/bin/python")
    if checkout is not None:
        where, source = "another checkout", checkout
    elif python is not None:
        where, source = "another interpreter's scpfleet", _installed_checkout(python)
    else:
        where, source, checkout = "this checkout", REPO, REPO
    commit = (checkout_commit(source) if source else None) or "unknown commit"
    flags = ("--workers", str(WORKERS), "--durability", "none", *args)
    shown = "".join(f", {' '.join(words)}" for words in (args, opts.scpfleet_env) if words)
    node = Node(python=python or sys.executable, checkout=checkout, workers=WORKERS,
                durability="none", args=args, env=env)
    environment = "".join(f" with {item}" for item in opts.scpfleet_env)
    version = first_line([python, "-c", "import platform; print(platform.python_version())"]) if python else None
    interpreter = f", Python {version}" if version else ""
    return Server("scpfleet-b", f"scpfleet B ({WORKERS}w, none{shown})", "scpfleet", node,
                  f"{where} ({commit}{interpreter}), serve {' '.join(flags)}{environment}")


def build_servers(opts: argparse.Namespace) -> list[Server]:
    """scpfleet, its variant B when one was asked for, storescp, Orthanc, pynetdicom."""
    ours = Server("scpfleet", f"scpfleet serve ({WORKERS}w, none)", "scpfleet",
                  Node(workers=WORKERS, durability="none"),
                  f"this checkout ({checkout_commit(REPO)}), serve --workers {WORKERS} "
                  "--durability none")
    variant = _variant(opts)
    return [ours, *([variant] if variant else []),
            Server("storescp", "storescp --fork", "storescp",
                   detail="DCMTK storescp --fork +B +xa -dhl (never syncs)"),
            Server("orthanc", "Orthanc", "orthanc",
                   detail="Debian's Orthanc, its own configuration: storage and index on "
                   "tmpfs, no plugins (syncs each file: SyncStorageArea)"),
            Server("pynetdicom", "pynetdicom storescp", "pynetdicom",
                   detail="pynetdicom's storescp app (python -m pynetdicom storescp)")]


def server_keys(variant: bool) -> list[str]:
    return ["scpfleet"] + (["scpfleet-b"] if variant else []) + ["storescp", "orthanc",
                                                                  "pynetdicom"]


def tmpfs_folder() -> tuple[Path | None, str]:
    """A tmpfs mount for the data and the servers' storage: (folder, in words)."""
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == "/dev/shm" and fields[2] == "tmpfs":
                if os.access("/dev/shm", os.W_OK):
                    return Path("/dev/shm"), "tmpfs"
    except OSError:
        pass
    return None, "the temporary folder's file system (no writable tmpfs at /dev/shm)"


# ---------------------------------------------------------------------------------------
# One run


_seq = iter(range(1, 1 << 30))


def _meter(opts: argparse.Namespace) -> cputime.Meter:
    meter = cputime.open_meter(f"scpfleet-cpucost-{os.getpid()}-{next(_seq)}",
                               method=opts.method)
    METERS.add(meter)
    return meter


def _close(running: servers.Running | None, meter: cputime.Meter | None) -> None:
    """Stop the server (its process group), then empty and remove its cgroup."""
    try:
        if running is not None:
            running.stop()
    finally:
        if meter is not None:
            meter.close()
            METERS.discard(meter)


def _start(server: Server, folder: Path, meter: cputime.Meter) -> servers.Running:
    launch = servers.Launch(folder, MAX_PDU, storage=folder / "store", prefix=meter.prefix,
                            registry=LIVE)
    running = servers.start(server.kind, launch, server.node)
    meter.attach(running.proc.pid)
    return running


def _check(running: servers.Running, data: Prepared, error: str | None) -> tuple[int | None, str | None]:
    """(stored, why the run failed or None)."""
    if running.proc.poll() is not None:
        return None, error or (f"server exited during the run (status {running.proc.poll()}): "
                               f"{running.tail(200)}")
    stored = running.count_stored(data.count)
    if error:
        return stored, error
    if stored != data.count:
        return stored, f"stored {stored} files, expected {data.count}"
    return stored, None


def _scrub(text: str, work: Path) -> str:
    """No machine paths in results."""
    return " ".join(text.replace(str(work), "<work>").replace(str(REPO), "<repo>").split())[:400]


def measure_cpu(server: Server, data: Prepared, folder: Path, repeat: int,
                opts: argparse.Namespace) -> dict[str, Any]:
    """Start ``server`` fresh, send ``data``, stop it: one record."""
    rec: dict[str, Any] = {
        "repeat": repeat, "load": data.kind, "server": server.key, "expected": data.count,
        "ok": False, "reason": None, "stored": None, "wall_s": None, "start_s": None,
        "cpu_us": None, "cpu_ms_per_instance": None, "cpu_ms_per_mb": None,
        "idle_cpu_ms_per_s": None, "settled": None, "loadavg": round(os.getloadavg()[0], 2),
        "processes": None,
    }
    folder.mkdir(parents=True)
    meter = None
    running = None
    try:
        meter = _meter(opts)
        t0 = time.monotonic()
        running = _start(server, folder, meter)
        rec["start_s"] = round(time.monotonic() - t0, 3)
        settled_before, idle = cputime.settle(meter, SETTLE_LIMIT_S)
        before = meter.read()
        processes_before = cputime.process_times(meter.pids())
        run = run_storescu(data, running, ASSOCIATIONS, folder, MAX_PDU, opts.run_timeout,
                           LIVE)
        settled_after, _ = cputime.settle(meter, SETTLE_LIMIT_S)
        cpu = meter.read() - before
        processes = cputime.by_name(processes_before, cputime.process_times(meter.pids()))
        leader = processes_before.get(running.proc.pid)
        stored, reason = _check(running, data, run.error)
        n, mb = data.count, data.bytes / 1e6
        rec.update(
            stored=stored, reason=reason, ok=reason is None, wall_s=round(run.wall_s, 4),
            idle_cpu_ms_per_s=round(idle, 3), settled=settled_before and settled_after,
            cpu_us={"user": round(cpu.user_us), "system": round(cpu.system_us),
                    "total": round(cpu.total_us)},
        )
        if rec["ok"]:
            rec["cpu_ms_per_instance"] = {
                "user": round(cpu.user_us / 1000 / n, 4),
                "system": round(cpu.system_us / 1000 / n, 4),
                "total": round(cpu.total_us / 1000 / n, 4)}
            rec["cpu_ms_per_mb"] = round(cpu.total_us / 1000 / mb, 3)
            # The server's first process is its supervisor or parent whatever its name.
            rec["processes"] = {
                (LEADER if leader is not None and name == leader.name and count == 1 else name): {
                    "count": count, "user_us": round(spent.cpu.user_us / n, 2),
                    "system_us": round(spent.cpu.system_us / n, 2),
                    "run_us": round(spent.run_us / n, 2)}
                for name, (count, spent) in sorted(processes.items())}
    except (RunError, OSError) as exc:
        rec["reason"] = str(exc)
    finally:
        _close(running, meter)
        shutil.rmtree(folder, ignore_errors=True)
        if rec["reason"]:
            rec["reason"] = _scrub(rec["reason"], opts.work)
    return rec


def count_calls(server: Server, data: Prepared, folder: Path,
                opts: argparse.Namespace) -> tuple[dict[str, int] | None, str | None]:
    """Start ``server`` fresh, attach strace to its tree, send ``data``, stop it:
    (calls per syscall name, or None and why not)."""
    folder.mkdir(parents=True)
    meter = None
    running = None
    trace = None
    try:
        meter = _meter(opts)
        running = _start(server, folder, meter)
        cputime.settle(meter, SETTLE_LIMIT_S)
        trace = syscalls.SyscallCount(meter.pids(), folder, "strace", LIVE)
        run = run_storescu(data, running, ASSOCIATIONS, folder, MAX_PDU, opts.run_timeout,
                           LIVE)
        cputime.settle(meter, SETTLE_LIMIT_S)
        calls, trace = trace.finish(), None
        _, reason = _check(running, data, run.error)
        return (None, reason) if reason else (calls, None)
    except (RunError, OSError) as exc:
        return None, _scrub(str(exc), opts.work)
    finally:
        if trace is not None:
            trace.proc.stop(grace=2.0)
        _close(running, meter)
        shutil.rmtree(folder, ignore_errors=True)


def measure_syscalls(server: Server, data: Prepared, folder: Path,
                     opts: argparse.Namespace) -> dict[str, Any]:
    """System calls per instance: a run of N instances minus a run of :data:`SMALL`."""
    n = min(data.count, LOADS[data.kind].traced)
    rec: dict[str, Any] = {"load": data.kind, "server": server.key, "instances": [n, SMALL],
                           "ok": False, "reason": None, "calls": None,
                           "per_instance": None, "per_instance_total": None}
    if n <= SMALL:
        rec["reason"] = f"needs more than {SMALL} instances (--count)"
        return rec
    big = Prepared(data.kind, n, data.folder, data.files[:n],
                   sum(f.stat().st_size for f in data.files[:n]), data.profile)
    small = Prepared(data.kind, SMALL, data.folder, data.files[:SMALL],
                     sum(f.stat().st_size for f in data.files[:SMALL]), data.profile)
    calls_small, why = count_calls(server, small, folder / "small", opts)
    calls_big = None
    if why is None:
        calls_big, why = count_calls(server, big, folder / "big", opts)
    if why is not None or calls_big is None or calls_small is None:
        rec["reason"] = why
        return rec
    per = syscalls.per_instance(calls_big, calls_small, n, SMALL)
    rec.update(ok=True, calls={"big": calls_big, "small": calls_small}, per_instance=per,
               per_instance_total=round(sum(per.values()), 2))
    return rec


# ---------------------------------------------------------------------------------------
# The run


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_all(opts: argparse.Namespace, chosen: list[Server],
            datasets: dict[str, Prepared]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    seq = iter(range(1 << 30))
    total = opts.repeat * len(datasets) * len(chosen)
    for repeat in range(opts.repeat):
        shift = repeat % len(chosen)
        order = chosen[shift:] + chosen[:shift]
        for key, data in datasets.items():
            for server in order:
                rec = measure_cpu(server, data, opts.work / "runs" / f"{next(seq):05d}",
                                  repeat, opts)
                records.append(rec)
                head = f"[{len(records)}/{total}] {key} -> {server.key}:"
                if rec["ok"]:
                    per = rec["cpu_ms_per_instance"]
                    _progress(f"{head} {per['total']:.3f} ms/instance (user {per['user']:.3f}"
                              f", system {per['system']:.3f}), {rec['wall_s']:.2f} s")
                else:
                    _progress(f"{head} FAILED: {rec['reason']}")
    traced: list[dict[str, Any]] = []
    if opts.syscalls:
        for key, data in datasets.items():
            for server in chosen:
                rec = measure_syscalls(server, data, opts.work / "runs" / f"{next(seq):05d}",
                                       opts)
                traced.append(rec)
                head = f"[syscalls] {key} -> {server.key}:"
                _progress(f"{head} {rec['per_instance_total']} calls/instance" if rec["ok"]
                          else f"{head} FAILED: {rec['reason']}")
    return records, traced


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _processes(good: list[dict[str, Any]]) -> dict[str, dict[str, float | None]] | None:
    """Per process name: the medians over the passing runs of its CPU per instance (µs)
    and of how many such processes there were."""
    names = sorted({name for r in good for name in (r.get("processes") or {})})
    if not names:
        return None
    found = {}
    for name in names:
        runs = [r["processes"][name] for r in good if name in (r.get("processes") or {})]
        found[name] = {
            "count": _median([p["count"] for p in runs]),
            "user_us": _median([p["user_us"] for p in runs]),
            "system_us": _median([p["system_us"] for p in runs]),
            "run_us": _median([p["run_us"] for p in runs]),
        }
    return found


def summarize(records: list[dict[str, Any]], traced: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (load, server): medians of the passing runs, the system calls, and
    the total over storescp's, Orthanc's and scpfleet's in the same load."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        row = rows.setdefault((rec["load"], rec["server"]), {
            "load": rec["load"], "server": rec["server"], "runs": 0, "passed": 0,
            "reasons": [], "_good": []})
        row["runs"] += 1
        if rec["ok"]:
            row["passed"] += 1
            row["_good"].append(rec)
        elif rec["reason"] not in row["reasons"]:
            row["reasons"].append(rec["reason"])
    calls = {(t["load"], t["server"]): t for t in traced}
    for row in rows.values():
        good = row.pop("_good")
        per = {part: _median([r["cpu_ms_per_instance"][part] for r in good])
               for part in ("user", "system", "total")}
        totals = [r["cpu_ms_per_instance"]["total"] for r in good]
        row["cpu_ms_per_instance"] = per
        row["cpu_ms_per_instance_range"] = [min(totals), max(totals)] if totals else None
        row["cpu_ms_per_mb"] = _median([r["cpu_ms_per_mb"] for r in good])
        row["wall_s"] = _median([r["wall_s"] for r in good])
        row["processes"] = _processes(good)
        trace = calls.get((row["load"], row["server"]))
        row["syscalls_per_instance"] = trace["per_instance_total"] if trace else None
        row["syscalls_top"] = dict(list(trace["per_instance"].items())[:8]) \
            if trace and trace["ok"] else None
        row["syscalls_reason"] = trace["reason"] if trace and not trace["ok"] else None
    for row in rows.values():
        for peer in ("storescp", "orthanc", "scpfleet"):
            other = rows.get((row["load"], peer))
            mine = row["cpu_ms_per_instance"]["total"]
            theirs = other["cpu_ms_per_instance"]["total"] if other else None
            row[f"ratio_vs_{peer}"] = round(mine / theirs, 3) if mine and theirs else None
    return list(rows.values())


# ---------------------------------------------------------------------------------------
# The report


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


#: The key of the server's first process (the one started) in a run's ``processes``.
LEADER = "(leader)"
#: What each of the node's processes is, by the name it gives itself (15 bytes at most).
PROCESS_ROLES = {
    LEADER: "supervisor",
    "scpfleet-listen": "listener",
    "scpfleet-worker": "workers",
    "scpfleet-indexe": "indexer",
}


def _render_processes(w: Any, result: dict[str, Any], labels: dict[str, str]) -> None:
    """Where an scpfleet node's CPU goes: its processes, by role, per instance."""
    rows = [r for r in result["summary"] if r.get("processes") and labels.get(r["server"])
            and r["server"].startswith("scpfleet")]
    if not rows:
        return
    w("## Where the node's CPU goes, per process")
    w("")
    w("Over the same window as the tables above, each live process of the node, by role: "
      "`total` is the scheduler's exact time on a CPU (/proc/PID/task/*/schedstat), user and "
      "system the kernel's tick-sampled split (/proc/PID/stat), rough for small runs; "
      "medians of the passing runs. `rest` is the tree's total less the processes' "
      "(threads or processes that ended in the window).")
    w("")
    w("| Load | Server | process | count | user µs/instance | system µs/instance | total µs/instance |")
    w("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        counted = 0.0
        order = sorted(r["processes"].items(), key=lambda item: -(item[1]["run_us"] or 0.0))
        for name, p in order:
            counted += p["run_us"] or 0.0
            w(f"| {LOADS[r['load']].label} | {labels[r['server']]} | "
              f"{PROCESS_ROLES.get(name, name)} | {_num(p['count'], 0)} | "
              f"{_num(p['user_us'], 1)} | {_num(p['system_us'], 1)} | {_num(p['run_us'], 1)} |")
        tree = r["cpu_ms_per_instance"]["total"]
        if tree is not None:
            w(f"| {LOADS[r['load']].label} | {labels[r['server']]} | rest | | | | "
              f"{tree * 1000 - counted:.1f} |")
    w("")


def render_markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    labels = {s["key"]: s["label"] for s in cfg["servers"]}
    out: list[str] = []
    w = out.append
    w("# CPU per stored instance: scpfleet serve side by side")
    w("")
    w(f"Generated by `{cfg['command']}` on {m['date']}.")
    w("")
    w(f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB, {m['system']}; "
      f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')} "
      "(client and servers share the CPUs).")
    w(f"- Versions: scpfleet {m['scpfleet']} ({m['commit']}), Python {m['python']}, DCMTK "
      f"{m['dcmtk']}, pynetdicom {m['pynetdicom']} (pydicom {m['pydicom']}), "
      f"{m['orthanc'] or 'Orthanc: not installed'}"
      + (f", {m['strace']}" if m.get("strace") else "") + ".")
    w("- Servers: " + "; ".join(f"{s['label']}: {s['detail']}" for s in cfg["servers"]) + ".")
    w(f"- CPU: {cfg['method']['description']} (method `{cfg['method']['name']}`), read once "
      "the server is idle after its start and again once it is idle after the load, so "
      "work that follows the last response counts. Per instance = the difference over the "
      "instances sent; per MB = over the bytes of the files (10^6). The total is the "
      "scheduler's exact run time; the kernel splits it into user and system by sampling "
      "at each tick, so the split is rough for small runs.")
    w(f"- Client: {ASSOCIATIONS} DCMTK storescu processes at once (one association each, "
      "TCP_NODELAY=1, every file sent as stored), the same files for every server; each "
      f"run starts the server fresh, storage on {cfg['storage']}, {cfg['max_pdu']}-byte "
      "PDU, loopback only.")
    w(f"- {cfg['repeat']} repeat(s), servers rotated each repeat; numbers are medians of "
      "the passing runs (min-max of the total in brackets). A run passes only if every "
      "C-STORE was acknowledged and the server stored exactly the files sent.")
    if cfg["syscalls"]:
        w(f"- System calls: `strace -f -c` attached to the server's whole tree; a run of N "
          f"instances minus a run of {SMALL} (one per association) over N - {SMALL}.")
    w("")
    by = {(r["load"], r["server"]): r for r in result["summary"]}
    for key, (count, size) in cfg["loads"].items():
        w(f"## {LOADS[key].label}: {count} instances, {_num(size / 1e6, 2)} MB")
        w("")
        w("| Server | CPU ms/instance user | system | total | CPU ms per MB | "
          "syscalls/instance | vs storescp --fork | vs Orthanc |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for server in cfg["servers"]:
            r = by.get((key, server["key"]))
            if r is None:
                continue
            name = labels[server["key"]]
            if not r["passed"]:
                w(f"| {name} | FAILED | | | | | | |")
                continue
            per = r["cpu_ms_per_instance"]
            low, high = r["cpu_ms_per_instance_range"]
            total = f"{_num(per['total'])} ({_num(low)}-{_num(high)})"
            if r["passed"] < r["runs"]:
                total += f", {r['runs'] - r['passed']}/{r['runs']} runs failed"
            calls = _num(r["syscalls_per_instance"], 1) if r["syscalls_per_instance"] else (
                "FAILED" if r["syscalls_reason"] else "-")
            w(f"| {name} | {_num(per['user'])} | {_num(per['system'])} | {total} | "
              f"{_num(r['cpu_ms_per_mb'])} | {calls} | {_ratio(r['ratio_vs_storescp'])} | "
              f"{_ratio(r['ratio_vs_orthanc'])} |")
        w("")
        b = by.get((key, "scpfleet-b"))
        if b and b.get("ratio_vs_scpfleet") is not None:
            w(f"{labels['scpfleet-b']} over {labels['scpfleet']}: "
              f"{_ratio(b['ratio_vs_scpfleet'])} the CPU per instance.")
            w("")
    _render_processes(w, result, labels)
    if cfg["syscalls"]:
        w("## System calls per instance, most frequent")
        w("")
        w("| Load | Server | total | top calls |")
        w("|---|---|---:|---|")
        for r in result["summary"]:
            if r["syscalls_top"]:
                top = ", ".join(f"{k} {_num(v, 1)}" for k, v in r["syscalls_top"].items())
                w(f"| {LOADS[r['load']].label} | {labels[r['server']]} | "
                  f"{_num(r['syscalls_per_instance'], 1)} | {top} |")
        w("")
    w("## Failures")
    w("")
    failed = [r for r in result["runs"] if not r["ok"]]
    failed_calls = [t for t in result["syscall_runs"] if not t["ok"]]
    if not failed and not failed_calls:
        w(f"None: all {len(result['runs'])} runs stored exactly the files sent, every C-STORE "
          "acknowledged.")
    for r in failed:
        w(f"- repeat {r['repeat'] + 1}, {r['load']} -> {labels[r['server']]}: {r['reason']}")
    for t in failed_calls:
        w(f"- system calls, {t['load']} -> {labels[t['server']]}: {t['reason']}")
    w("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Command line


def _count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_COUNT} (data and "
                                         "storage live in memory)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m bench.cpucost",
        description="Measure server CPU time (user, system; whole process tree) and "
        "system calls per stored instance: scpfleet serve side by side with DCMTK "
        "storescp --fork, Orthanc and pynetdicom's storescp, the same files sent by "
        f"{ASSOCIATIONS} DCMTK storescu processes; write cpucost.md and cpucost.json.",
        epilog="servers: " + ", ".join(server_keys(True)) + " (scpfleet-b exists when "
        "--scpfleet-args, --scpfleet-python, --scpfleet-checkout or --scpfleet-env is given). loads: "
        + ", ".join(LOADS) + ".")
    parser.add_argument("--quick", action="store_true", help="fewer instances: " + ", ".join(
        f"{l.key} {l.quick}" for l in LOADS.values()) + " (default " + ", ".join(
        f"{l.key} {l.count}" for l in LOADS.values()) + ")")
    parser.add_argument("--count", type=_count, metavar="N",
                        help="instances per run, every load (overrides --quick)")
    parser.add_argument("--repeat", type=positive_int, default=3, metavar="N",
                        help="runs of each (load, server) (default 3)")
    parser.add_argument("--loads", type=choice_list(list(LOADS)), default=list(LOADS),
                        metavar="LIST", help="comma-separated loads (default: all)")
    parser.add_argument("--servers", type=choice_list(server_keys(True)), metavar="LIST",
                        help="comma-separated servers (default: all)")
    parser.add_argument("--syscalls", action="store_true",
                        help="also count system calls per instance with strace (two more "
                        "runs per load and server)")
    parser.add_argument("--scpfleet-args", metavar="ARGS",
                        help="scpfleet-b: these extra `scpfleet serve` flags (one string)")
    parser.add_argument("--scpfleet-python", type=Path, metavar="PATH",
                        help="scpfleet-b: the node of this interpreter's scpfleet")
    parser.add_argument("--scpfleet-checkout", type=Path, metavar="DIR",
                        help="scpfleet-b: the node of this checkout (its .venv's python "
                        "when it has one)")
    parser.add_argument("--scpfleet-env", action="append", default=[], metavar="NAME=VALUE",
                        help="scpfleet-b: set this in its environment (repeatable), e.g. "
                        "SCPFLEET_PURE_PYTHON=1 for the pure-Python metadata walk")
    parser.add_argument("--method", choices=("auto", "cgroup", "proc"), default="auto",
                        help="how CPU is counted (default auto: cgroup v2 where one can be "
                        "made, else /proc)")
    parser.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT_S, metavar="S",
                        help=f"seconds one client run may take (default {RUN_TIMEOUT_S:.0f})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help="where cpucost.md and cpucost.json go (default bench/results)")
    return parser


def _validate(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    variant = bool(opts.scpfleet_args or opts.scpfleet_python or opts.scpfleet_checkout or opts.scpfleet_env)
    if opts.servers is None:
        opts.servers = server_keys(variant)
    elif "scpfleet-b" in opts.servers and not variant:
        parser.error("--servers scpfleet-b needs --scpfleet-args, --scpfleet-python, "
                     "--scpfleet-checkout or --scpfleet-env")
    for item in opts.scpfleet_env:
        name, equals, _ = item.partition("=")
        if not equals or not name.isidentifier():
            parser.error(f"--scpfleet-env {item!r}: expected NAME=VALUE")
    if opts.scpfleet_checkout and not (opts.scpfleet_checkout / "workers" / "cli.py").is_file():
        parser.error(f"--scpfleet-checkout {opts.scpfleet_checkout}: not an scpfleet checkout")
    if opts.scpfleet_python and not os.access(opts.scpfleet_python, os.X_OK):
        parser.error(f"--scpfleet-python {opts.scpfleet_python}: not an executable")
    if opts.scpfleet_args:
        try:
            shlex.split(opts.scpfleet_args)
        except ValueError as exc:
            parser.error(f"--scpfleet-args: {exc}")
    if opts.syscalls and syscalls.strace_tool() is None:
        parser.error("--syscalls needs strace (apt-get install strace)")
    if opts.method == "cgroup" and cputime.cgroup_parent() is None:
        parser.error("--method cgroup: no writable cgroup v2 hierarchy (run as root)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    opts = parser.parse_args(argv)
    _validate(parser, opts)
    chosen = [s for s in build_servers(opts) if s.key in opts.servers]
    tmpfs, storage = tmpfs_folder()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    opts.work = Path(tempfile.mkdtemp(prefix="scpfleet-cpucost-", dir=tmpfs))
    started = time.monotonic()
    try:
        machine = machine_info()
        if opts.syscalls:
            machine["strace"] = first_line([syscalls.strace_tool() or "strace", "-V"])
        probe = _meter(opts)
        method = {"name": probe.method, "description": probe.description}
        _close(None, probe)
        datasets = {}
        for key in opts.loads:
            load = LOADS[key]
            count = opts.count or (load.quick if opts.quick else load.count)
            _progress(f"preparing {count} {load.label} files ...")
            datasets[key] = prepare(key, count, opts.work / "data" / key)
        records, traced = run_all(opts, chosen, datasets)
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result = {
            "machine": machine,
            "config": {
                "command": command_text("python -m bench.cpucost", argv,
                                        ("--out", "--scpfleet-python", "--scpfleet-checkout")),
                "repeat": opts.repeat, "quick": opts.quick, "syscalls": opts.syscalls,
                "associations": ASSOCIATIONS, "max_pdu": MAX_PDU, "storage": storage,
                "method": method,
                "servers": [{"key": s.key, "label": s.label, "kind": s.kind,
                             "detail": s.detail} for s in chosen],
                "loads": {k: [d.count, d.bytes] for k, d in datasets.items()},
                "elapsed_s": round(time.monotonic() - started, 1),
            },
            "runs": records,
            "syscall_runs": traced,
            "summary": summarize(records, traced),
        }
        text = render_markdown(result)
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "cpucost.json").write_text(json.dumps(result, indent=1) + "\n")
        (opts.out / "cpucost.md").write_text(text)
        print(text)
        failed = sum(1 for r in records if not r["ok"]) + sum(1 for t in traced if not t["ok"])
        _progress(f"{len(records) + len(traced)} runs, {failed} failed, "
                  f"{time.monotonic() - started:.0f} s; results in {opts.out}")
        return 1 if failed else 0
    except (KeyboardInterrupt, Interrupted):
        _progress("\ninterrupted: every server and client stopped; no results written")
        return 130
    finally:
        # A second Ctrl-C must not cut the clean-up short: it is bounded by the stop
        # grace periods.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        LIVE.stop_all()
        for meter in list(METERS):
            _close(None, meter)
        shutil.rmtree(opts.work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


if __name__ == "__main__":
    sys.exit(main())
