"""Incremental extraction of a few top-level attributes from a streamed data set.

Theory of operation: a C-STORE data set arrives as fragments of any size, and an
instance may be gigabytes, so :class:`MetadataExtractor` never holds the stream. It
walks the data set element by element (PS3.5 7.1) with a small carry buffer for the
one element header or wanted value that straddles a fragment boundary; a value it does
not want is skipped by counting bytes. Sequences and items of undefined length (PS3.5
7.5) are tracked with a stack of open containers; anything of defined length, nested
or not, is skipped whole. Only elements at the top level are captured.

The walk stops for good -- every later :meth:`~MetadataExtractor.feed` is a no-op -- once
a top-level tag above (0020,0013) Instance Number appears (the wanted tags are all
below it, and Pixel Data (7FE0,0010) is above it), once (0020,0013) itself has been
read, once a byte cap has been examined, or at the first malformed byte. A malformed
stream is never raised to the caller: it is recorded in ``.error`` as a
:class:`MetadataError`, and the caller, which keeps storing the bytes, decides what a
missing attribute means.

Transfer syntaxes (PS3.5 Section 10 and Annex A): Implicit VR Little Endian, Explicit
VR Little Endian, Explicit VR Big Endian (retired, still met), the deflated ones (raw
DEFLATE, PS3.5 A.5, inflated here under an output cap so a decompression bomb cannot
grow memory), and every other -- encapsulated -- transfer syntax, whose data set is
Explicit VR Little Endian (PS3.5 A.4).

The fast walk's loop is also written in C (``storage/_speedups.c``, built by the
install where a C compiler is found): the same decisions, at about a tenth of the cost.
It is used when it was built, unless the environment sets ``SCPFLEET_PURE_PYTHON`` to a
non-empty value; :data:`ACCELERATED` says which walk runs. The tests run both.

This module does no I/O. Apart from that choice of walk, made once at import, it keeps
no state beyond the extractor instance.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable

import msgspec

from ._part10 import StorageError
from ._record import QUERY_FIELDS

__all__ = ["MetadataError", "InstanceMetadata", "MetadataExtractor", "DEFLATED_TRANSFER_SYNTAXES"]

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
# PS3.5 A.5 Deflated Explicit VR Little Endian, and the two JPIP Referenced Deflate
# syntaxes (PS3.5 A.8.7.1), whose data sets are deflated the same way.
DEFLATED_TRANSFER_SYNTAXES = frozenset(
    ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205")
)

# PS3.5 6.2: explicit VRs with 2 reserved bytes and a 32-bit length (12-byte header).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_UNDEFINED = 0xFFFFFFFF
# PS3.5 7.5: item and delimiter tags, encoded without a VR in every transfer syntax.
_ITEM = 0xFFFEE000
_ITEM_DELIM = 0xFFFEE00D
_SEQ_DELIM = 0xFFFEE0DD

# The attributes that name an instance, the ones query/retrieve matches on (PS3.4
# C.6.1.1.2 to C.6.1.1.5 keys), and the Specific Character Set their text values are in
# (PS3.3 C.12.1.1.2), all in group 0008 to 0020 below Instance Number.
_WANTED = {
    0x00080005: "specific_character_set",
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080020: "study_date",
    0x00080030: "study_time",
    0x00080050: "accession_number",
    0x00080060: "modality",
    0x00080090: "referring_physician_name",
    0x00081030: "study_description",
    0x0008103E: "series_description",
    0x00100010: "patient_name",
    0x00100020: "patient_id",
    0x00100030: "patient_birth_date",
    0x00100040: "patient_sex",
    0x00180015: "body_part_examined",
    0x0020000D: "study_instance_uid",
    0x0020000E: "series_instance_uid",
    0x00200010: "study_id",
    0x00200011: "series_number",
    0x00200013: "instance_number",
}
_LAST_WANTED = 0x00200013
# The field names in ascending tag order: how the C walk is told where to put a value.
_WANTED_NAMES = tuple(_WANTED[tag] for tag in sorted(_WANTED))


_Walk = Callable[
    [memoryview | bytes | bytearray, int, int, bool, bool, dict[str, bytes], tuple[str, ...]], tuple[int, bool, int]
]
_Decode = Callable[[dict[str, bytes]], dict[str, str]]


def _load_speedups() -> tuple[_Walk, _Decode] | None:
    """The C walk and decode (``storage._speedups``), when built, wanted, and in step
    with this module's wanted tags; else None (the pure-Python walk runs)."""
    if os.environ.get("SCPFLEET_PURE_PYTHON"):
        return None
    try:
        from . import _speedups
    except ImportError:
        return None
    if tuple(_speedups.TAGS) != tuple(sorted(_WANTED)):
        return None  # a stale build of an older module: the pure walk is right
    return _speedups.walk, _speedups.decode_values


_SPEEDUPS = _load_speedups()
#: The C walk is in use (see the module docstring).
ACCELERATED = _SPEEDUPS is not None

# The wanted values are UIDs (64 bytes), PN (3 x 64 characters plus escapes), LO, SH,
# CS, DA, TM, IS: 1 KiB holds any legal one; a longer value is kept truncated, never
# buffered.
_VALUE_CAP = 1024
# PS3.5 sets no nesting limit; real data nests a few levels. 128 open containers (64
# sequence levels) bounds the stack against hostile nesting.
_MAX_DEPTH = 128
# Inflate at most this much per call so one compressed fragment cannot expand in memory.
_INFLATE_CHUNK = 64 * 1024

# Precompiled decoders of element headers and lengths (PS3.5 7.1), by byte order: the
# walk decodes one per element, and a compiled Struct skips the format lookup.
_EXPLICIT_HEADER = {False: struct.Struct("<HH2sH").unpack_from, True: struct.Struct(">HH2sH").unpack_from}
_LONG_AT = {False: struct.Struct("<I").unpack_from, True: struct.Struct(">I").unpack_from}

# The explicit VR header length by VR (PS3.5 7.1.2): 12 bytes for the long VRs, 8 for
# every other well-formed one (two upper-case letters); a VR not in it is malformed.
_VR_HEADER = {bytes((a, b)): 8 for a in range(65, 91) for b in range(65, 91)} | dict.fromkeys(_LONG_VRS, 12)
# A fragment at most this long is copied to bytes before the pure-Python fast walk:
# slicing bytes is cheaper than slicing a memoryview, which pays for small data sets.
# The C walk reads the view where it lies.
_COPY_SMALL = 16 * 1024

# Parser steps: waiting for an 8-byte header, for the 4-byte long length of an explicit
# OB/SQ/UN/... header, or for a wanted value.
_HEADER, _LONG_LENGTH, _VALUE = 0, 1, 2
# Container kinds on the stack: inside an item (elements expected) or inside an
# undefined-length sequence (items expected).
_IN_ITEM, _IN_SEQUENCE = 0, 1


class MetadataError(StorageError):
    """The data set's leading bytes cannot be walked as PS3.5 Section 7 elements."""


class InstanceMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """The top-level attributes the index needs; ``None`` when absent.

    Values are the raw bytes decoded as Latin-1 with padding (space, NUL) stripped --
    good enough to index and compare UIDs, never a full Specific Character Set decode.
    """

    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    modality: str | None = None
    study_date: str | None = None
    instance_number: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    series_number: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    #: As stored, values separated by backslashes (e.g. ``\\ISO 2022 IR 87``).
    specific_character_set: str | None = None

    def query_fields(self) -> dict[str, str | None]:
        """The values of the record's query fields (:data:`~storage.QUERY_FIELDS`), by name."""
        return {name: getattr(self, name) for name in QUERY_FIELDS}


class MetadataExtractor:
    """Feed a data set's fragments; read :attr:`result` at any time.

    ``max_inflated`` caps the data set bytes examined -- after inflation for a
    deflated transfer syntax, so it also bounds what a decompression bomb can make us
    produce. The default, 1 MiB, is far beyond where the wanted attributes sit in any
    real header (they lead the data set; only sequences placed before them take room).
    Reaching the cap before (0020,0013) stops the walk and records ``.error``.
    """

    __slots__ = (
        "_cap",
        "_seen",
        "_done",
        "error",
        "_values",
        "_carry",
        "_need",
        "_step",
        "_skip",
        "_stack",
        "_implicit",
        "_big",
        "_base",
        "_tag",
        "_vr",
        "_value_rest",
        "_inflater",
    )

    def __init__(self, transfer_syntax_uid: str, max_inflated: int = 1 << 20) -> None:
        self._cap = max_inflated
        self._seen = 0
        self._done = False
        self.error: MetadataError | None = None
        # Raw values by field; decoded when :attr:`result` is read.
        self._values: dict[str, bytes] = {}
        self._carry = bytearray()
        self._need = 8
        self._step = _HEADER
        self._skip = 0
        # Each entry: (kind, implicit, big_endian) of an open undefined-length container.
        self._stack: list[tuple[int, bool, bool]] = []
        self._implicit = transfer_syntax_uid == IMPLICIT_VR_LE
        self._big = transfer_syntax_uid == EXPLICIT_VR_BE
        self._base = (self._implicit, self._big)
        self._tag = 0
        self._vr = b""
        self._value_rest = 0
        self._inflater = zlib.decompressobj(-15) if transfer_syntax_uid in DEFLATED_TRANSFER_SYNTAXES else None

    @property
    def done(self) -> bool:
        """True once the walk has stopped (wanted tags passed, cap, or error)."""
        return self._done

    @property
    def result(self) -> InstanceMetadata:
        """What has been found so far."""
        return InstanceMetadata(**self.values())

    def values(self) -> dict[str, str]:
        """What has been found so far, by :class:`InstanceMetadata` field name (absent
        attributes are not in it): :attr:`result` without building it."""
        if _SPEEDUPS is not None:
            return _SPEEDUPS[1](self._values)
        return {name: raw.decode("latin-1").strip(" \x00") for name, raw in self._values.items()}

    def feed(self, fragment: memoryview | bytes | bytearray) -> None:
        """Walk the next fragment of the data set. Never raises on bad data."""
        if self._done:
            return
        try:
            if self._inflater is None:
                self._examine(fragment)
            else:
                self._inflate(fragment)
        except MetadataError as exc:
            self._stop(exc)

    def _stop(self, error: MetadataError | None = None) -> None:
        self._done = True
        self.error = error
        self._carry = bytearray()
        self._stack = []
        self._inflater = None

    def _inflate(self, data: memoryview | bytes | bytearray) -> None:
        """PS3.5 A.5: the data set is a raw DEFLATE stream (RFC 1951), no zlib header.

        zlib drops the output of a call that meets corrupt input, so what was examined
        before the corruption would depend on how the peer cut the stream into PDVs (and
        with it whether the instance is stored). A failing call is therefore undone (the
        inflater copied before it) and its input bisected until the bad byte is alone:
        everything decodable before it is examined, whatever the fragmentation.
        """
        view = memoryview(data)
        while len(view) and self._inflater is not None and not self._inflater.eof:
            before = self._inflater.copy()
            try:
                out = self._inflater.decompress(view, _INFLATE_CHUNK)
            except zlib.error as exc:
                if len(view) == 1:
                    raise MetadataError(f"deflated data set does not inflate: {exc}") from None
                self._inflater = before
                half = len(view) // 2
                self._inflate(view[:half])
                view = view[half:]
                continue
            view = memoryview(self._inflater.unconsumed_tail)
            self._examine(out)

    def _examine(self, data: memoryview | bytes | bytearray) -> None:
        room = self._cap - self._seen
        if room <= 0:
            raise MetadataError(f"{self._cap} bytes examined before passing (0020,0013)")
        if len(data) > room:
            data = memoryview(data)[:room]
        if _SPEEDUPS is None and type(data) is memoryview and len(data) <= _COPY_SMALL:
            data = data.tobytes()
        self._seen += len(data)
        self._walk(data)
        if not self._done and self._seen >= self._cap:
            raise MetadataError(f"{self._cap} bytes examined before passing (0020,0013)")

    def _walk(self, data: memoryview | bytes | bytearray) -> None:
        """Advance over ``data``: skip counted bytes, gather headers and wanted values."""
        pos = 0
        end = len(data)
        carry = self._carry
        while pos < end:
            if self._skip:
                if end - pos <= self._skip:
                    self._skip -= end - pos
                    return
                pos += self._skip
                self._skip = 0
                continue
            if not carry and not self._stack and self._step == _HEADER:
                pos = self._run(data, pos, end)
                if self._done or pos >= end:
                    return
            need = self._need
            if carry:
                take = need - len(carry)
                if end - pos < take:
                    carry += data[pos:end]
                    return
                carry += data[pos : pos + take]
                pos += take
                chunk: bytes | memoryview | bytearray = bytes(carry)
                carry.clear()
            elif end - pos < need:
                carry += data[pos:end]
                return
            else:
                chunk = data[pos : pos + need]
                pos += need
            self._handle(chunk)
            if self._done:
                return

    def _run(self, data: memoryview | bytes | bytearray, pos: int, end: int) -> int:
        """The common case at full speed: top-level elements lying whole in ``data``
        from ``pos``, decoded in one loop without the step machine. Returns where it
        stopped: at ``end`` (or past it, ``_skip`` set), after stopping the walk, or at
        an element it leaves to the step machine -- one that straddles ``end``, opens an
        undefined-length container or has no valid VR -- which then takes the same
        decisions as :meth:`_header` and :meth:`_element` for it.
        """
        if _SPEEDUPS is not None:
            pos, stopped, skip = _SPEEDUPS[0](
                data, pos, end, self._big, self._implicit, self._values, _WANTED_NAMES
            )
            if stopped:
                self._stop()
            elif skip:
                self._skip = skip
            return pos
        big = self._big
        header = _EXPLICIT_HEADER[big]
        long_at = _LONG_AT[big]
        implicit = self._implicit
        values = self._values
        while end - pos >= 8:
            group, elem, vr, length = header(data, pos)
            tag = (group << 16) | elem
            if tag > _LAST_WANTED:
                self._stop()
                return end
            if implicit:
                (length,) = long_at(data, pos + 4)
                start = pos + 8
            else:
                kind = _VR_HEADER.get(vr)
                if kind is None:
                    return pos
                if kind == 12:
                    if end - pos < 12:
                        return pos
                    (length,) = long_at(data, pos + 8)
                start = pos + kind
            if length == _UNDEFINED:
                return pos
            name = _WANTED.get(tag)
            if name is not None:
                take = length if length < _VALUE_CAP else _VALUE_CAP
                if start + take > end:
                    return pos
                values[name] = bytes(data[start : start + take])
                if tag == _LAST_WANTED:
                    self._stop()
                    return end
            pos = start + length
            if pos > end:
                self._skip = pos - end
                return end
        return pos

    def _handle(self, chunk: bytes | memoryview | bytearray) -> None:
        step = self._step
        if step == _HEADER:
            self._header(chunk)
        elif step == _LONG_LENGTH:
            (length,) = _LONG_AT[self._big](chunk)
            self._step = _HEADER
            self._need = 8
            self._element(self._tag, self._vr, length)
        else:
            self._values[_WANTED[self._tag]] = bytes(chunk)
            self._step = _HEADER
            self._need = 8
            if self._tag == _LAST_WANTED:
                self._stop()
            else:
                self._skip = self._value_rest

    def _header(self, h: bytes | memoryview | bytearray) -> None:
        """Decode an 8-byte element or item header (PS3.5 7.1.1-7.1.3, 7.5)."""
        big = self._big
        # Read as an explicit VR header (the common case, one unpack); an implicit VR
        # header and an item or delimiter (no VR in any transfer syntax) have a 32-bit
        # length in bytes 4-7 instead.
        group, elem, vr, short = _EXPLICIT_HEADER[big](h)
        tag = (group << 16) | elem
        stack = self._stack
        if stack and stack[-1][0] == _IN_SEQUENCE:
            if tag == _ITEM:
                (length,) = _LONG_AT[big](h, 4)
                if length == _UNDEFINED:
                    self._push(_IN_ITEM)
                else:
                    self._skip = length
            elif tag == _SEQ_DELIM:
                self._pop()
            else:
                raise MetadataError(f"({group:04X},{elem:04X}) where a sequence item was expected (PS3.5 7.5)")
            return
        if not stack and tag > _LAST_WANTED:
            self._stop()
            return
        if group == 0xFFFE:
            if tag == _ITEM_DELIM and stack:
                self._pop()
                return
            raise MetadataError(f"unexpected ({group:04X},{elem:04X}) among data elements (PS3.5 7.5)")
        if self._implicit:
            self._element(tag, b"", _LONG_AT[big](h, 4)[0])
            return
        if vr in _LONG_VRS:
            self._tag = tag
            self._vr = vr
            self._step = _LONG_LENGTH
            self._need = 4
            return
        if not (vr.isalpha() and vr.isupper()):
            raise MetadataError(f"({group:04X},{elem:04X}) has no valid explicit VR: {vr!r} (PS3.5 7.1.2)")
        self._element(tag, vr, short)

    def _element(self, tag: int, vr: bytes, length: int) -> None:
        """Decide what to do with a data element's value: capture, skip, or descend."""
        if length == _UNDEFINED:
            # PS3.5 7.5: SQ, UN (whose content is then Implicit VR LE, PS3.5 6.2.2) and
            # encapsulated pixel data are the undefined-length values; all hold items.
            self._push(_IN_SEQUENCE, implicit_le=(vr == b"UN"))
            return
        if not self._stack and tag in _WANTED:
            if length == 0:
                self._values[_WANTED[tag]] = b""
                if tag == _LAST_WANTED:
                    self._stop()
                return
            self._tag = tag
            self._step = _VALUE
            self._need = min(length, _VALUE_CAP)
            self._value_rest = length - self._need
            return
        self._skip = length

    def _push(self, kind: int, implicit_le: bool = False) -> None:
        if len(self._stack) >= _MAX_DEPTH:
            raise MetadataError(f"sequences nested deeper than {_MAX_DEPTH // 2} levels")
        if implicit_le:
            self._implicit, self._big = True, False
        self._stack.append((kind, self._implicit, self._big))

    def _pop(self) -> None:
        self._stack.pop()
        if self._stack:
            _, self._implicit, self._big = self._stack[-1]
        else:
            self._implicit, self._big = self._base
