"""Typed errors of the protocol core.

Theory of operation: every problem the core detects is one of two kinds.
A :class:`RemoteProtocolError` means the *peer* broke PS3.8/PS3.7; it carries the
A-ABORT source and reason (PS3.8 9.3.8) -- or, for association requests, the
A-ASSOCIATE-RJ result/source/reason (PS3.8 9.3.4) -- that the standard says to send
back. A :class:`LocalProtocolError` means *our* user asked for something illegal in
the current state (a P-DATA before the association exists, say). The receive path
raises only the remote kind; the fuzz tests hold it to that.

This module never does I/O.
"""

from __future__ import annotations

__all__ = [
    "ProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "ABORT_SOURCE_USER",
    "ABORT_SOURCE_PROVIDER",
    "ABORT_REASON_NOT_SPECIFIED",
    "ABORT_REASON_UNRECOGNIZED_PDU",
    "ABORT_REASON_UNEXPECTED_PDU",
    "ABORT_REASON_UNRECOGNIZED_PARAMETER",
    "ABORT_REASON_UNEXPECTED_PARAMETER",
    "ABORT_REASON_INVALID_PARAMETER",
]

# PS3.8 Table 9-26: A-ABORT source field.
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
# PS3.8 Table 9-26: reason/diag. when the source is the service provider.
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_UNRECOGNIZED_PARAMETER = 4
ABORT_REASON_UNEXPECTED_PARAMETER = 5
ABORT_REASON_INVALID_PARAMETER = 6


class ProtocolError(Exception):
    """Base of every error the protocol core raises on purpose."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something PS3.8/PS3.7 forbids.

    ``abort_source``/``abort_reason`` are the A-ABORT fields to answer with
    (PS3.8 Table 9-26). When ``reject`` is set, the error was found in an
    A-ASSOCIATE-RQ that could be decoded, and the standard's answer is an
    A-ASSOCIATE-RJ with that ``(result, source, reason)`` (PS3.8 Table 9-21).
    """

    def __init__(
        self,
        message: str,
        *,
        abort_source: int = ABORT_SOURCE_PROVIDER,
        abort_reason: int = ABORT_REASON_INVALID_PARAMETER,
        reject: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.abort_source = abort_source
        self.abort_reason = abort_reason
        self.reject = reject


class LocalProtocolError(ProtocolError):
    """Our own service user asked for something illegal in the current state."""
