"""Logging and process naming shared by every process of a node.

Theory of operation: all processes write to the stderr they inherited from the
supervisor, one line per record (a single ``write``), prefixed with the process's role
and pid, so an operator reading one stream can tell which process said what. Nothing
here is configured at import time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["setup_logging", "set_process_name"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(role: str, level: str) -> None:
    """Route the ``scpfleet`` loggers to stderr as ``time role[pid] LEVEL logger: msg``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s {role}[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
    )
    root = logging.getLogger("scpfleet")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False


def set_process_name(name: str) -> None:
    """Name the process for ``ps``/``top`` (Linux PR_SET_NAME, 15 bytes); best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # 15 == PR_SET_NAME
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
