"""SOP Class and Transfer Syntax UID constants, named for pynetdicom-style scripts.

Theory of operation: this module owns the *names* of the UIDs the engine negotiates.
Every constant is a :class:`pydicom.uid.UID`, so ``str`` comparisons, ``.name`` and
``.keyword`` work as they do in pydicom. The Storage SOP Classes (PS3.4 Annex B.5 and
the Non-Patient Object Storage classes of PS3.4 Annex GG) are not hand-listed: they are
generated once, at import, from pydicom's UID dictionary, so a pydicom upgrade brings
new classes with it. A class is a Storage SOP Class when its dictionary type is
"SOP Class" and its name, less a trailing " SOP Class" and a trailing
" - For Presentation", " - For Processing" or " - Trial" qualifier, ends in "Storage".
(Taking only names that *end* in "Storage" would drop Digital X-Ray, Mammography and
Intra-Oral "For Presentation/For Processing" classes, which real modalities send.)
Storage Commitment is a different service and does not match. Retired classes are kept:
old modalities still send them and an SCP should be able to accept them.

The module-level names are the pydicom 3 keywords (``CTImageStorage``,
``DigitalXRayImageStorageForPresentation`` ...), plus ``VerificationSOPClass`` (the
pynetdicom 1.x name) and ``Verification`` (the pydicom keyword) for PS3.4 Annex A.

This module never does I/O and holds no mutable state.
"""

from __future__ import annotations

import re

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEGLossless,
    RLELossless,
)

__all__ = [
    "VerificationSOPClass",
    "Verification",
    "STORAGE_SOP_CLASSES",
    "uid_name",
    "is_storage_sop_class",
    "ImplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "DeflatedExplicitVRLittleEndian",
    "JPEGBaseline8Bit",
    "JPEGExtended12Bit",
    "JPEGLossless",
    "JPEGLosslessSV1",
    "JPEGLSLossless",
    "JPEGLSNearLossless",
    "JPEG2000Lossless",
    "JPEG2000",
    "RLELossless",
    "DEFAULT_TRANSFER_SYNTAXES",
    "DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED",
    "COMPRESSED_TRANSFER_SYNTAXES",
]

# PS3.4 Annex A: the Verification SOP Class (C-ECHO).
VerificationSOPClass = UID("1.2.840.10008.1.1")
Verification = VerificationSOPClass

# PS3.5 Section 10.1 / Annex A.1: Implicit VR Little Endian is the DICOM default and every
# acceptor must support it; the two explicit ones complete the uncompressed set.
DEFAULT_TRANSFER_SYNTAXES: list[UID] = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

# The default of pynetdicom 2.0 and later: the uncompressed set plus Deflated Explicit VR
# Little Endian (PS3.5 A.5). An AE takes it with ``ae.default_transfer_syntaxes = ...``.
DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED: list[UID] = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

# PS3.5 Annex A.4/A.5: the compressed transfer syntaxes modalities most commonly propose.
COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

# Qualifiers PS3.4 appends to a Storage SOP Class name; stripped before the test.
_QUALIFIER = re.compile(r"( SOP Class)?( - (For Presentation|For Processing|Trial))?$")


def _is_storage_entry(entry: tuple[str, str, str, str, str]) -> bool:
    """Whether a UID dictionary entry names a Storage SOP Class (see module docstring)."""
    name, uid_type = entry[0], entry[1]
    if uid_type != "SOP Class":
        return False
    return _QUALIFIER.sub("", name).endswith("Storage")


def _generate() -> dict[str, UID]:
    """Build ``{keyword: UID}`` for every Storage SOP Class in pydicom's dictionary."""
    found: dict[str, UID] = {}
    for uid, entry in UID_dictionary.items():
        if not _is_storage_entry(entry):
            continue
        keyword = entry[4] or re.sub(r"[^0-9A-Za-z]", "", entry[0])
        # A keyword must be a Python identifier and must not shadow a name defined above.
        if not keyword.isidentifier() or keyword in found or keyword in globals():
            continue
        found[keyword] = UID(uid)
    return found


_STORAGE_BY_KEYWORD = _generate()
globals().update(_STORAGE_BY_KEYWORD)
__all__ += sorted(_STORAGE_BY_KEYWORD)

# Every Storage SOP Class, in UID dictionary order (which is ascending UID order).
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(_STORAGE_BY_KEYWORD.values())
_STORAGE_SET = frozenset(STORAGE_SOP_CLASSES)


def is_storage_sop_class(uid: str) -> bool:
    """Whether ``uid`` is one of :data:`STORAGE_SOP_CLASSES` (PS3.4 Annex B.5)."""
    return str(uid) in _STORAGE_SET


def uid_name(uid: str | bytes) -> str:
    """The human name of ``uid`` from the DICOM UID registry (PS3.6 Annex A).

    Unknown or private UIDs fall back to the UID text itself, as pydicom's
    ``UID.name`` does. ``bytes`` are read as ASCII; trailing NUL padding (PS3.5 9.1) is
    ignored. Never raises for a ``str`` or ``bytes`` argument.
    """
    text = uid.decode("ascii", "replace") if isinstance(uid, bytes) else str(uid)
    text = text.rstrip("\x00 ")
    entry = UID_dictionary.get(text)
    return entry[0] if entry is not None else text
