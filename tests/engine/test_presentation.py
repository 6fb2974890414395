"""Tests of engine.presentation and engine.sop_class (PS3.8 9.3.2.2/9.3.3.2, PS3.7 D.3.3.4)."""

from __future__ import annotations

import ast
import itertools
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLossless,
)

from engine import sop_class
from engine._errors import LocalProtocolError, RemoteProtocolError
from engine._pdu import PresentationContextAC, PresentationContextRQ, RoleSelection
from engine.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    assign_context_ids,
    build_context,
    negotiate_as_acceptor,
    negotiate_as_requestor,
    role_selections_for,
    validate_uid,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
CR = "1.2.840.10008.5.1.4.1.1.1"
IMPLICIT = str(ImplicitVRLittleEndian)
EXPLICIT = str(ExplicitVRLittleEndian)
BIG = str(ExplicitVRBigEndian)
JPEG = str(JPEGBaseline8Bit)

ENGINE = Path(__file__).resolve().parents[2] / "engine"


# --------------------------------------------------------------------------
# The core does no I/O
# --------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["presentation.py", "sop_class.py", "_config.py"])
def test_module_imports_no_io(module: str) -> None:
    tree = ast.parse((ENGINE / module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    assert not names & {"asyncio", "socket", "threading", "time", "selectors", "pynetdicom"}


# --------------------------------------------------------------------------
# sop_class
# --------------------------------------------------------------------------


def test_sop_class_names() -> None:
    assert sop_class.VerificationSOPClass == VERIFICATION
    assert sop_class.Verification is sop_class.VerificationSOPClass
    assert isinstance(sop_class.VerificationSOPClass, UID)
    assert sop_class.CTImageStorage == CT
    assert sop_class.MRImageStorage == MR
    assert sop_class.SecondaryCaptureImageStorage == "1.2.840.10008.5.1.4.1.1.7"
    assert sop_class.EnhancedCTImageStorage == "1.2.840.10008.5.1.4.1.1.2.1"
    assert sop_class.DigitalXRayImageStorageForPresentation == "1.2.840.10008.5.1.4.1.1.1.1"
    assert sop_class.DigitalMammographyXRayImageStorageForProcessing == (
        "1.2.840.10008.5.1.4.1.1.1.2.1"
    )
    assert isinstance(sop_class.CTImageStorage, UID)
    assert "CTImageStorage" in sop_class.__all__


def test_storage_sop_classes_membership() -> None:
    classes = set(sop_class.STORAGE_SOP_CLASSES)
    assert len(classes) == len(sop_class.STORAGE_SOP_CLASSES)
    assert {CT, MR, CR, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.1.1"} <= classes
    # Retired classes old modalities still send are kept.
    assert "1.2.840.10008.5.1.4.1.1.3" in classes  # Ultrasound Multi-frame (retired)
    assert VERIFICATION not in classes
    assert "1.2.840.10008.1.20.1" not in classes  # Storage Commitment Push Model
    assert "1.2.840.10008.1.2" not in classes  # a transfer syntax
    for uid in classes:
        assert UID_dictionary[uid][1] == "SOP Class"
        assert "Storage" in UID_dictionary[uid][0]
        assert validate_uid(uid) == uid
        assert sop_class.is_storage_sop_class(uid)
    # Everything whose name ends in "Storage" is in.
    ending = {
        uid for uid, entry in UID_dictionary.items()
        if entry[1] == "SOP Class" and entry[0].endswith("Storage")
    }
    assert ending <= classes
    assert not sop_class.is_storage_sop_class(VERIFICATION)


def test_transfer_syntax_exports() -> None:
    assert sop_class.DEFAULT_TRANSFER_SYNTAXES == [IMPLICIT, EXPLICIT, BIG]
    assert sop_class.DeflatedExplicitVRLittleEndian == "1.2.840.10008.1.2.1.99"
    assert sop_class.JPEGBaseline8Bit == JPEG
    assert JPEGLossless in sop_class.COMPRESSED_TRANSFER_SYNTAXES


def test_uid_name() -> None:
    assert sop_class.uid_name(CT) == "CT Image Storage"
    assert sop_class.uid_name(UID(VERIFICATION)) == "Verification SOP Class"
    assert sop_class.uid_name(b"1.2.840.10008.1.2\x00") == "Implicit VR Little Endian"
    assert sop_class.uid_name("1.2.3.4") == "1.2.3.4"
    assert sop_class.uid_name(b"\xff") == "\ufffd"


def test_storage_classes_cover_pynetdicom() -> None:
    """Every Storage SOP class pynetdicom knows and pydicom names is one of ours."""
    pyn = pytest.importorskip("pynetdicom.sop_class")
    theirs = {str(uid) for uid in pyn._STORAGE_CLASSES.values()}
    known = {uid for uid in theirs if uid in UID_dictionary}
    assert known <= set(sop_class.STORAGE_SOP_CLASSES)


# --------------------------------------------------------------------------
# UID validation and PresentationContext
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1.02.3",  # leading zero in a component
        "1.2.",
        ".1.2",
        "1..2",
        "1.2.a",
        "1.2.3\n",  # pydicom's is_valid lets this through
        " 1.2.3",
        "1.2.3 ",
        "1." + "2" * 63,  # 65 characters
        b"1.2.\xff",
    ],
)
def test_validate_uid_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        validate_uid(bad)


@pytest.mark.parametrize("bad", [None, 1, 1.5, ["1.2"], object()])
def test_validate_uid_type_errors(bad: object) -> None:
    with pytest.raises(TypeError):
        validate_uid(bad)


def test_validate_uid_accepts() -> None:
    assert validate_uid("0") == "0"
    assert validate_uid(b"1.2.3") == "1.2.3"
    assert isinstance(validate_uid("1.2.3"), UID)
    uid = UID(CT)
    assert validate_uid(uid) is uid
    long = "1." + "2" * 62  # 64 characters
    assert validate_uid(long) == long


def test_validate_uid_remembers_valid_uids_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine import presentation

    monkeypatch.setattr(presentation, "_VALID_UIDS", {})
    monkeypatch.setattr(presentation, "_VALID_UIDS_MAX", 8)
    first = validate_uid("1.2.3.4")
    assert validate_uid(b"1.2.3.4") is first and validate_uid("1.2.3.4") is first  # built once
    with pytest.raises(ValueError):  # an invalid text is never remembered as valid
        validate_uid("1.2.3.4\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the bad UID it is asked to build
        bad = UID("1.02")
    with pytest.raises(ValueError):
        validate_uid(bad)
    for n in range(20):
        assert validate_uid(f"1.2.{n + 1}") == f"1.2.{n + 1}"
    assert 0 < len(presentation._VALID_UIDS) <= 8
    assert "1.02" not in presentation._VALID_UIDS and "1.2.3.4\n" not in presentation._VALID_UIDS


def test_context_defaults() -> None:
    cx = PresentationContext()
    assert cx.context_id is None
    assert cx.abstract_syntax is None
    assert cx.transfer_syntax == []
    assert cx.result is None
    assert cx.status == "Pending"
    assert cx.scu_role is None and cx.scp_role is None
    assert cx.as_scu is False and cx.as_scp is False
    assert str(cx) == "Transfer Syntax(es):"


@pytest.mark.parametrize("value", [0, 2, 256, -1, 254])
def test_context_id_range(value: int) -> None:
    with pytest.raises(ValueError):
        PresentationContext(context_id=value)


@pytest.mark.parametrize("value", [True, "1", 1.0])
def test_context_id_type(value: object) -> None:
    with pytest.raises(TypeError):
        PresentationContext(context_id=value)


def test_context_id_valid() -> None:
    for value in (1, 3, 127, 255):
        assert PresentationContext(context_id=value).context_id == value


def test_context_setters_validate() -> None:
    cx = PresentationContext()
    with pytest.raises(ValueError):
        cx.abstract_syntax = "1.2.x"
    with pytest.raises(ValueError):
        cx.transfer_syntax = [IMPLICIT, "nope"]
    assert cx.transfer_syntax == []  # a failed set leaves it unchanged
    with pytest.raises(TypeError):
        cx.transfer_syntax = 5
    with pytest.raises(ValueError):
        cx.result = 5
    with pytest.raises(TypeError):
        cx.result = True
    with pytest.raises(TypeError):
        cx.scu_role = 1
    with pytest.raises(TypeError):
        cx.scp_role = "yes"
    with pytest.raises(TypeError):
        cx.as_scu = None
    with pytest.raises(TypeError):
        cx.as_scp = 1
    with pytest.raises(ValueError):
        cx.add_transfer_syntax("1.2.3.")


def test_transfer_syntax_dedup_and_copy() -> None:
    cx = PresentationContext(abstract_syntax=VERIFICATION)
    cx.transfer_syntax = [IMPLICIT, EXPLICIT, IMPLICIT, UID(EXPLICIT)]
    assert cx.transfer_syntax == [IMPLICIT, EXPLICIT]
    assert all(isinstance(ts, UID) for ts in cx.transfer_syntax)
    cx.add_transfer_syntax(IMPLICIT)
    cx.add_transfer_syntax(BIG)
    cx.add_transfer_syntax(b"1.2.840.10008.1.2.2")
    assert cx.transfer_syntax == [IMPLICIT, EXPLICIT, BIG]
    cx.transfer_syntax.append("garbage")  # the getter hands out a copy
    assert cx.transfer_syntax == [IMPLICIT, EXPLICIT, BIG]
    cx.transfer_syntax = JPEG  # a single UID is accepted too
    assert cx.transfer_syntax == [JPEG]


def test_context_copy_eq() -> None:
    cx = build_context(CT, [IMPLICIT, JPEG])
    cx.context_id = 3
    cx.scu_role = True
    other = cx.copy()
    assert other == cx and other is not cx
    other.add_transfer_syntax(BIG)
    assert cx.transfer_syntax == [IMPLICIT, JPEG]
    assert other != cx
    assert cx != "not a context"
    with pytest.raises(TypeError):
        hash(cx)
    assert "1.2.840.10008.5.1.4.1.1.2" in repr(cx)


def test_str_formats() -> None:
    """pynetdicom's documented print formats (user guide, 'Presentation Contexts')."""
    cx = PresentationContext()
    cx.context_id = 1
    cx.abstract_syntax = "1.2.840.10008.1.1"
    cx.transfer_syntax = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"]
    assert str(cx) == (
        "ID: 1\n"
        "Abstract Syntax: Verification SOP Class\n"
        "Transfer Syntax(es):\n"
        "    =Implicit VR Little Endian\n"
        "    =JPEG Baseline (Process 1)"
    )
    cx = build_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"])
    assert str(cx) == (
        "Abstract Syntax: Verification SOP Class\n"
        "Transfer Syntax(es):\n"
        "    =Implicit VR Little Endian\n"
        "    =JPEG Baseline (Process 1)"
    )
    assert str(build_context("1.2.840.10008.1.1")) == (
        "Abstract Syntax: Verification SOP Class\n"
        "Transfer Syntax(es):\n"
        "    =Implicit VR Little Endian\n"
        "    =Explicit VR Little Endian\n"
        "    =Explicit VR Big Endian"
    )
    private = build_context("1.2.3.4", "1.2.3.5")
    private.result = 3
    assert str(private) == (
        "Abstract Syntax: 1.2.3.4\n"
        "Transfer Syntax(es):\n"
        "    =1.2.3.5\n"
        "Result: Abstract Syntax Not Supported"
    )


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (0, "Accepted"),
        (1, "User Rejected"),
        (2, "Provider Rejected"),
        (3, "Abstract Syntax Not Supported"),
        (4, "Transfer Syntax(es) Not Supported"),
    ],
)
def test_status(result: int, status: str) -> None:
    assert PresentationContext(result=result).status == status


def test_build_context() -> None:
    cx = build_context(CT)
    assert cx.abstract_syntax == CT and isinstance(cx.abstract_syntax, UID)
    assert cx.transfer_syntax == [IMPLICIT, EXPLICIT, BIG]
    assert build_context(CT, JPEG).transfer_syntax == [JPEG]
    assert build_context(CT, [JPEG, JPEG, IMPLICIT]).transfer_syntax == [JPEG, IMPLICIT]
    with pytest.raises(ValueError):
        build_context(CT, [])
    with pytest.raises(ValueError):
        build_context("1.2.840.10008.5.1.4.1.1.2.")
    with pytest.raises(TypeError):
        build_context(None)  # type: ignore[arg-type]


def test_ready_made_lists() -> None:
    assert len(VerificationPresentationContexts) == 1
    assert VerificationPresentationContexts[0].abstract_syntax == VERIFICATION
    assert [str(cx.abstract_syntax) for cx in StoragePresentationContexts] == list(
        sop_class.STORAGE_SOP_CLASSES
    )
    assert StoragePresentationContexts == AllStoragePresentationContexts
    assert StoragePresentationContexts[0] is not AllStoragePresentationContexts[0]
    for cx in StoragePresentationContexts:
        assert cx.transfer_syntax == [IMPLICIT, EXPLICIT, BIG]


def test_assign_context_ids() -> None:
    contexts = [build_context(CT), build_context(MR)]
    contexts[0].result = 0
    numbered = assign_context_ids(contexts)
    assert [cx.context_id for cx in numbered] == [1, 3]
    assert numbered[0].result is None
    assert contexts[0].context_id is None  # inputs untouched
    assert [cx.context_id for cx in assign_context_ids([build_context(CT)] * 128)][-1] == 255
    with pytest.raises(ValueError):
        assign_context_ids([build_context(CT)] * 129)
    with pytest.raises(ValueError):
        assign_context_ids([PresentationContext(abstract_syntax=CT)])


def test_role_selections_for() -> None:
    plain = build_context(VERIFICATION)
    get = build_context(CT)
    get.scp_role = True  # scu_role unset counts as False
    both = build_context(MR)
    both.scu_role = both.scp_role = True
    again = build_context(MR, JPEG)
    again.scu_role = again.scp_role = True
    assert role_selections_for([plain, get, both, again]) == [
        RoleSelection(sop_class_uid=CT, scu_role=False, scp_role=True),
        RoleSelection(sop_class_uid=MR, scu_role=True, scp_role=True),
    ]
    neither = build_context(CR)
    neither.scu_role = neither.scp_role = False
    with pytest.raises(ValueError):
        role_selections_for([neither])
    conflict = build_context(MR)
    conflict.scu_role = True
    with pytest.raises(ValueError):
        role_selections_for([both, conflict])


# --------------------------------------------------------------------------
# Acceptor negotiation
# --------------------------------------------------------------------------


def rq(cid: int, abstract: str, *syntaxes: str) -> PresentationContextRQ:
    return PresentationContextRQ(
        context_id=cid, abstract_syntax=abstract, transfer_syntaxes=syntaxes
    )


def role(uid: str, scu: bool, scp: bool) -> RoleSelection:
    return RoleSelection(sop_class_uid=uid, scu_role=scu, scp_role=scp)


def supported(
    abstract: str, syntaxes: list[str] | None = None, scu=None, scp=None
) -> PresentationContext:
    cx = build_context(abstract, syntaxes)
    cx.scu_role, cx.scp_role = scu, scp
    return cx


def test_acceptor_docs_scenario() -> None:
    """The user guide's 'Presentation Context Negotiation' example: results 0, 0, 4, 3."""
    ours = [
        supported(VERIFICATION, [IMPLICIT, EXPLICIT]),
        supported(CT, [IMPLICIT]),
        supported(MR, [JPEG]),
    ]
    proposed = [
        rq(1, VERIFICATION, IMPLICIT, EXPLICIT, BIG, JPEG),
        rq(3, CT, IMPLICIT, EXPLICIT, BIG),
        rq(5, MR, IMPLICIT, EXPLICIT),
        rq(7, CR, IMPLICIT, EXPLICIT),
    ]
    ac, accepted, roles = negotiate_as_acceptor(proposed, ours)
    assert ac == [
        PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT),
        PresentationContextAC(context_id=3, result=0, transfer_syntax=IMPLICIT),
        PresentationContextAC(context_id=5, result=4, transfer_syntax=IMPLICIT),
        PresentationContextAC(context_id=7, result=3, transfer_syntax=IMPLICIT),
    ]
    assert [(cx.context_id, cx.abstract_syntax, cx.transfer_syntax) for cx in accepted] == [
        (1, VERIFICATION, [IMPLICIT]),
        (3, CT, [IMPLICIT]),
    ]
    assert all(cx.result == 0 and cx.as_scp and not cx.as_scu for cx in accepted)
    assert all(isinstance(cx.abstract_syntax, UID) for cx in accepted)
    assert roles == []


def test_acceptor_uses_requestor_preference() -> None:
    ours = [supported(CT, [IMPLICIT, EXPLICIT, JPEG])]
    ac, accepted, _ = negotiate_as_acceptor([rq(1, CT, BIG, JPEG, EXPLICIT, IMPLICIT)], ours)
    assert ac[0] == PresentationContextAC(context_id=1, result=0, transfer_syntax=JPEG)
    assert accepted[0].transfer_syntax == [JPEG]


def test_acceptor_no_reason_for_bad_ids() -> None:
    ours = [supported(CT)]
    proposed = [
        rq(2, CT, IMPLICIT),  # even
        rq(0, CT, EXPLICIT),  # zero is even too
        rq(5, CT, IMPLICIT),  # duplicated below: both refused
        rq(7, CT, EXPLICIT),
        rq(5, MR, IMPLICIT),
    ]
    ac, accepted, _ = negotiate_as_acceptor(proposed, ours)
    assert [(item.context_id, item.result) for item in ac] == [
        (2, 2), (0, 2), (5, 2), (7, 0), (5, 2)
    ]
    assert ac[1].transfer_syntax == EXPLICIT  # the filler is the first proposed syntax
    assert [cx.context_id for cx in accepted] == [7]


def test_acceptor_out_of_range_id() -> None:
    ac, accepted, _ = negotiate_as_acceptor([rq(257, CT, IMPLICIT)], [supported(CT)])
    assert ac[0].result == 2 and accepted == []


def test_acceptor_padded_uids_and_same_abstract_syntax() -> None:
    ours = [supported(CT, [IMPLICIT]), supported(CT, [JPEG])]  # merged: both supported
    proposed = [rq(1, CT + "\x00", JPEG + "\x00"), rq(3, CT, BIG, IMPLICIT + " ")]
    ac, accepted, _ = negotiate_as_acceptor(proposed, ours)
    assert [(item.result, item.transfer_syntax) for item in ac] == [(0, JPEG), (0, IMPLICIT)]
    assert [cx.transfer_syntax for cx in accepted] == [[JPEG], [IMPLICIT]]


def test_acceptor_transfer_syntax_not_supported_and_empty_supported() -> None:
    ac, _, _ = negotiate_as_acceptor([rq(1, CT, JPEG)], [supported(CT, [IMPLICIT])])
    assert ac[0] == PresentationContextAC(context_id=1, result=4, transfer_syntax=JPEG)
    ac, _, _ = negotiate_as_acceptor([rq(1, CT, JPEG)], [])
    assert ac[0].result == 3
    empty = PresentationContext(abstract_syntax=CT)
    ac, _, _ = negotiate_as_acceptor([rq(1, CT, IMPLICIT)], [empty])
    assert ac[0].result == 4


def test_acceptor_empty_transfer_syntax_list_from_peer() -> None:
    ac, _, _ = negotiate_as_acceptor([rq(1, CR)], [supported(CT)])
    assert ac[0] == PresentationContextAC(context_id=1, result=3, transfer_syntax=IMPLICIT)


def test_acceptor_bad_supported_argument() -> None:
    with pytest.raises(TypeError):
        negotiate_as_acceptor([rq(1, CT, IMPLICIT)], ["1.2.3"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        negotiate_as_acceptor([rq(1, CT, IMPLICIT)], [PresentationContext()])


def test_acceptor_does_not_mutate_supported() -> None:
    ours = [supported(CT, scu=True, scp=True)]
    before = ours[0].copy()
    negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT)], ours, [role(CT, True, True)]
    )
    assert ours[0] == before


# The role selection table of pynetdicom's user guide, plus the cases it leaves out
# (acceptor None, or a proposal PS3.7 forbids). Keys: requestor proposal, acceptor
# (scu_role, scp_role). Values: (result, acceptor as_scu, acceptor as_scp, reply).
NONE = None
T, F = True, False
PROPOSALS = [NONE, (T, T), (T, F), (F, T), (F, F)]
CONFIGS = [(None, None), (None, T), (T, None), (F, F), (F, T), (T, F), (T, T)]
EXPECTED_ROLES = {
    ((T, T), (F, F)): (1, F, F, None),
    ((T, T), (F, T)): (0, T, F, (F, T)),
    ((T, T), (T, F)): (0, F, T, (T, F)),
    ((T, T), (T, T)): (0, T, T, (T, T)),
    ((T, F), (F, F)): (1, F, F, None),
    ((T, F), (F, T)): (1, F, F, None),
    ((T, F), (T, F)): (0, F, T, (T, F)),
    ((T, F), (T, T)): (0, F, T, (T, F)),
    ((F, T), (F, F)): (1, F, F, None),
    ((F, T), (T, F)): (1, F, F, None),
    ((F, T), (F, T)): (0, T, F, (F, T)),
    ((F, T), (T, T)): (0, T, F, (F, T)),
    ((F, F), (F, F)): (1, F, F, None),
    ((F, F), (F, T)): (1, F, F, None),
    ((F, F), (T, F)): (1, F, F, None),
    ((F, F), (T, T)): (1, F, F, None),
}
DEFAULT_OUTCOME = (0, F, T, None)


@pytest.mark.parametrize(("proposal", "config"), list(itertools.product(PROPOSALS, CONFIGS)))
def test_acceptor_role_matrix(proposal, config) -> None:
    expected = EXPECTED_ROLES.get((proposal, config), DEFAULT_OUTCOME)
    result, as_scu, as_scp, reply = expected
    roles = [] if proposal is None else [role(CT, *proposal)]
    ac, accepted, replies = negotiate_as_acceptor(
        [rq(1, CT, IMPLICIT)], [supported(CT, scu=config[0], scp=config[1])], roles
    )
    assert ac[0].result == result
    if result == 0:
        assert (accepted[0].as_scu, accepted[0].as_scp) == (as_scu, as_scp)
        assert (accepted[0].scu_role, accepted[0].scp_role) == config
    else:
        assert accepted == []
    if reply is None:
        assert replies == []
    else:
        assert replies == [RoleSelection(sop_class_uid=CT, scu_role=reply[0], scp_role=reply[1])]
        # PS3.7 D.3.3.4: never accept a role that was not proposed.
        assert not (reply[0] and not proposal[0]) and not (reply[1] and not proposal[1])


def test_acceptor_role_replies_only_for_proposals() -> None:
    ours = [supported(CT, scu=T, scp=T), supported(MR, scu=T, scp=T), supported(VERIFICATION)]
    selections = [
        RoleSelection(sop_class_uid=MR + "\x00", scu_role=False, scp_role=True),
        RoleSelection(sop_class_uid=CR, scu_role=True, scp_role=True),  # not proposed: ignored
        RoleSelection(sop_class_uid=MR, scu_role=True, scp_role=False),  # repeat: first counts
        RoleSelection(sop_class_uid=VERIFICATION, scu_role=True, scp_role=True),  # roles None
    ]
    proposed = [
        rq(1, CT, IMPLICIT),
        rq(3, MR, IMPLICIT),
        rq(5, MR, EXPLICIT),
        rq(7, VERIFICATION, IMPLICIT),
    ]
    ac, accepted, replies = negotiate_as_acceptor(proposed, ours, selections)
    assert [item.result for item in ac] == [0, 0, 0, 0]
    assert replies == [RoleSelection(sop_class_uid=MR, scu_role=False, scp_role=True)]
    assert [(cx.as_scu, cx.as_scp) for cx in accepted] == [(F, T), (T, F), (T, F), (F, T)]


def test_acceptor_no_reply_when_context_refused_for_other_reasons() -> None:
    selection = [RoleSelection(sop_class_uid=CT, scu_role=True, scp_role=True)]
    _, _, replies = negotiate_as_acceptor(
        [rq(1, CT, JPEG)], [supported(CT, scu=T, scp=T)], selection
    )
    assert replies == []


def test_acceptor_role_rejection_beats_nothing_else() -> None:
    """Abstract/transfer syntax checks come first: a role-hostile config still yields 3/4."""
    selection = [RoleSelection(sop_class_uid=CT, scu_role=False, scp_role=True)]
    ours = [supported(CT, [IMPLICIT], scu=T, scp=F)]
    ac, _, _ = negotiate_as_acceptor(
        [rq(1, CT, JPEG), rq(3, CT, IMPLICIT), rq(5, MR, IMPLICIT)], ours, selection
    )
    assert [item.result for item in ac] == [4, 1, 3]


def test_acceptor_against_pynetdicom_role_matrix() -> None:
    """pynetdicom's negotiate_as_acceptor reaches the same results and roles."""
    pyn = pytest.importorskip("pynetdicom.presentation")
    for proposal, config in itertools.product(PROPOSALS[:-1], CONFIGS):
        theirs_rq = pyn.build_context(CT)
        theirs_rq.context_id = 1
        theirs_ac = pyn.build_context(CT)
        theirs_ac.scu_role, theirs_ac.scp_role = config
        roles = None if proposal is None else {CT: proposal}
        contexts, _ = pyn.negotiate_as_acceptor([theirs_rq], [theirs_ac], roles)
        selections = [] if proposal is None else [role(CT, *proposal)]
        ac, accepted, _ = negotiate_as_acceptor(
            [rq(1, CT, IMPLICIT, EXPLICIT, BIG)],
            [supported(CT, scu=config[0], scp=config[1])],
            selections,
        )
        ours_accepted = ac[0].result == 0
        theirs_accepted = contexts[0].result == 0
        assert ours_accepted == theirs_accepted, (proposal, config)
        if ours_accepted:
            assert (accepted[0].as_scu, accepted[0].as_scp) == (
                bool(contexts[0].as_scu),
                bool(contexts[0].as_scp),
            ), (proposal, config)


def test_acceptor_against_pynetdicom_results() -> None:
    """Same result codes and transfer syntax as pynetdicom when both orders agree."""
    pyn = pytest.importorskip("pynetdicom.presentation")
    ours = [
        supported(VERIFICATION, [IMPLICIT, EXPLICIT]),
        supported(CT, [IMPLICIT]),
        supported(MR, [JPEG]),
    ]
    theirs = [pyn.build_context(str(cx.abstract_syntax), cx.transfer_syntax) for cx in ours]
    proposed = [
        rq(1, VERIFICATION, IMPLICIT, EXPLICIT, BIG),
        rq(3, CT, IMPLICIT, EXPLICIT),
        rq(5, MR, IMPLICIT, EXPLICIT),
        rq(7, CR, IMPLICIT),
    ]
    theirs_rq = []
    for item in proposed:
        cx = pyn.build_context(item.abstract_syntax, list(item.transfer_syntaxes))
        cx.context_id = item.context_id
        theirs_rq.append(cx)
    contexts, _ = pyn.negotiate_as_acceptor(theirs_rq, theirs, None)
    ac, _, _ = negotiate_as_acceptor(proposed, ours)
    by_id = {cx.context_id: cx for cx in contexts}
    for item in ac:
        assert item.result == by_id[item.context_id].result
        if item.result == 0:
            assert item.transfer_syntax == by_id[item.context_id].transfer_syntax[0]


# --------------------------------------------------------------------------
# Requestor negotiation
# --------------------------------------------------------------------------


def requested(*contexts: PresentationContext) -> list[PresentationContext]:
    return assign_context_ids(list(contexts))


def test_requestor_results() -> None:
    mine = requested(
        build_context(VERIFICATION),
        build_context(CT, [JPEG, IMPLICIT]),
        build_context(MR),
        build_context(CR),
        build_context(CT, BIG),
    )
    answer = [
        PresentationContextAC(context_id=3, result=0, transfer_syntax=IMPLICIT + "\x00"),
        PresentationContextAC(context_id=1, result=0, transfer_syntax=EXPLICIT),
        PresentationContextAC(context_id=5, result=3, transfer_syntax=""),
        PresentationContextAC(context_id=7, result=1, transfer_syntax="garbage, not tested"),
    ]  # context 9 is not answered at all
    before = [cx.copy() for cx in mine]
    out = negotiate_as_requestor(mine, answer)
    assert mine == before  # inputs untouched
    assert [cx.context_id for cx in out] == [1, 3, 5, 7, 9]
    assert [cx.result for cx in out] == [0, 0, 3, 1, 2]
    assert out[0].transfer_syntax == [EXPLICIT]
    assert out[1].transfer_syntax == [IMPLICIT]
    assert isinstance(out[1].transfer_syntax[0], UID)
    assert out[2].transfer_syntax == [IMPLICIT, EXPLICIT, BIG]  # refused: as proposed
    assert [(cx.as_scu, cx.as_scp) for cx in out] == [(T, F), (T, F), (F, F), (F, F), (F, F)]
    assert str(out[0]).endswith("Result: Accepted")


def test_requestor_sorts_by_id() -> None:
    a, b = requested(build_context(CT), build_context(MR))
    out = negotiate_as_requestor([b, a], [PresentationContextAC(3, 0, BIG)])
    assert [cx.context_id for cx in out] == [1, 3]
    assert [cx.result for cx in out] == [2, 0]


@pytest.mark.parametrize(
    "answer",
    [
        [PresentationContextAC(context_id=3, result=0, transfer_syntax=IMPLICIT)],  # not proposed
        [
            PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT),
            PresentationContextAC(context_id=1, result=4, transfer_syntax=IMPLICIT),
        ],  # answered twice
        [PresentationContextAC(context_id=1, result=5, transfer_syntax=IMPLICIT)],  # bad result
        [PresentationContextAC(context_id=1, result=0, transfer_syntax=JPEG)],  # not proposed TS
        [PresentationContextAC(context_id=1, result=0, transfer_syntax="")],
    ],
)
def test_requestor_remote_errors(answer: list[PresentationContextAC]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        negotiate_as_requestor(requested(build_context(CT)), answer)
    assert (info.value.abort_source, info.value.abort_reason) == (2, 6)


def test_requestor_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        negotiate_as_requestor([build_context(CT)], [])  # no context ID
    one = requested(build_context(CT))[0]
    with pytest.raises(LocalProtocolError):
        negotiate_as_requestor([one, one.copy()], [])


REPLIES = [None, (T, T), (T, F), (F, T), (F, F)]


@pytest.mark.parametrize(("proposal", "reply"), list(itertools.product(PROPOSALS, REPLIES)))
def test_requestor_role_matrix(proposal, reply) -> None:
    cx = build_context(CT)
    if proposal is not None:
        cx.scu_role, cx.scp_role = proposal
    replies = [] if reply is None else [role(CT, *reply)]
    out = negotiate_as_requestor(requested(cx), [PresentationContextAC(1, 0, IMPLICIT)], replies)
    if proposal is None or reply is None:
        expected = (T, F)  # PS3.7 D.3.3.4 default: requestor is SCU
    else:
        expected = (proposal[0] and reply[0], proposal[1] and reply[1])
    assert (out[0].as_scu, out[0].as_scp) == expected


def test_requestor_role_partial_proposal_and_first_reply() -> None:
    cx = build_context(CT)
    cx.scp_role = True  # scu_role None counts as not proposed
    replies = [
        role(CT + "\x00", True, True),  # SCU was never proposed
        RoleSelection(sop_class_uid=CT, scu_role=False, scp_role=False),  # repeat: ignored
    ]
    out = negotiate_as_requestor(requested(cx), [PresentationContextAC(1, 0, IMPLICIT)], replies)
    assert (out[0].as_scu, out[0].as_scp) == (F, T)


# --------------------------------------------------------------------------
# Both ends together
# --------------------------------------------------------------------------

UIDS = [VERIFICATION, CT, MR, CR, "1.2.3.4"]
SYNTAXES = [IMPLICIT, EXPLICIT, BIG, JPEG, "1.2.3.5"]
ROLE = st.sampled_from([None, True, False])


@st.composite
def scenario(draw):
    proposals = []
    for _ in range(draw(st.integers(1, 8))):
        cx = build_context(
            draw(st.sampled_from(UIDS)),
            draw(st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=5, unique=True)),
        )
        proposals.append(cx)
    role_for = {}
    for cx in proposals:
        uid = str(cx.abstract_syntax)
        if uid not in role_for:
            role_for[uid] = draw(st.sampled_from([None, (T, T), (T, F), (F, T)]))
        if role_for[uid] is not None:
            cx.scu_role, cx.scp_role = role_for[uid]
    ours = []
    for uid in draw(st.lists(st.sampled_from(UIDS), unique=True)):
        ours.append(
            supported(
                uid,
                draw(st.lists(st.sampled_from(SYNTAXES), min_size=1, max_size=5, unique=True)),
                draw(ROLE),
                draw(ROLE),
            )
        )
    return proposals, ours


@settings(max_examples=200, deadline=None)
@given(scenario())
def test_round_trip(case) -> None:
    """Requestor -> acceptor -> requestor agree on every context, syntax and role."""
    proposals, ours = case
    mine = assign_context_ids(proposals)
    items = [
        rq(cx.context_id, str(cx.abstract_syntax), *map(str, cx.transfer_syntax)) for cx in mine
    ]
    ac, accepted, replies = negotiate_as_acceptor(items, ours, role_selections_for(mine))
    assert [item.context_id for item in ac] == [cx.context_id for cx in mine]
    table = {}
    for cx in ours:
        table.setdefault(str(cx.abstract_syntax), set()).update(map(str, cx.transfer_syntax))
    for item, cx in zip(ac, mine):
        abstract = str(cx.abstract_syntax)
        proposed = [str(ts) for ts in cx.transfer_syntax]
        if abstract not in table:
            assert item.result == 3
        elif not set(proposed) & table[abstract]:
            assert item.result == 4
        else:
            assert item.result in (0, 1)
        if item.result == 0:
            assert item.transfer_syntax == next(ts for ts in proposed if ts in table[abstract])
    reply_uids = [r.sop_class_uid for r in replies]
    assert len(reply_uids) == len(set(reply_uids))
    out = negotiate_as_requestor(mine, ac, replies)
    theirs = {cx.context_id: cx for cx in accepted}
    for cx in out:
        assert cx.result == ac[(cx.context_id - 1) // 2].result
        if cx.result == 0:
            peer = theirs[cx.context_id]
            assert cx.transfer_syntax == peer.transfer_syntax
            # Roles mirror: we are SCU exactly when they are SCP, and vice versa.
            assert (cx.as_scu, cx.as_scp) == (peer.as_scp, peer.as_scu)
            assert cx.as_scu or cx.as_scp
        else:
            assert cx.context_id not in theirs


def test_prepared_supported_contexts_negotiate_identically() -> None:
    """SupportedContexts (prepared once per acceptor) answers exactly as the plain list."""
    from engine._pdu import PresentationContextRQ
    from engine.presentation import SupportedContexts, build_context, negotiate_as_acceptor

    supported = [
        build_context("1.2.840.10008.1.1"),
        build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"]),
    ]
    proposed = [
        PresentationContextRQ(1, "1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")),
        PresentationContextRQ(3, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
        PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.1.4", ("1.2.840.10008.1.2",)),
        PresentationContextRQ(7, "1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.2",)),
    ]
    plain = negotiate_as_acceptor(proposed, supported)
    prepared = negotiate_as_acceptor(proposed, SupportedContexts(supported))
    assert plain[0] == prepared[0]
    assert [str(c) for c in plain[1]] == [str(c) for c in prepared[1]]
    assert [c.result for c in prepared[1]] == [0, 0]
    assert [item.result for item in prepared[0]] == [0, 0, 3, 4]
