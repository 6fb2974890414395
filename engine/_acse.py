"""ACSE: deciding and building A-ASSOCIATE requests and answers, sans-IO.

Theory of operation: the Upper Layer machine hands an A-ASSOCIATE-RQ to two judges.
The *service provider* (:func:`provider_check`, run inside AE-6) refuses what the UL
itself cannot carry: an unsupported protocol version (PS3.8 9.3.2) or a local limit
(too many associations). The *service user* (:func:`evaluate_request`) applies the
AE's policy: application context name, calling and called AE titles, then presentation
context and role negotiation, and builds the A-ASSOCIATE-AC. Rejections carry the exact
result/source/reason codes of PS3.8 Table 9-21. The requestor side builds the
A-ASSOCIATE-RQ (:func:`build_request`).

Pure functions over PDU structs and policy objects: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ._pdu import (
    APPLICATION_CONTEXT_NAME,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextRQ,
    UserIdentityAC,
    UserInformation,
)
from ._config import IMPLEMENTATION_CLASS_UID
from .presentation import PresentationContext, SupportedContexts, negotiate_as_acceptor, role_selections_for

__all__ = [
    "AcceptorPolicy",
    "provider_check",
    "evaluate_request",
    "build_request",
    "REJECT_PERMANENT",
    "REJECT_TRANSIENT",
    "rejection_description",
]

# PS3.8 Table 9-21: A-ASSOCIATE-RJ result, source and reason values.
REJECT_PERMANENT = 1
REJECT_TRANSIENT = 2
SOURCE_SERVICE_USER = 1
SOURCE_PROVIDER_ACSE = 2
SOURCE_PROVIDER_PRESENTATION = 3
USER_NO_REASON = 1
USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
USER_CALLING_AE_NOT_RECOGNIZED = 3
USER_CALLED_AE_NOT_RECOGNIZED = 7
ACSE_NO_REASON = 1
ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
PRESENTATION_TEMPORARY_CONGESTION = 1
PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2

_DESCRIPTIONS = {
    (SOURCE_SERVICE_USER, USER_NO_REASON): "no-reason-given",
    (SOURCE_SERVICE_USER, USER_APPLICATION_CONTEXT_NOT_SUPPORTED):
        "application-context-name-not-supported",
    (SOURCE_SERVICE_USER, USER_CALLING_AE_NOT_RECOGNIZED): "calling-AE-title-not-recognized",
    (SOURCE_SERVICE_USER, USER_CALLED_AE_NOT_RECOGNIZED): "called-AE-title-not-recognized",
    (SOURCE_PROVIDER_ACSE, ACSE_NO_REASON): "no-reason-given",
    (SOURCE_PROVIDER_ACSE, ACSE_PROTOCOL_VERSION_NOT_SUPPORTED):
        "protocol-version-not-supported",
    (SOURCE_PROVIDER_PRESENTATION, PRESENTATION_TEMPORARY_CONGESTION): "temporary-congestion",
    (SOURCE_PROVIDER_PRESENTATION, PRESENTATION_LOCAL_LIMIT_EXCEEDED): "local-limit-exceeded",
}


def rejection_description(rj: AAssociateRJ) -> str:
    """Human words for an A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""
    result = {REJECT_PERMANENT: "rejected-permanent", REJECT_TRANSIENT: "rejected-transient"}
    source = {
        SOURCE_SERVICE_USER: "DICOM UL service-user",
        SOURCE_PROVIDER_ACSE: "DICOM UL service-provider (ACSE related function)",
        SOURCE_PROVIDER_PRESENTATION: "DICOM UL service-provider (Presentation related function)",
    }
    return (
        f"{result.get(rj.result, f'result {rj.result}')}, "
        f"{source.get(rj.source, f'source {rj.source}')}: "
        f"{_DESCRIPTIONS.get((rj.source, rj.reason), f'reason {rj.reason}')}"
    )


def _strip_ae(title: bytes) -> bytes:
    """AE title without its non-significant leading/trailing spaces (PS3.5 6.2)."""
    return bytes(title).strip(b" \x00")


@dataclass
class AcceptorPolicy:
    """What an association acceptor will agree to (built from the AE's settings)."""

    ae_title: bytes
    supported_contexts: Sequence[PresentationContext]
    maximum_pdu_size: int = 16382
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version_name: str | None = None
    require_called_aet: bool = False
    require_calling_aet: Sequence[bytes] = field(default_factory=tuple)
    #: A template accepting every abstract syntax not in ``supported_contexts`` (a valid
    #: UID): its transfer syntaxes and roles apply. None: only the listed ones.
    any_other_context: PresentationContext | None = None
    #: ``supported_contexts`` prepared for negotiation on first use (see
    #: :class:`~engine.presentation.SupportedContexts`).
    _prepared: SupportedContexts | None = field(default=None, init=False, repr=False)

    def prepared_contexts(self) -> SupportedContexts:
        if self._prepared is None:
            self._prepared = SupportedContexts(self.supported_contexts, self.any_other_context)
        return self._prepared


def provider_check(
    rq: AAssociateRQ, *, active: int = 0, maximum: int | None = None
) -> AAssociateRJ | None:
    """The service provider's acceptability test in AE-6 (PS3.8 9.2, Table 9-7).

    ``active`` is the number of associations already being served by this node and
    ``maximum`` its limit (None: no limit).
    """
    # PS3.8 9.3.2: protocol-version is a bit field; bit 0 is version 1, the only one.
    if not rq.protocol_version & 0x0001:
        return AAssociateRJ(
            result=REJECT_PERMANENT,
            source=SOURCE_PROVIDER_ACSE,
            reason=ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    if maximum is not None and active >= maximum:
        return AAssociateRJ(
            result=REJECT_TRANSIENT,
            source=SOURCE_PROVIDER_PRESENTATION,
            reason=PRESENTATION_LOCAL_LIMIT_EXCEEDED,
        )
    return None


def evaluate_request(
    rq: AAssociateRQ,
    policy: AcceptorPolicy,
    *,
    user_identity_response: bytes | None = None,
) -> tuple[AAssociateAC | AAssociateRJ, list[PresentationContext]]:
    """The ACSE service user's answer to ``rq`` (PS3.8 7.1.1, 9.3.3, 9.3.4).

    Returns the A-ASSOCIATE-AC or -RJ PDU and, when accepting, the negotiated contexts
    (accepted and rejected, with results set). ``user_identity_response`` is the server
    response to send when the requestor asked for a positive response (PS3.7 D.3.3.7).
    """
    if rq.application_context_name != APPLICATION_CONTEXT_NAME:
        return _reject_user(USER_APPLICATION_CONTEXT_NOT_SUPPORTED), []
    calling = _strip_ae(rq.calling_ae_title)
    if policy.require_calling_aet and calling not in {
        _strip_ae(t) for t in policy.require_calling_aet
    }:
        return _reject_user(USER_CALLING_AE_NOT_RECOGNIZED), []
    if policy.require_called_aet and _strip_ae(rq.called_ae_title) != _strip_ae(
        policy.ae_title
    ):
        return _reject_user(USER_CALLED_AE_NOT_RECOGNIZED), []

    ui = rq.user_information
    ac_items, contexts, roles = negotiate_as_acceptor(
        rq.presentation_contexts, policy.prepared_contexts(), ui.role_selections
    )
    identity = None
    if (
        ui.user_identity_rq is not None
        and ui.user_identity_rq.positive_response_requested
        and user_identity_response is not None
    ):
        identity = UserIdentityAC(server_response=user_identity_response)
    # PS3.7 D.3.3.3: we perform one operation at a time; answer a proposal with 1/1.
    window = (1, 1) if ui.async_ops_window is not None else None
    ac = AAssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        application_context_name=APPLICATION_CONTEXT_NAME,
        presentation_contexts=tuple(ac_items),
        user_information=UserInformation(
            max_length=policy.maximum_pdu_size,
            implementation_class_uid=policy.implementation_class_uid,
            implementation_version_name=policy.implementation_version_name,
            async_ops_window=window,
            role_selections=tuple(roles),
            user_identity_ac=identity,
        ),
    )
    return ac, contexts


def _reject_user(reason: int) -> AAssociateRJ:
    return AAssociateRJ(result=REJECT_PERMANENT, source=SOURCE_SERVICE_USER, reason=reason)


def build_request(
    *,
    called_ae_title: bytes,
    calling_ae_title: bytes,
    contexts: Sequence[PresentationContext],
    maximum_pdu_size: int,
    implementation_class_uid: str,
    implementation_version_name: str | None,
    extended: Sequence[object] = (),
) -> AAssociateRQ:
    """The A-ASSOCIATE-RQ for ``contexts`` (PS3.8 9.3.2), IDs already assigned.

    ``extended`` holds extra user-information sub-items (role selection, SOP class
    extended/common extended negotiation, user identity) as :mod:`engine._pdu` structs.
    Context roles become one Role Selection item per SOP class (PS3.7 D.3.3.4);
    :func:`~engine.presentation.role_selections_for` raises ``ValueError`` for a
    proposal of neither role or for conflicting proposals for one SOP class.
    """
    roles = []
    others: dict[str, list] = {"sop_class_extended": [], "sop_class_common_extended": []}
    identity = None
    for item in extended:
        name = type(item).__name__
        if name == "RoleSelection":
            roles.append(item)
        elif name == "SOPClassExtended":
            others["sop_class_extended"].append(item)
        elif name == "SOPClassCommonExtended":
            others["sop_class_common_extended"].append(item)
        elif name == "UserIdentityRQ":
            identity = item
        else:
            raise TypeError(f"unsupported extended negotiation item {item!r}")
    # PS3.7 D.3.3.4: one item per SOP class, not per context; an explicit item wins.
    explicit = {role.sop_class_uid for role in roles}
    roles.extend(r for r in role_selections_for(contexts) if r.sop_class_uid not in explicit)
    return AAssociateRQ(
        called_ae_title=called_ae_title,
        calling_ae_title=calling_ae_title,
        application_context_name=APPLICATION_CONTEXT_NAME,
        presentation_contexts=tuple(
            PresentationContextRQ(
                context_id=cx.context_id,
                abstract_syntax=str(cx.abstract_syntax),
                transfer_syntaxes=tuple(str(ts) for ts in cx.transfer_syntax),
            )
            for cx in contexts
        ),
        user_information=UserInformation(
            max_length=maximum_pdu_size,
            implementation_class_uid=implementation_class_uid,
            implementation_version_name=implementation_version_name,
            role_selections=tuple(roles),
            sop_class_extended=tuple(others["sop_class_extended"]),
            sop_class_common_extended=tuple(others["sop_class_common_extended"]),
            user_identity_rq=identity,
        ),
    )
