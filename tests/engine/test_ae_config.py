"""Tests of engine._config.ApplicationEntityConfig (the configuration half of the AE)."""

from __future__ import annotations

import math

import pytest
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from engine._config import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    SCPFLEET_UID_ROOT,
    ApplicationEntityConfig,
    validate_ae_title,
)
from engine.presentation import (
    PresentationContext,
    StoragePresentationContexts,
    VerificationPresentationContexts,
    build_context,
    validate_uid,
)
from engine.sop_class import CTImageStorage, MRImageStorage, VerificationSOPClass

IMPLICIT, EXPLICIT, BIG, JPEG = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
)


@pytest.fixture
def ae() -> ApplicationEntityConfig:
    return ApplicationEntityConfig()


# --------------------------------------------------------------------------
# AE titles
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (b"PYNETDICOM", b"PYNETDICOM      "),
        ("STORESCP", b"STORESCP        "),
        (b"  PADDED  ", b"PADDED          "),  # leading/trailing spaces not significant
        (b"A", b"A               "),
        (b"ABCDEFGHIJKLMNOP", b"ABCDEFGHIJKLMNOP"),
        (b"ABCDEFGHIJKLMNOP   ", b"ABCDEFGHIJKLMNOP"),  # 16 once spaces are gone
        (b"MY AE", b"MY AE           "),  # inner spaces are significant
        (bytearray(b"X"), b"X               "),
        ("a-b_c.d~!@#", b"a-b_c.d~!@#     "),
    ],
)
def test_ae_title_valid(ae: ApplicationEntityConfig, given, stored: bytes) -> None:
    ae.ae_title = given
    assert ae.ae_title == stored
    assert len(ae.ae_title) == 16
    assert isinstance(ae.ae_title, bytes)
    assert ApplicationEntityConfig(given).ae_title == stored


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        "",
        b"                ",
        b"ABCDEFGHIJKLMNOPQ",  # 17, never truncated
        b"BACK\\SLASH",
        b"TAB\tHERE",
        b"NEW\nLINE",
        b"NUL\x00",
        b"DEL\x7f",
        "caf\u00e9",
        b"caf\xc3\xa9",
    ],
)
def test_ae_title_invalid(ae: ApplicationEntityConfig, bad) -> None:
    with pytest.raises(ValueError):
        ae.ae_title = bad
    assert ae.ae_title == b"PYNETDICOM      "  # unchanged
    with pytest.raises(ValueError):
        ApplicationEntityConfig(bad)


@pytest.mark.parametrize("bad", [None, 5, ["AE"], 1.0])
def test_ae_title_type(ae: ApplicationEntityConfig, bad) -> None:
    with pytest.raises(TypeError):
        ae.ae_title = bad


def test_validate_ae_title_returns_unpadded() -> None:
    assert validate_ae_title(" X ") == b"X"


# --------------------------------------------------------------------------
# Timeouts and limits
# --------------------------------------------------------------------------

TIMEOUTS = ["acse_timeout", "dimse_timeout", "network_timeout"]


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", [0, 1, 0.5, 30, 3600.25, None])
def test_timeout_valid(ae: ApplicationEntityConfig, name: str, value) -> None:
    setattr(ae, name, value)
    assert getattr(ae, name) == value


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_timeout_value_errors(ae: ApplicationEntityConfig, name: str, value) -> None:
    before = getattr(ae, name)
    with pytest.raises(ValueError):
        setattr(ae, name, value)
    assert getattr(ae, name) == before


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize("value", ["30", True, b"1", [1]])
def test_timeout_type_errors(ae: ApplicationEntityConfig, name: str, value) -> None:
    with pytest.raises(TypeError):
        setattr(ae, name, value)


def test_maximum_associations(ae: ApplicationEntityConfig) -> None:
    ae.maximum_associations = 1
    assert ae.maximum_associations == 1
    ae.maximum_associations = 500
    assert ae.maximum_associations == 500
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ae.maximum_associations = bad
    for bad in (1.0, "10", True, None):
        with pytest.raises(TypeError):
            ae.maximum_associations = bad
    assert ae.maximum_associations == 500


def test_maximum_pdu_size(ae: ApplicationEntityConfig) -> None:
    for good in (0, 7, 4096, 16382, 1 << 20, 0xFFFFFFFF):
        ae.maximum_pdu_size = good
        assert ae.maximum_pdu_size == good
    for bad in (-1, 1, 6, 0x100000000):
        with pytest.raises(ValueError):
            ae.maximum_pdu_size = bad
    for bad in (16382.0, "16382", None, False):
        with pytest.raises(TypeError):
            ae.maximum_pdu_size = bad
    assert ae.maximum_pdu_size == 0xFFFFFFFF


# --------------------------------------------------------------------------
# Acceptor checks
# --------------------------------------------------------------------------


def test_require_calling_aet(ae: ApplicationEntityConfig) -> None:
    ae.require_calling_aet = [b"MODALITY", "  WORKSTATION ", b"MODALITY  "]
    assert ae.require_calling_aet == [b"MODALITY        ", b"WORKSTATION     "]
    listed = ae.require_calling_aet
    listed.append(b"SNEAKY")
    assert len(ae.require_calling_aet) == 2  # a copy was handed out
    ae.require_calling_aet = ()
    assert ae.require_calling_aet == []


@pytest.mark.parametrize("bad", [[b""], [b"TOO_LONG_AE_TITLE"], [b"BAD\\"], ["\u00e9"]])
def test_require_calling_aet_values(ae: ApplicationEntityConfig, bad) -> None:
    ae.require_calling_aet = [b"KEEP"]
    with pytest.raises(ValueError):
        ae.require_calling_aet = bad
    assert ae.require_calling_aet == [b"KEEP            "]


@pytest.mark.parametrize("bad", [b"MODALITY", "MODALITY", None, 5, [5]])
def test_require_calling_aet_types(ae: ApplicationEntityConfig, bad) -> None:
    with pytest.raises(TypeError):
        ae.require_calling_aet = bad


def test_require_called_aet(ae: ApplicationEntityConfig) -> None:
    ae.require_called_aet = True
    assert ae.require_called_aet is True
    for bad in (1, "yes", None):
        with pytest.raises(TypeError):
            ae.require_called_aet = bad
    assert ae.require_called_aet is True


# --------------------------------------------------------------------------
# Implementation identification
# --------------------------------------------------------------------------


def test_implementation_class_uid(ae: ApplicationEntityConfig) -> None:
    assert ae.implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert isinstance(ae.implementation_class_uid, UID)
    assert IMPLEMENTATION_CLASS_UID.startswith(SCPFLEET_UID_ROOT + ".")
    assert SCPFLEET_UID_ROOT.startswith("2.25.")
    # PS3.5 B.2: the UUID as a decimal integer, which is below 2**128.
    assert int(SCPFLEET_UID_ROOT.split(".")[2]) < 2**128
    assert validate_uid(IMPLEMENTATION_CLASS_UID) == IMPLEMENTATION_CLASS_UID
    ae.implementation_class_uid = "1.2.826.0.1.3680043.9.9999"
    assert ae.implementation_class_uid == "1.2.826.0.1.3680043.9.9999"
    ae.implementation_class_uid = b"1.2.3"
    assert ae.implementation_class_uid == "1.2.3"
    for bad in ("", "1.2.03", "1.2.3.", "1" * 65):
        with pytest.raises(ValueError):
            ae.implementation_class_uid = bad
    with pytest.raises(TypeError):
        ae.implementation_class_uid = None
    assert ae.implementation_class_uid == "1.2.3"


def test_implementation_version_name(ae: ApplicationEntityConfig) -> None:
    assert ae.implementation_version_name == IMPLEMENTATION_VERSION_NAME == b"SCPFLEET_010"
    ae.implementation_version_name = "MY_APP_2"
    assert ae.implementation_version_name == b"MY_APP_2"
    ae.implementation_version_name = b"X" * 16
    assert ae.implementation_version_name == b"X" * 16
    ae.implementation_version_name = None
    assert ae.implementation_version_name is None
    for bad in (b"", b"   ", b"X" * 17, b"A\\B", b"A\x01", "\u00e9"):
        with pytest.raises(ValueError):
            ae.implementation_version_name = bad
    with pytest.raises(TypeError):
        ae.implementation_version_name = 10
    assert ae.implementation_version_name is None


# --------------------------------------------------------------------------
# Requested contexts
# --------------------------------------------------------------------------


def test_add_requested_context(ae: ApplicationEntityConfig) -> None:
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(str(CTImageStorage), [JPEG, JPEG])
    ae.add_requested_context(b"1.2.840.10008.5.1.4.1.1.4", IMPLICIT)
    got = ae.requested_contexts
    assert [cx.abstract_syntax for cx in got] == [CTImageStorage, CTImageStorage, MRImageStorage]
    assert [cx.transfer_syntax for cx in got] == [[IMPLICIT, EXPLICIT, BIG], [JPEG], [IMPLICIT]]
    assert all(cx.context_id is None and cx.result is None for cx in got)
    got.clear()
    assert len(ae.requested_contexts) == 3  # a new list on each read


def test_add_requested_context_errors(ae: ApplicationEntityConfig) -> None:
    with pytest.raises(ValueError):
        ae.add_requested_context("1.2.840.10008.1.1.")
    with pytest.raises(ValueError):
        ae.add_requested_context(VerificationSOPClass, ["1.2.840.10008.1.2", "x"])
    with pytest.raises(ValueError):
        ae.add_requested_context(VerificationSOPClass, [])
    with pytest.raises(TypeError):
        ae.add_requested_context(None)
    assert ae.requested_contexts == []


def test_requested_contexts_setter(ae: ApplicationEntityConfig) -> None:
    mine = [build_context(CTImageStorage), build_context(MRImageStorage, JPEG)]
    mine[0].context_id = 5
    mine[0].scp_role = True
    ae.requested_contexts = mine
    got = ae.requested_contexts
    assert [cx.abstract_syntax for cx in got] == [CTImageStorage, MRImageStorage]
    assert got[0].context_id is None  # copied as configuration only
    assert got[0].scp_role is True and got[0].scu_role is None
    assert got[0] is not mine[0]
    mine[1].add_transfer_syntax(IMPLICIT)
    assert ae.requested_contexts[1].transfer_syntax == [JPEG]
    ae.requested_contexts = [build_context(VerificationSOPClass)] * 128
    assert len(ae.requested_contexts) == 128
    with pytest.raises(ValueError):
        ae.requested_contexts = [build_context(VerificationSOPClass)] * 129
    with pytest.raises(ValueError):
        ae.requested_contexts = StoragePresentationContexts  # longer than 128
    # A list is the right type; items that are not contexts make it a wrong value.
    with pytest.raises(ValueError):
        ae.requested_contexts = [VerificationSOPClass]
    with pytest.raises(ValueError):
        ae.requested_contexts = [PresentationContext()]
    assert len(ae.requested_contexts) == 128  # failed sets change nothing


def test_remove_requested_context(ae: ApplicationEntityConfig) -> None:
    ae.add_requested_context(CTImageStorage, [IMPLICIT, JPEG])
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage, JPEG)
    ae.add_requested_context(CTImageStorage, [EXPLICIT, BIG])
    ae.remove_requested_context(CTImageStorage, JPEG)
    got = ae.requested_contexts
    assert [(cx.abstract_syntax, cx.transfer_syntax) for cx in got] == [
        (CTImageStorage, [IMPLICIT]),
        (MRImageStorage, [IMPLICIT, EXPLICIT, BIG]),
        (CTImageStorage, [EXPLICIT, BIG]),
    ]
    ae.remove_requested_context("1.2.3.4")  # not requested: ignored
    ae.remove_requested_context(CTImageStorage, ["1.2.3.4"])  # nothing matches
    assert len(ae.requested_contexts) == 3
    ae.remove_requested_context(str(CTImageStorage))
    assert [cx.abstract_syntax for cx in ae.requested_contexts] == [MRImageStorage]
    with pytest.raises(ValueError):
        ae.remove_requested_context("not a uid")
    with pytest.raises(ValueError):
        ae.remove_requested_context(MRImageStorage, "not a uid")
    with pytest.raises(TypeError):
        ae.remove_requested_context(MRImageStorage, 5)


# --------------------------------------------------------------------------
# Supported contexts
# --------------------------------------------------------------------------


def test_supported_contexts_sorted_and_merged(ae: ApplicationEntityConfig) -> None:
    ae.add_supported_context(MRImageStorage)
    ae.add_supported_context(VerificationSOPClass)
    ae.add_supported_context(CTImageStorage, [JPEG, IMPLICIT])
    ae.add_supported_context(CTImageStorage, [BIG, JPEG])
    got = ae.supported_contexts
    assert [cx.abstract_syntax for cx in got] == sorted(
        [VerificationSOPClass, CTImageStorage, MRImageStorage]
    )
    ct = next(cx for cx in got if cx.abstract_syntax == CTImageStorage)
    # Canonical (UID) order, no duplicates.
    assert ct.transfer_syntax == [IMPLICIT, BIG, JPEG]


def test_supported_roles(ae: ApplicationEntityConfig) -> None:
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=False)
    (cx,) = ae.supported_contexts
    assert (cx.scu_role, cx.scp_role) == (True, False)
    # The latest call's roles replace the old ones, as in the reference implementation.
    ae.add_supported_context(CTImageStorage, JPEG)
    (cx,) = ae.supported_contexts
    assert (cx.scu_role, cx.scp_role) == (None, None)
    assert JPEG in cx.transfer_syntax
    for bad in (1, "True"):
        with pytest.raises(TypeError):
            ae.add_supported_context(MRImageStorage, scu_role=bad)
        with pytest.raises(TypeError):
            ae.add_supported_context(MRImageStorage, scp_role=bad)
    assert len(ae.supported_contexts) == 1


def test_supported_contexts_setter(ae: ApplicationEntityConfig) -> None:
    ae.supported_contexts = VerificationPresentationContexts
    (cx,) = ae.supported_contexts
    assert cx is not VerificationPresentationContexts[0]
    cx.add_transfer_syntax(JPEG)
    assert VerificationPresentationContexts[0].transfer_syntax == [IMPLICIT, EXPLICIT, BIG]
    ae.supported_contexts = StoragePresentationContexts
    assert len(ae.supported_contexts) == len(StoragePresentationContexts)
    first = build_context(CTImageStorage, JPEG)
    first.scu_role, first.scp_role = True, True
    second = build_context(CTImageStorage, IMPLICIT)
    ae.supported_contexts = (first, second)
    (cx,) = ae.supported_contexts
    assert cx.transfer_syntax == [IMPLICIT, JPEG]
    assert (cx.scu_role, cx.scp_role) == (None, None)
    with pytest.raises(ValueError):
        ae.supported_contexts = [CTImageStorage]
    with pytest.raises(ValueError):
        ae.supported_contexts = [PresentationContext(abstract_syntax=CTImageStorage)]
    assert len(ae.supported_contexts) == 1


def test_remove_supported_context(ae: ApplicationEntityConfig) -> None:
    ae.add_supported_context(CTImageStorage, [IMPLICIT, EXPLICIT, JPEG])
    ae.add_supported_context(MRImageStorage)
    ae.remove_supported_context(CTImageStorage, [JPEG, "1.2.3.4"])
    ae.remove_supported_context("1.2.3.4")  # not supported: ignored
    ae.remove_supported_context("1.2.3.4", IMPLICIT)
    got = {str(cx.abstract_syntax): cx.transfer_syntax for cx in ae.supported_contexts}
    assert got == {
        str(CTImageStorage): [IMPLICIT, EXPLICIT],
        str(MRImageStorage): [IMPLICIT, EXPLICIT, BIG],
    }
    ae.remove_supported_context(CTImageStorage, [IMPLICIT, EXPLICIT, BIG])
    ae.remove_supported_context(b"1.2.840.10008.5.1.4.1.1.4")
    assert ae.supported_contexts == []
    with pytest.raises(ValueError):
        ae.remove_supported_context("1.2.3.x")


def test_instances_do_not_share_state() -> None:
    one, two = ApplicationEntityConfig(), ApplicationEntityConfig(b"OTHER")
    one.add_supported_context(CTImageStorage)
    one.add_requested_context(CTImageStorage)
    one.require_calling_aet = [b"A"]
    assert two.supported_contexts == [] and two.requested_contexts == []
    assert two.require_calling_aet == []
    assert one.ae_title != two.ae_title


# --------------------------------------------------------------------------
# Options from pynetdicom 2.0+, honoured alongside the reference's defaults
# --------------------------------------------------------------------------


def test_default_transfer_syntaxes_option(ae: ApplicationEntityConfig) -> None:
    from engine.sop_class import (
        DEFAULT_TRANSFER_SYNTAXES,
        DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED,
    )

    assert ae.default_transfer_syntaxes == DEFAULT_TRANSFER_SYNTAXES  # the reference's 3
    ae.default_transfer_syntaxes = DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED
    ae.add_requested_context(VerificationSOPClass)
    ae.add_supported_context(CTImageStorage)
    assert len(ae.requested_contexts[0].transfer_syntax) == 4
    assert ae.supported_contexts[0].transfer_syntax == sorted(
        DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED, key=str)
    ae.add_requested_context(MRImageStorage, IMPLICIT)  # an explicit choice still wins
    assert ae.requested_contexts[1].transfer_syntax == [IMPLICIT]
    with pytest.raises(ValueError):
        ae.default_transfer_syntaxes = []
    with pytest.raises(ValueError):
        ae.default_transfer_syntaxes = ["not a uid"]


def test_connection_timeout(ae: ApplicationEntityConfig) -> None:
    assert ae.connection_timeout is None
    ae.connection_timeout = 2.5
    assert ae.connection_timeout == 2.5
    with pytest.raises(ValueError):
        ae.connection_timeout = -1
    with pytest.raises(TypeError):
        ae.connection_timeout = "a"
