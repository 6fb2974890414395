"""What a benchmark result records about where it ran: the machine and the versions.

Theory of operation: :func:`machine_info` asks the system (CPU count and model, memory,
kernel, load average) and each program under test for its version, once per run;
:func:`checkout_commit` names the commit of a checkout. Results never hold a machine
path: :func:`command_text` drops path-valued options from the command it records.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from bench.dcmtk import dcmtk_tool

__all__ = ["first_line", "package_version", "checkout_commit", "machine_info", "command_text", "fs_type"]

REPO = Path(__file__).resolve().parents[1]


def first_line(argv: Sequence[str]) -> str | None:
    """The first line a command prints (stdout, else stderr), or None if it cannot run."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def checkout_commit(folder: Path) -> str | None:
    """The short commit of the git checkout at ``folder``, ``+dirty`` with local changes."""
    commit = first_line(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"])
    if commit is None:
        return None
    try:
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return commit
    return commit + ("+dirty" if status.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import tomllib

        version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, ValueError):
        version = None
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    storescp = dcmtk_tool("storescp")
    dcmtk = first_line([storescp, "--version"]) if storescp else None
    orthanc = first_line(["Orthanc", "--version"]) if shutil.which("Orthanc") else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "scpfleet": version,
        "commit": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "dcmtk": dcmtk.strip("$ ").replace("dcmtk: ", "") if dcmtk else None,
        "pynetdicom": package_version("pynetdicom"),
        "pydicom": package_version("pydicom"),
        "orthanc": orthanc,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def command_text(prog: str, argv: Sequence[str], path_options: Collection[str]) -> str:
    """``prog`` and ``argv`` as run, less the options in ``path_options`` (machine paths)
    and their values."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in path_options:
            skip = True
            continue
        if any(arg.startswith(f"{option}=") for option in path_options):
            continue
        shown.append(arg)
    return " ".join([prog, *shown])


def fs_type(path: Path) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), e.g. ext4."""
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind
