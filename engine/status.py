"""DIMSE status codes: PS3.7 Annex C and PS3.4 Table B.2-1.

Theory of operation: a status is a bare ``int`` (the US value of Status
(0000,0900)), so responses stay cheap to build and compare. This module names the
codes a Storage SCP and a Verification SCP send or receive (and the Query/Retrieve
and Storage Commitment ones a storage node also sends), classifies any code
into its PS3.7 Annex C Status Class (:func:`status_category`), tells whether a
response is the last of its operation (:func:`is_pending`, :func:`is_final`) and
gives a human-readable meaning for logs (:func:`status_description`). It holds no
state and never does I/O.

Codes in 01xx/02xx are fixed by PS3.7 Annex C for every service; codes in Axxx,
Bxxx and Cxxx are service-class specific (PS3.7 Annex C), and the meanings given
here for them are the Storage Service Class ones (PS3.4 Table B.2-1), since
C-STORE is what this engine serves.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "SUCCESS",
    "PENDING",
    "PENDING_WARNING",
    "CANCEL",
    "WARNING",
    "ATTRIBUTE_LIST_ERROR",
    "ATTRIBUTE_VALUE_OUT_OF_RANGE",
    "WARNING_COERCION_OF_DATA_ELEMENTS",
    "WARNING_ELEMENTS_DISCARDED",
    "WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "REFUSED_OUT_OF_RESOURCES",
    "ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS",
    "ERROR_CANNOT_UNDERSTAND",
    "NO_SUCH_ATTRIBUTE",
    "INVALID_ATTRIBUTE_VALUE",
    "PROCESSING_FAILURE",
    "DUPLICATE_SOP_INSTANCE",
    "NO_SUCH_OBJECT_INSTANCE",
    "NO_SUCH_EVENT_TYPE",
    "NO_SUCH_ARGUMENT",
    "INVALID_ARGUMENT_VALUE",
    "INVALID_OBJECT_INSTANCE",
    "INVALID_SOP_INSTANCE",
    "NO_SUCH_SOP_CLASS",
    "CLASS_INSTANCE_CONFLICT",
    "MISSING_ATTRIBUTE",
    "MISSING_ATTRIBUTE_VALUE",
    "REFUSED_SOP_CLASS_NOT_SUPPORTED",
    "SOP_CLASS_NOT_SUPPORTED",
    "NO_SUCH_ACTION_TYPE",
    "NOT_AUTHORIZED",
    "DUPLICATE_INVOCATION",
    "UNRECOGNIZED_OPERATION",
    "MISTYPED_ARGUMENT",
    "RESOURCE_LIMITATION",
    "OUT_OF_RESOURCES_MATCHES",
    "OUT_OF_RESOURCES_SUBOPERATIONS",
    "MOVE_DESTINATION_UNKNOWN",
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "UNABLE_TO_PROCESS",
    "SUBOPERATIONS_WARNING",
    "DUPLICATE_TRANSACTION_UID",
    "StatusCategory",
    "status_category",
    "status_description",
    "is_pending",
    "is_final",
]

StatusCategory = Literal["Success", "Warning", "Failure", "Cancel", "Pending"]

# PS3.7 C.1: Success.
SUCCESS: Final = 0x0000

# PS3.7 C.2: Pending (FF00, FF01). FF01 is "pending with a warning", e.g. a C-FIND
# SCP that did not support some optional keys (PS3.4 Table C.4-1).
PENDING: Final = 0xFF00
PENDING_WARNING: Final = 0xFF01

# PS3.7 C.3: Cancel.
CANCEL: Final = 0xFE00

# PS3.7 C.4: general warnings.
WARNING: Final = 0x0001
ATTRIBUTE_LIST_ERROR: Final = 0x0107
ATTRIBUTE_VALUE_OUT_OF_RANGE: Final = 0x0116

# PS3.4 Table B.2-1: C-STORE warnings.
WARNING_COERCION_OF_DATA_ELEMENTS: Final = 0xB000
WARNING_ELEMENTS_DISCARDED: Final = 0xB006
WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xB007

# PS3.4 Table B.2-1: C-STORE failures. Each names the first code of a 256-code
# range (A7xx, A9xx) or of the Cxxx range; an SCP may put detail in the low bits.
REFUSED_OUT_OF_RESOURCES: Final = 0xA700
ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
ERROR_CANNOT_UNDERSTAND: Final = 0xC000

# PS3.7 C.5: general failures, fixed for every DIMSE service.
NO_SUCH_ATTRIBUTE: Final = 0x0105
INVALID_ATTRIBUTE_VALUE: Final = 0x0106
PROCESSING_FAILURE: Final = 0x0110
DUPLICATE_SOP_INSTANCE: Final = 0x0111
NO_SUCH_OBJECT_INSTANCE: Final = 0x0112
NO_SUCH_EVENT_TYPE: Final = 0x0113
NO_SUCH_ARGUMENT: Final = 0x0114
INVALID_ARGUMENT_VALUE: Final = 0x0115
INVALID_OBJECT_INSTANCE: Final = 0x0117
# PS3.4 calls 0117H "Invalid SOP Instance" in the Storage context.
INVALID_SOP_INSTANCE: Final = INVALID_OBJECT_INSTANCE
NO_SUCH_SOP_CLASS: Final = 0x0118
CLASS_INSTANCE_CONFLICT: Final = 0x0119
MISSING_ATTRIBUTE: Final = 0x0120
MISSING_ATTRIBUTE_VALUE: Final = 0x0121
REFUSED_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
# The same code under the short name PS3.2 conformance templates use.
SOP_CLASS_NOT_SUPPORTED: Final = REFUSED_SOP_CLASS_NOT_SUPPORTED
NO_SUCH_ACTION_TYPE: Final = 0x0123
NOT_AUTHORIZED: Final = 0x0124
DUPLICATE_INVOCATION: Final = 0x0210
UNRECOGNIZED_OPERATION: Final = 0x0211
MISTYPED_ARGUMENT: Final = 0x0212
RESOURCE_LIMITATION: Final = 0x0213

# PS3.4 Tables C.4-1, C.4-2, C.4-3: the Query/Retrieve statuses. A900 and C000 are the
# codes of the same name above; B000 ends a retrieve whose sub-operations failed or warned.
OUT_OF_RESOURCES_MATCHES: Final = 0xA701
OUT_OF_RESOURCES_SUBOPERATIONS: Final = 0xA702
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS
UNABLE_TO_PROCESS: Final = ERROR_CANNOT_UNDERSTAND
SUBOPERATIONS_WARNING: Final = WARNING_COERCION_OF_DATA_ELEMENTS

# PS3.4 J.3.2.1.1: a Storage Commitment Failure Reason, beside the general ones of C.5.
DUPLICATE_TRANSACTION_UID: Final = 0x0131

_DESCRIPTIONS: Final[dict[int, str]] = {
    SUCCESS: "Success",
    PENDING: "Pending",
    PENDING_WARNING: "Pending: warning (e.g. optional keys not supported)",
    CANCEL: "Cancel",
    WARNING: "Warning",
    ATTRIBUTE_LIST_ERROR: "Warning: attribute list error",
    ATTRIBUTE_VALUE_OUT_OF_RANGE: "Warning: attribute value out of range",
    WARNING_COERCION_OF_DATA_ELEMENTS: "Warning: coercion of data elements",
    WARNING_ELEMENTS_DISCARDED: "Warning: elements discarded",
    WARNING_DATASET_DOES_NOT_MATCH_SOP_CLASS: "Warning: data set does not match SOP Class",
    NO_SUCH_ATTRIBUTE: "Failure: no such attribute",
    INVALID_ATTRIBUTE_VALUE: "Failure: invalid attribute value",
    PROCESSING_FAILURE: "Failure: processing failure",
    DUPLICATE_SOP_INSTANCE: "Failure: duplicate SOP Instance",
    NO_SUCH_OBJECT_INSTANCE: "Failure: no such object instance",
    NO_SUCH_EVENT_TYPE: "Failure: no such event type",
    NO_SUCH_ARGUMENT: "Failure: no such argument",
    INVALID_ARGUMENT_VALUE: "Failure: invalid argument value",
    INVALID_OBJECT_INSTANCE: "Failure: invalid SOP Instance",
    NO_SUCH_SOP_CLASS: "Failure: no such SOP Class",
    CLASS_INSTANCE_CONFLICT: "Failure: class-instance conflict",
    MISSING_ATTRIBUTE: "Failure: missing attribute",
    MISSING_ATTRIBUTE_VALUE: "Failure: missing attribute value",
    REFUSED_SOP_CLASS_NOT_SUPPORTED: "Failure: refused, SOP Class not supported",
    NO_SUCH_ACTION_TYPE: "Failure: no such action type",
    NOT_AUTHORIZED: "Failure: refused, not authorized",
    DUPLICATE_INVOCATION: "Failure: duplicate invocation",
    UNRECOGNIZED_OPERATION: "Failure: unrecognized operation",
    MISTYPED_ARGUMENT: "Failure: mistyped argument",
    RESOURCE_LIMITATION: "Failure: resource limitation",
    OUT_OF_RESOURCES_MATCHES: "Failure: out of resources, unable to calculate number of matches",
    OUT_OF_RESOURCES_SUBOPERATIONS: "Failure: out of resources, unable to perform sub-operations",
    MOVE_DESTINATION_UNKNOWN: "Failure: move destination unknown",
    DUPLICATE_TRANSACTION_UID: "Failure: duplicate transaction UID",
}


def status_category(code: int) -> StatusCategory:
    """Return the PS3.7 Annex C Status Class of ``code``.

    PS3.7 Annex C: Success 0000; Warning 0001, Bxxx, 0107, 0116; Failure Axxx,
    Cxxx, 01xx (except 0107 and 0116), 02xx; Cancel FE00; Pending FF00, FF01.
    Annex C forbids every other value ("Implementations shall not use Status Codes
    with values not listed"), so a code outside these classes is reported as
    ``"Failure"``: a receiver must never take it for success.
    """
    if code == SUCCESS:
        return "Success"
    if code in (PENDING, PENDING_WARNING):
        return "Pending"
    if code == CANCEL:
        return "Cancel"
    if code in (WARNING, ATTRIBUTE_LIST_ERROR, ATTRIBUTE_VALUE_OUT_OF_RANGE):
        return "Warning"
    if code >> 12 == 0xB:
        return "Warning"
    return "Failure"


def is_pending(code: int) -> bool:
    """Whether ``code`` is Pending (PS3.7 C.2: FF00H, FF01H): more responses follow.

    C-FIND, C-GET and C-MOVE answer one request with pending responses and then
    one final response (PS3.7 9.1.2-9.1.4); every other status ends the operation.
    """
    return code == PENDING or code == PENDING_WARNING


def is_final(code: int) -> bool:
    """Whether ``code`` ends its operation: any status but Pending (PS3.7 C.2)."""
    return not is_pending(code)


def status_description(code: int) -> str:
    """Return a short meaning of ``code`` for logs and Error Comments.

    Exact codes come from PS3.7 Annex C (C.1-C.5) and PS3.4 Table B.2-1; the
    Storage ranges A7xx, A9xx and Cxxx are described as PS3.4 Table B.2-1 does.
    Other service-class-specific codes (the rest of Axxx and Bxxx) and values
    Annex C does not allow are described by class and hex value.
    """
    known = _DESCRIPTIONS.get(code)
    if known is not None:
        return known
    high = code >> 8
    if high == 0xA7:
        return f"Failure: refused, out of resources (0x{code:04X})"
    if high == 0xA9:
        return f"Failure: data set does not match SOP Class (0x{code:04X})"
    if code >> 12 == 0xC:
        return f"Failure: cannot understand (0x{code:04X})"
    if code >> 12 in (0xA, 0xB) or high in (0x01, 0x02):
        return f"{status_category(code)}: service-specific status 0x{code:04X}"
    return f"Unknown status 0x{code:04X} (not a PS3.7 Annex C status class)"
