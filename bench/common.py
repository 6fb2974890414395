"""What ``echo``, ``load`` and ``send`` share: argument checks, association set-up,
naming why an association or a C-STORE failed, and the progress line.

Theory of operation: the commands validate everything a user typed before any process
starts or socket opens, raising :class:`UsageError` (the CLI turns it into one line on
stderr and exit status 2). :func:`open_association` wraps :func:`engine.aio.associate`
and classifies the outcome as a *cause* (``connect-failed``, ``rejected``, ``aborted``,
``timeout``) plus words and whether a retry could help (PS3.8 Table 9-21: only
rejected-transient). :class:`Progress` owns the live line on stderr. Nothing here
keeps global state.
"""

from __future__ import annotations

import argparse
import collections
import logging
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence, TextIO

from engine import aio
from engine import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, validate_ae_title
from engine.aio import rejection_description
from engine.presentation import PresentationContext

__all__ = [
    "UsageError",
    "DEFAULT_AEC",
    "DEFAULT_AET",
    "add_target_arguments",
    "check_target",
    "OneLineParser",
    "choice_list",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "AssociationOutcome",
    "open_association",
    "rsp_cause",
    "quiet_engine",
    "Progress",
]

DEFAULT_AEC = "ANY-SCP"
DEFAULT_AET = "SCPFLEET"
# PS3.8 Table 9-21: result 2 is rejected-transient, the only one worth retrying.
_REJECT_TRANSIENT = 2
#: Seconds between plain (non-TTY) progress lines: a log stays readable.
PLAIN_PROGRESS_INTERVAL = 5.0
#: Seconds between live progress refreshes: "about twice a second".
LIVE_PROGRESS_INTERVAL = 0.5
#: The progress line's rate is taken over this many recent seconds (steadier than the
#: last refresh alone, which may see one or two of the senders' half-second reports).
RATE_WINDOW_S = 2.0


class UsageError(Exception):
    """Bad input: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2), for the stand-alone benchmark commands
    (``python -m bench.compare``, ``python -m bench.cpucost``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def choice_list(allowed: Sequence[Any], kind: Callable[[str], Any] = str) -> Callable[[str], list[Any]]:
    """An argument type: a comma-separated, non-empty subset of ``allowed`` (duplicates
    dropped, order kept), each item converted by ``kind``."""

    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if str(v) not in allowed and v not in allowed]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(map(str, allowed))}")
        return list(dict.fromkeys(values))

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port {text!r} must be 1..65535")
    return value


def ae_title(text: str) -> str:
    try:
        return validate_ae_title(text).decode("ascii")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_target_arguments(parser: argparse.ArgumentParser, *, positional: bool = True) -> None:
    """HOST PORT (when ``positional``), --aec, --aet, --timeout, --max-pdu."""
    if positional:
        parser.add_argument("host", metavar="HOST", help="the SCP's address or host name")
        parser.add_argument("port", metavar="PORT", type=port_number, help="the SCP's port")
    parser.add_argument(
        "--aec", type=ae_title, default=DEFAULT_AEC, metavar="AET",
        help=f"called AE title, the SCP's (default {DEFAULT_AEC})",
    )
    parser.add_argument(
        "--aet", type=ae_title, default=DEFAULT_AET, metavar="AET",
        help=f"calling AE title, ours (default {DEFAULT_AET})",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=30.0, metavar="S",
        help="ACSE, DIMSE and network timeout in seconds (default 30)",
    )
    parser.add_argument(
        "--max-pdu", type=non_negative_int, default=16382, metavar="BYTES",
        help="Maximum Length we receive (PS3.8 D.1; 0: unlimited; default 16382); what "
        "we send is cut to the SCP's own maximum",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the engine's warnings (aborts, timeouts, odd peers)")


def quiet_engine(verbose: bool) -> None:
    """Failures are counted and summarized; the engine's own warnings only with -v."""
    logging.getLogger("scpfleet").setLevel(logging.WARNING if verbose else logging.ERROR)


def check_target(host: str) -> None:
    """Resolve ``host`` now, so a typo is a usage error rather than N connect failures."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise UsageError(f"cannot resolve host {host!r}: {reason}") from None


def requestor_config(
    args: argparse.Namespace, contexts: Sequence[PresentationContext]
) -> aio.RequestorConfig:
    """The association request every command makes from ``--aec/--aet/--timeout``."""
    return aio.RequestorConfig(
        calling_ae_title=args.aet.encode("ascii").ljust(16),
        called_ae_title=args.aec.encode("ascii").ljust(16),
        contexts=list(contexts),
        maximum_pdu_size=args.max_pdu,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        acse_timeout=args.timeout,
        dimse_timeout=args.timeout,
        network_timeout=args.timeout,
    )


@dataclass
class AssociationOutcome:
    """An association, or why there is none."""

    assoc: aio.Association | None
    setup_s: float
    cause: str = ""
    reason: str = ""
    transient: bool = False


async def open_association(
    host: str, port: int, config: aio.RequestorConfig
) -> AssociationOutcome:
    """Request an association; on failure name the cause and whether to retry."""
    start = time.perf_counter()  # uvloop's loop.time() ticks in whole milliseconds
    assoc = await aio.associate(host, port, config)
    elapsed = time.perf_counter() - start
    if assoc.is_established:
        return AssociationOutcome(assoc, elapsed)
    if assoc.rejection is not None:
        rj = assoc.rejection
        return AssociationOutcome(
            None, elapsed, "rejected", f"association rejected: {rejection_description(rj)}",
            transient=rj.result == _REJECT_TRANSIENT,
        )
    info = assoc.abort_info
    detail = getattr(info, "detail", "") or ""
    if detail.startswith("connection failed"):
        return AssociationOutcome(None, elapsed, "connect-failed", detail, transient=True)
    if "timeout" in detail.lower():
        return AssociationOutcome(
            None, elapsed, "timeout", f"association timed out: {detail}", transient=True
        )
    return AssociationOutcome(None, elapsed, "aborted", _abort_words(info), transient=True)


def _abort_words(info: Any) -> str:
    if info is None:
        return "association closed by the peer"
    if getattr(info, "local", False):
        return f"association aborted locally: {info.detail or 'no detail'}"
    return f"association aborted by the peer (source {info.source}, reason {info.reason})"


def rsp_cause(assoc: aio.Association) -> tuple[str, str]:
    """Why a request got no response: ``timeout`` or ``aborted``, and words."""
    info = assoc.abort_info
    detail = getattr(info, "detail", "") or ""
    if "timeout" in detail.lower():
        return "timeout", f"no response: {detail}"
    return "aborted", f"no response: {_abort_words(info)}"


class Progress:
    """The progress line: redrawn in place on a TTY (or with --progress), else printed
    as a plain line every few seconds (``None`` mode: off)."""

    def __init__(self, live: bool | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if live is None:
            live = self.stream.isatty()
        self.live = live
        self.interval = LIVE_PROGRESS_INTERVAL if live else PLAIN_PROGRESS_INTERVAL
        self._last = time.monotonic()
        self._width = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def rate(self, done: int, now: float) -> float:
        """Instances per second over the last :data:`RATE_WINDOW_S` seconds."""
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_S:
            samples.popleft()
        then, before = samples[0]
        return (done - before) / (now - then) if now > then else 0.0

    def due(self, now: float) -> bool:
        return now - self._last >= self.interval

    def show(self, text: str, now: float) -> None:
        self._last = now
        if self.live:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
