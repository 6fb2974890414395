"""Tests of engine.status against PS3.7 Annex C and PS3.4 Table B.2-1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import status


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("SUCCESS", 0x0000),
        ("PENDING", 0xFF00),
        ("PENDING_WARNING", 0xFF01),
        ("CANCEL", 0xFE00),
        ("WARNING_COERCION_OF_DATA_ELEMENTS", 0xB000),
        ("WARNING_ELEMENTS_DISCARDED", 0xB006),
        ("WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS", 0xB007),
        ("REFUSED_OUT_OF_RESOURCES", 0xA700),
        ("ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS", 0xA900),
        ("ERROR_CANNOT_UNDERSTAND", 0xC000),
        ("REFUSED_SOP_CLASS_NOT_SUPPORTED", 0x0122),
        ("SOP_CLASS_NOT_SUPPORTED", 0x0122),
        ("NO_SUCH_SOP_CLASS", 0x0118),
        ("INVALID_SOP_INSTANCE", 0x0117),
        ("NOT_AUTHORIZED", 0x0124),
        ("DUPLICATE_SOP_INSTANCE", 0x0111),
        ("DUPLICATE_INVOCATION", 0x0210),
        ("UNRECOGNIZED_OPERATION", 0x0211),
        ("MISTYPED_ARGUMENT", 0x0212),
        ("PROCESSING_FAILURE", 0x0110),
        ("RESOURCE_LIMITATION", 0x0213),
        ("ATTRIBUTE_LIST_ERROR", 0x0107),
        ("ATTRIBUTE_VALUE_OUT_OF_RANGE", 0x0116),
    ],
)
def test_code_values(name: str, code: int) -> None:
    assert getattr(status, name) == code
    assert name in status.__all__


@pytest.mark.parametrize(
    ("code", "category"),
    [
        # PS3.7 Annex C status classes, edges of each range included.
        (0x0000, "Success"),
        (0x0001, "Warning"),
        (0x0107, "Warning"),
        (0x0116, "Warning"),
        (0xB000, "Warning"),
        (0xB006, "Warning"),
        (0xBFFF, "Warning"),
        (0x0100, "Failure"),
        (0x0106, "Failure"),
        (0x0108, "Failure"),
        (0x0122, "Failure"),
        (0x01FF, "Failure"),
        (0x0200, "Failure"),
        (0x0211, "Failure"),
        (0x02FF, "Failure"),
        (0xA000, "Failure"),
        (0xA700, "Failure"),
        (0xA7FF, "Failure"),
        (0xA900, "Failure"),
        (0xC000, "Failure"),
        (0xCFFF, "Failure"),
        (0xFE00, "Cancel"),
        (0xFF00, "Pending"),
        (0xFF01, "Pending"),
        # Not a PS3.7 Annex C class: never Success.
        (0x0002, "Failure"),
        (0xD000, "Failure"),
        (0xFF02, "Failure"),
    ],
)
def test_status_category(code: int, category: str) -> None:
    assert status.status_category(code) == category


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (0x0000, "Success"),
        (0xA700, "out of resources"),
        (0xA7C3, "out of resources"),
        (0xA912, "does not match SOP Class"),
        (0xC123, "cannot understand"),
        (0xB007, "does not match SOP Class"),
        (0x0211, "unrecognized operation"),
        (0x0122, "SOP Class not supported"),
        (0xB123, "Warning: service-specific"),
        (0xA123, "Failure: service-specific"),
        (0x0199, "Failure: service-specific"),
        (0xD000, "Unknown"),
    ],
)
def test_status_description(code: int, fragment: str) -> None:
    assert fragment in status.status_description(code)


@given(st.integers(0, 0xFFFF))
def test_every_code_has_category_and_description(code: int) -> None:
    assert status.status_category(code) in ("Success", "Warning", "Failure", "Cancel", "Pending")
    assert status.status_description(code)


@pytest.mark.parametrize(
    ("code", "pending"),
    [
        (0xFF00, True),
        (0xFF01, True),
        (0x0000, False),
        (0xFE00, False),
        (0xB000, False),
        (0xA700, False),
        (0x0211, False),
        (0xFF02, False),
        (0xFEFF, False),
    ],
)
def test_is_pending(code: int, pending: bool) -> None:
    # PS3.7 C.2: Pending is FF00H and FF01H; any other status is a final response.
    assert status.is_pending(code) is pending
    assert status.is_final(code) is not pending


@given(st.integers(0, 0xFFFF))
def test_pending_is_the_pending_category(code: int) -> None:
    assert status.is_pending(code) == (status.status_category(code) == "Pending")
