"""Verification SCP (PS3.4 Annex A): C-ECHO answered Success.

Theory of operation: the cheapest service there is; it exists so a peer can check the
node answers (``echoscu``, ``scpfleet echo``). The answer is given inline, without a
task or a data set.
"""

from __future__ import annotations

from engine import status
from engine.dimse import C_ECHO_RQ
from engine.presentation import PresentationContext
from engine.services import Request, ServiceRegistry
from engine.sop_class import VerificationSOPClass

__all__ = ["VerificationSCP"]

#: PS3.5 Annex A: the two transfer syntaxes every Verification SCU proposes.
_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


class VerificationSCP:
    """C-ECHO SCP."""

    __slots__ = ()

    def start(self, request: Request) -> int:
        return status.SUCCESS

    def contexts(self) -> list[PresentationContext]:
        return [PresentationContext(abstract_syntax=VerificationSOPClass,
                                    transfer_syntax=_TRANSFER_SYNTAXES)]

    def register(self, registry: ServiceRegistry) -> None:
        registry.add(self, [C_ECHO_RQ], [VerificationSOPClass])
