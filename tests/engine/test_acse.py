"""Tests of ACSE negotiation (engine/_acse.py): PS3.8 7.1.1, 9.3.2-9.3.4, Table 9-21;
PS3.7 D.3.3.3 (asynchronous operations window), D.3.3.4 (roles), D.3.3.7 (user identity).

Requests are built, encoded and decoded before they are judged, so AE titles arrive as
the 16 space-padded bytes a real peer sends.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine._acse import (
    AcceptorPolicy,
    build_request,
    evaluate_request,
    provider_check,
    rejection_description,
)
from engine._pdu import (
    APPLICATION_CONTEXT_NAME,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtended,
    SOPClassExtended,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_pdu,
    encode_pdu,
)
from engine.presentation import PresentationContext, assign_context_ids, build_context

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPL_UID = "1.2.826.0.1.3680043.8.498.9"


def _wire(pdu: Any) -> Any:
    """``pdu`` as the peer receives it: encoded, then decoded."""
    return decode_pdu(encode_pdu(pdu))


def _request(
    *,
    called: bytes = b"STORESCP",
    calling: bytes = b"STORESCU",
    app_context: str = APPLICATION_CONTEXT_NAME,
    protocol_version: int = 1,
    contexts: tuple[PresentationContextRQ, ...] = (
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),
        PresentationContextRQ(3, CT_IMAGE_STORAGE, (EXPLICIT_LE, IMPLICIT_LE)),
        PresentationContextRQ(5, MR_IMAGE_STORAGE, (IMPLICIT_LE,)),
    ),
    **user_info: Any,
) -> AAssociateRQ:
    info = dict(max_length=32768, implementation_class_uid="1.2.3.4")
    info.update(user_info)
    return _wire(
        AAssociateRQ(
            called_ae_title=called,
            calling_ae_title=calling,
            application_context_name=app_context,
            presentation_contexts=contexts,
            user_information=UserInformation(**info),
            protocol_version=protocol_version,
        )
    )


def _policy(**overrides: Any) -> AcceptorPolicy:
    fields: dict[str, Any] = dict(
        ae_title=b"STORESCP",
        supported_contexts=[build_context(VERIFICATION), build_context(CT_IMAGE_STORAGE)],
        maximum_pdu_size=65536,
        implementation_class_uid=IMPL_UID,
        implementation_version_name="ACSE_TEST",
    )
    fields.update(overrides)
    return AcceptorPolicy(**fields)


def _codes(answer: Any) -> tuple[int, int, int]:
    assert type(answer) is AAssociateRJ
    return (answer.result, answer.source, answer.reason)


# --------------------------------------------------------------------------
# The service provider's check (AE-6).


@pytest.mark.parametrize("version", [0x0000, 0x0002, 0xFFFE])
def test_provider_check_protocol_version_bit0_clear(version: int) -> None:
    rq = _request(protocol_version=version)
    # Rejected-permanent, service-provider (ACSE), protocol-version-not-supported.
    assert _codes(provider_check(rq)) == (1, 2, 2)
    assert encode_pdu(provider_check(rq)) == b"\x03\x00\x00\x00\x00\x04\x00\x01\x02\x02"


@pytest.mark.parametrize("version", [0x0001, 0x0003, 0xFFFF])
def test_provider_check_protocol_version_bit0_set(version: int) -> None:
    # PS3.8 9.3.2: a version-1 receiver only tests that bit 0 is set.
    assert provider_check(_request(protocol_version=version)) is None


@pytest.mark.parametrize("active,maximum", [(3, 3), (4, 3), (0, 0)])
def test_provider_check_local_limit(active: int, maximum: int) -> None:
    answer = provider_check(_request(), active=active, maximum=maximum)
    # Rejected-transient, service-provider (presentation), local-limit-exceeded.
    assert _codes(answer) == (2, 3, 2)
    assert encode_pdu(answer) == b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02"


@pytest.mark.parametrize("active,maximum", [(2, 3), (0, 1), (1000, None)])
def test_provider_check_under_limit(active: int, maximum: int | None) -> None:
    assert provider_check(_request(), active=active, maximum=maximum) is None


def test_provider_check_version_is_judged_before_limit() -> None:
    rq = _request(protocol_version=2)
    assert _codes(provider_check(rq, active=9, maximum=1)) == (1, 2, 2)


# --------------------------------------------------------------------------
# The service user's decision.


def test_application_context_not_supported() -> None:
    answer, contexts = evaluate_request(_request(app_context="1.2.3.4.5"), _policy())
    assert _codes(answer) == (1, 1, 2)
    assert contexts == []
    assert rejection_description(answer) == (
        "rejected-permanent, DICOM UL service-user: application-context-name-not-supported"
    )


def test_calling_ae_not_recognized() -> None:
    policy = _policy(require_calling_aet=[b"MODALITY1", b"MODALITY2"])
    answer, contexts = evaluate_request(_request(calling=b"INTRUDER"), policy)
    assert _codes(answer) == (1, 1, 3)
    assert contexts == []


def test_calling_ae_recognized() -> None:
    policy = _policy(require_calling_aet=[b"MODALITY1", b"MODALITY2"])
    answer, _ = evaluate_request(_request(calling=b"MODALITY2"), policy)
    assert type(answer) is AAssociateAC


def test_called_ae_not_recognized() -> None:
    answer, contexts = evaluate_request(
        _request(called=b"OTHERSCP"), _policy(require_called_aet=True)
    )
    assert _codes(answer) == (1, 1, 7)
    assert contexts == []


def test_called_ae_not_checked_unless_required() -> None:
    answer, _ = evaluate_request(_request(called=b"ANYTHING"), _policy())
    assert type(answer) is AAssociateAC


@pytest.mark.parametrize(
    "on_wire",
    [b"STORESCP", b"  STORESCP", b" STORESCP      ", b"STORESCP".rjust(16)],
    ids=["trailing", "leading", "both", "right-justified"],
)
def test_ae_title_spaces_are_not_significant(on_wire: bytes) -> None:
    # PS3.8 Table 9-11: leading and trailing spaces (20H) are non-significant.
    rq = _request(called=on_wire, calling=on_wire)
    assert len(rq.called_ae_title) == 16
    policy = _policy(
        ae_title=b"STORESCP ",
        require_called_aet=True,
        require_calling_aet=[b" STORESCP"],
    )
    answer, _ = evaluate_request(rq, policy)
    assert type(answer) is AAssociateAC


@pytest.mark.parametrize(
    "on_wire", [b"storescp", b"STORE SCP", b"STORESCP2"], ids=["case", "inner-space", "longer"]
)
def test_ae_title_significant_differences(on_wire: bytes) -> None:
    answer, _ = evaluate_request(_request(called=on_wire), _policy(require_called_aet=True))
    assert _codes(answer) == (1, 1, 7)


def test_check_order_application_context_first() -> None:
    policy = _policy(require_called_aet=True, require_calling_aet=[b"X"])
    answer, _ = evaluate_request(
        _request(app_context="1.2.3", calling=b"Y", called=b"Z"), policy
    )
    assert _codes(answer) == (1, 1, 2)


def test_accept_builds_the_a_associate_ac() -> None:
    rq = _request(called=b"STORESCP", calling=b"STORESCU")
    answer, contexts = evaluate_request(rq, _policy())
    assert type(answer) is AAssociateAC
    # The reserved AE title fields echo the request (PS3.8 Table 9-17).
    assert answer.called_ae_title == rq.called_ae_title
    assert answer.calling_ae_title == rq.calling_ae_title
    assert answer.application_context_name == APPLICATION_CONTEXT_NAME
    results = [
        (pc.context_id, pc.result, pc.transfer_syntax) for pc in answer.presentation_contexts
    ]
    assert results == [
        (1, 0, IMPLICIT_LE),
        (3, 0, EXPLICIT_LE),  # the requestor's first choice we support
        (5, 3, IMPLICIT_LE),  # abstract-syntax-not-supported
    ]
    assert [(cx.context_id, str(cx.abstract_syntax)) for cx in contexts] == [
        (1, VERIFICATION),
        (3, CT_IMAGE_STORAGE),
    ]
    ui = answer.user_information
    assert ui.implementation_class_uid == IMPL_UID
    assert ui.implementation_version_name == "ACSE_TEST"
    assert ui.async_ops_window is None
    assert ui.user_identity_ac is None
    assert ui.role_selections == ()
    assert _wire(answer) == answer


@pytest.mark.parametrize("ours", [0, 4096, 16382, 1 << 20])
def test_negotiated_maximum_length(ours: int) -> None:
    answer, _ = evaluate_request(_request(max_length=1234), _policy(maximum_pdu_size=ours))
    # PS3.8 D.1: each side states what it can receive; 0 means no limit.
    assert answer.user_information.max_length == ours
    assert _wire(answer).user_information.max_length == ours


@pytest.mark.parametrize("proposed", [(1, 1), (5, 5), (0, 0)])
def test_async_ops_window_is_answered_one_one(proposed: tuple[int, int]) -> None:
    answer, _ = evaluate_request(_request(async_ops_window=proposed), _policy())
    # PS3.7 D.3.3.3: we invoke and perform one operation at a time.
    assert answer.user_information.async_ops_window == (1, 1)
    assert _wire(answer).user_information.async_ops_window == (1, 1)


@pytest.mark.parametrize(
    "positive,response,expected",
    [
        (True, b"server-token", UserIdentityAC(b"server-token")),
        (True, b"", UserIdentityAC(b"")),
        (True, None, None),
        (False, b"server-token", None),
    ],
    ids=["positive", "empty-response", "no-response", "not-requested"],
)
def test_user_identity_positive_response(
    positive: bool, response: bytes | None, expected: UserIdentityAC | None
) -> None:
    identity = UserIdentityRQ(
        identity_type=2,
        positive_response_requested=positive,
        primary_field=b"user",
        secondary_field=b"secret",
    )
    rq = _request(user_identity_rq=identity)
    assert rq.user_information.user_identity_rq == identity
    answer, _ = evaluate_request(rq, _policy(), user_identity_response=response)
    assert answer.user_information.user_identity_ac == expected
    assert _wire(answer).user_information.user_identity_ac == expected


def test_role_selection_is_answered() -> None:
    ours = build_context(CT_IMAGE_STORAGE)
    ours.scu_role, ours.scp_role = True, True
    rq = _request(
        role_selections=(RoleSelection(CT_IMAGE_STORAGE, scu_role=True, scp_role=True),)
    )
    answer, contexts = evaluate_request(rq, _policy(supported_contexts=[ours]))
    assert answer.user_information.role_selections == (
        RoleSelection(CT_IMAGE_STORAGE, scu_role=True, scp_role=True),
    )
    (cx,) = contexts
    assert (cx.as_scu, cx.as_scp) == (True, True)


def test_no_role_reply_without_a_proposal() -> None:
    ours = build_context(CT_IMAGE_STORAGE)
    ours.scu_role, ours.scp_role = True, True
    answer, _ = evaluate_request(_request(), _policy(supported_contexts=[ours]))
    # PS3.7 D.3.3.4: items absent from the indication are omitted from the response.
    assert answer.user_information.role_selections == ()


# --------------------------------------------------------------------------
# The requestor's A-ASSOCIATE-RQ.


def _build(contexts: list[PresentationContext], **kwargs: Any) -> AAssociateRQ:
    return build_request(
        called_ae_title=b"STORESCP",
        calling_ae_title=b"STORESCU",
        contexts=assign_context_ids(contexts),
        maximum_pdu_size=16384,
        implementation_class_uid=IMPL_UID,
        implementation_version_name="REQ",
        **kwargs,
    )


def _context(uid: str, syntaxes: Any = None, **roles: bool) -> PresentationContext:
    cx = build_context(uid, syntaxes)
    for name, value in roles.items():
        setattr(cx, name, value)
    return cx


def test_build_request_fields() -> None:
    rq = _build([_context(VERIFICATION, IMPLICIT_LE), _context(CT_IMAGE_STORAGE)])
    assert rq.application_context_name == APPLICATION_CONTEXT_NAME
    assert rq.protocol_version == 1
    assert [
        (pc.context_id, pc.abstract_syntax, pc.transfer_syntaxes)
        for pc in rq.presentation_contexts
    ] == [
        (1, VERIFICATION, (IMPLICIT_LE,)),
        (3, CT_IMAGE_STORAGE, (IMPLICIT_LE, EXPLICIT_LE, "1.2.840.10008.1.2.2")),
    ]
    ui = rq.user_information
    assert (ui.max_length, ui.implementation_class_uid, ui.implementation_version_name) == (
        16384,
        IMPL_UID,
        "REQ",
    )
    assert ui.role_selections == ()
    wire = _wire(rq)
    assert wire.called_ae_title == b"STORESCP".ljust(16)
    assert wire.presentation_contexts == rq.presentation_contexts
    assert wire.user_information == ui


@pytest.mark.parametrize(
    "roles,expected",
    [
        ({"scu_role": True, "scp_role": True}, (True, True)),
        ({"scu_role": False, "scp_role": True}, (False, True)),
        ({"scu_role": True, "scp_role": False}, (True, False)),
        # An unset role counts as not proposed (0).
        ({"scp_role": True}, (False, True)),
        ({"scu_role": True}, (True, False)),
    ],
    ids=["both", "scp-only", "scu-only", "scp-scu-unset", "scu-scp-unset"],
)
def test_build_request_roles(roles: dict[str, bool], expected: tuple[bool, bool]) -> None:
    rq = _build([_context(VERIFICATION), _context(CT_IMAGE_STORAGE, **roles)])
    assert rq.user_information.role_selections == (
        RoleSelection(CT_IMAGE_STORAGE, scu_role=expected[0], scp_role=expected[1]),
    )
    assert _wire(rq).user_information.role_selections == rq.user_information.role_selections


def test_build_request_one_role_item_per_sop_class() -> None:
    # PS3.7 D.3.3.4: "for each SOP Class UID ... may use one SCP/SCU Role Selection item".
    rq = _build(
        [
            _context(CT_IMAGE_STORAGE, IMPLICIT_LE, scu_role=False, scp_role=True),
            _context(CT_IMAGE_STORAGE, EXPLICIT_LE, scu_role=False, scp_role=True),
            _context(MR_IMAGE_STORAGE, IMPLICIT_LE, scu_role=True, scp_role=True),
        ]
    )
    assert rq.user_information.role_selections == (
        RoleSelection(CT_IMAGE_STORAGE, scu_role=False, scp_role=True),
        RoleSelection(MR_IMAGE_STORAGE, scu_role=True, scp_role=True),
    )
    assert len(rq.presentation_contexts) == 3


def test_build_request_roles_through_acceptor() -> None:
    ours = build_context(CT_IMAGE_STORAGE)
    ours.scu_role, ours.scp_role = False, True
    rq = _wire(_build([_context(CT_IMAGE_STORAGE, scu_role=False, scp_role=True)]))
    answer, contexts = evaluate_request(rq, _policy(supported_contexts=[ours]))
    # The requestor proposed to be SCP; we allow it, so we are SCU on this context.
    assert answer.user_information.role_selections == (
        RoleSelection(CT_IMAGE_STORAGE, scu_role=False, scp_role=True),
    )
    (cx,) = contexts
    assert (cx.as_scu, cx.as_scp) == (True, False)


def test_build_request_extended_items() -> None:
    ext = SOPClassExtended(CT_IMAGE_STORAGE, b"\x01\x00")
    common = SOPClassCommonExtended(CT_IMAGE_STORAGE, "1.2.840.10008.4.2", ("1.2.3",))
    identity = UserIdentityRQ(1, True, b"user")
    role = RoleSelection(MR_IMAGE_STORAGE, scu_role=True, scp_role=False)
    rq = _build([_context(CT_IMAGE_STORAGE)], extended=[ext, common, identity, role])
    ui = rq.user_information
    assert ui.sop_class_extended == (ext,)
    assert ui.sop_class_common_extended == (common,)
    assert ui.user_identity_rq == identity
    assert ui.role_selections == (role,)
    assert _wire(rq).user_information == ui


def test_build_request_unknown_extended_item() -> None:
    with pytest.raises(TypeError):
        _build([_context(CT_IMAGE_STORAGE)], extended=[object()])


def test_build_request_explicit_role_item_wins() -> None:
    role = RoleSelection(CT_IMAGE_STORAGE, scu_role=True, scp_role=True)
    rq = _build([_context(CT_IMAGE_STORAGE, scp_role=True)], extended=[role])
    assert rq.user_information.role_selections == (role,)


@pytest.mark.parametrize(
    "contexts",
    [
        [_context(CT_IMAGE_STORAGE, scu_role=False, scp_role=False)],
        [
            _context(CT_IMAGE_STORAGE, IMPLICIT_LE, scu_role=True, scp_role=False),
            _context(CT_IMAGE_STORAGE, EXPLICIT_LE, scu_role=False, scp_role=True),
        ],
    ],
    ids=["neither-role", "conflicting"],
)
def test_build_request_role_proposal_errors(contexts: list[PresentationContext]) -> None:
    # PS3.7 D.3.3.4: an item proposes SCU, SCP or both, once per SOP class.
    with pytest.raises(ValueError):
        _build(contexts)
