"""Entry point of every child process: ``python -m workers._spawn ROLE SLOT CONTROL_FD``.

Theory of operation: the supervisor starts children as fresh interpreters (no fork of a
process that runs threads and an event loop), passing the descriptors they need with
``pass_fds``. The child reads its :class:`~workers.ipc.Spec` from the control socket,
sets up logging, ignores SIGINT (a terminal's Ctrl-C reaches the whole process group;
the supervisor decides how to stop), and runs its role's ``main``. An unexpected
exception is logged with its traceback and ends the process with status 1, which the
supervisor answers with a restart.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys

from ._logging import set_process_name, setup_logging
from .ipc import Spec, recv_control


def main() -> int:
    role, slot, ctl_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctl = socket.socket(fileno=ctl_fd)
    got = recv_control(ctl)
    if got is None or not isinstance(got[0], Spec):
        return 2
    spec = got[0]
    name = f"{role}{slot}" if role != "listener" else role
    setup_logging(name, spec.config.log_level)
    set_process_name(f"scpfleet-{name}")
    try:
        if role == "worker":
            from .worker import main as run
        elif role == "indexer":
            from .indexer import main as run
        elif role == "listener":
            from .listener import main as run
        else:
            return 2
        return run(spec, ctl)
    except Exception:
        logging.getLogger(f"scpfleet.{role}").exception("%s failed", name)
        return 1


if __name__ == "__main__":
    sys.exit(main())
