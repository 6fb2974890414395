"""DCMTK's command-line tools as the benchmarks and tests drive them.

Theory of operation: this module knows where DCMTK's ``storescp``/``storescu``/``echoscu``
are and how to make ``storescu`` send every file unconverted. It starts nothing itself
(:mod:`bench.servers`, :mod:`bench.clients` and tests/peers.py run the tools).

DCMTK 3.6.7 behaviour relied on:
- pynetdicom installs console scripts of the same names into the virtualenv; with the
  venv on PATH they would shadow DCMTK's binaries, so :func:`dcmtk_tool` skips the
  running interpreter's bin directory.
- storescu proposes only its preferred transfer syntax plus the uncompressed fallbacks
  and converts each file to whatever was accepted; an association profile (``-xf``) with
  one presentation context per (SOP class, transfer syntax) pair found in the files'
  meta makes its exact-match lookup send every file as stored
  (:func:`storescu_exact_profile`).
- Nagle's algorithm is on unless the environment has TCP_NODELAY=1 (dcmnet reads
  getenv("TCP_NODELAY")): every DCMTK process here gets :data:`NODELAY_ENV`.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from pydicom.filereader import read_file_meta_info

__all__ = [
    "MAX_PRESENTATION_CONTEXTS",
    "NODELAY_ENV",
    "PROFILE_NAME",
    "dcmtk_tool",
    "storescu_exact_profile",
]

MAX_PRESENTATION_CONTEXTS = 128  # PS3.8 9.3.2: odd context IDs 1..255
#: What DCMTK needs in its environment to set TCP_NODELAY on its sockets.
NODELAY_ENV = {"TCP_NODELAY": "1"}
#: The profile name :func:`storescu_exact_profile` writes (``storescu -xf FILE NAME``).
PROFILE_NAME = "SCPFLEET"


def dcmtk_tool(tool: str) -> str | None:
    """The path of DCMTK's ``tool``, never a same-named script of another package."""
    venv_bin = os.path.realpath(os.path.dirname(sys.executable))
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not directory or os.path.realpath(directory) == venv_bin:
            continue
        found = shutil.which(tool, path=directory)
        if found:
            return found
    return None


def storescu_exact_profile(
    files: Iterable[str | os.PathLike[str]], path: str | os.PathLike[str]
) -> str:
    """Write a DCMTK association profile (asconfig.txt format) to `path` proposing one
    presentation context per (SOP class, transfer syntax) pair in the files' meta, each with
    that single syntax; return the profile name for `storescu -xf path NAME`."""
    pairs: dict[tuple[str, str], None] = {}
    for f in files:
        meta = read_file_meta_info(f)
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    if len(pairs) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(pairs)} (SOP class, transfer syntax) pairs exceed "
            f"{MAX_PRESENTATION_CONTEXTS} presentation contexts: split the files"
        )
    syntaxes = sorted({ts for _, ts in pairs})
    ts_name = {ts: f"TS{i + 1}" for i, ts in enumerate(syntaxes)}
    lines = ["[[TransferSyntaxes]]"]
    for ts in syntaxes:
        lines += [f"[{ts_name[ts]}]", f"TransferSyntax1 = {ts}"]
    lines += ["", "[[PresentationContexts]]", "[EXACT]"]
    for i, (sop, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{i} = {sop}\\{ts_name[ts]}")
    lines += ["", "[[Profiles]]", f"[{PROFILE_NAME}]", "PresentationContexts = EXACT", ""]
    Path(path).write_text("\n".join(lines))
    return PROFILE_NAME
