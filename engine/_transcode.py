"""Streaming conversion of a data set between the uncompressed transfer syntaxes, sans-IO.

Theory of operation: a :class:`Transcoder` re-encodes a data set element by element as
its bytes arrive (PS3.5 7.1, 7.5), from one of Implicit VR Little Endian, Explicit VR
Little Endian, Explicit VR Big Endian and Deflated Explicit VR Little Endian into
another. ``feed(chunk)`` returns the output produced so far and ``finish()`` the rest; a
value is never held whole, so a multi-gigabyte Pixel Data streams through in pieces.
It never does I/O and never decodes pixel data.

* **VRs.** Going from implicit to explicit VR, each element's VR comes from pydicom's
  data dictionary; private and unknown tags become UN (PS3.5 6.2.2). The ambiguous
  dictionary VRs are resolved from the data set itself, as PS3.5 A.1 and the modules
  define them: ``US or SS`` by Pixel Representation (0028,0103), ``OB or OW`` (Pixel
  Data, overlays) by Bits Allocated (0028,0100) -- OW above 8 bits; OW otherwise where
  a value does not fit a short VR's 16-bit length. A short-VR value longer than
  65535 bytes is written as UN.
* **Sequences.** Items and sequences of defined or undefined length are followed to
  any depth. When the element header size changes (implicit <-> explicit) the lengths of
  sequences and items are no longer known before their content is written, so they are
  written with undefined length and their delimitation items (PS3.5 7.5.1, 7.5.2);
  between the explicit syntaxes lengths are kept. Group Length elements (gggg,0000)
  would then be wrong too and are dropped (they are retired in data sets, PS3.5 7.2).
  A UN element of undefined length holds a sequence in Implicit VR Little Endian
  (PS3.5 6.2.2): its items are parsed as such and written as an SQ.
* **Byte order.** Between little and big endian, values are swapped by their VR's
  width: 2 for US, SS, OW and AT (two 2-byte halves), 4 for UL, SL, FL, OF, OL, 8 for
  FD, OD, SV, UV, OV; character, OB and UN values are bytes and stay as they are.
* **Deflate.** A deflated source is inflated as it streams; a deflated target is
  compressed as it streams and padded with one null byte to an even length (PS3.5
  A.5: the deflated stream may be padded).
* **Encapsulated Pixel Data** (undefined-length Pixel Data with fragment items) is legal
  only in the compressed transfer syntaxes (PS3.5 A.4); between those nothing is
  converted, and converting from one to anything else raises :class:`TranscodeError`.

:func:`read_sop_uids` is the other service here: the SOP Class and Instance UIDs near the
start of a data set (0008,0016)/(0008,0018), read from its first bytes in any of these
syntaxes (inflating just the head of a deflated one).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

__all__ = [
    "Transcoder",
    "TranscodeError",
    "CONVERTIBLE",
    "can_transcode",
    "transcode",
    "iter_transcoded",
    "read_sop_uids",
]

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

#: Transfer syntax -> (implicit VR, little endian, deflated) of its data set encoding.
_ENCODINGS: dict[str, tuple[bool, bool, bool]] = {
    IMPLICIT_LE: (True, True, False),
    EXPLICIT_LE: (False, True, False),
    DEFLATED_LE: (False, True, True),
    EXPLICIT_BE: (False, False, False),
}
#: The transfer syntaxes a :class:`Transcoder` converts between.
CONVERTIBLE = frozenset(_ENCODINGS)

# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 32-bit length.
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"))
_VALID_VRS = _LONG_VRS | frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD",
                                    b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS",
                                    b"ST", b"TM", b"UI", b"UL", b"US"))
#: Bytes swapped together between the byte orders (PS3.5 7.3), by VR.
_SWAP = {b"US": 2, b"SS": 2, b"OW": 2, b"AT": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"OF": 4,
         b"OL": 4, b"FD": 8, b"OD": 8, b"SV": 8, b"UV": 8, b"OV": 8}
_ARRAY_CODES = {2: "H", 4: "I", 8: "Q"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = (0xFFFE, 0xE000)
_ITEM_END = (0xFFFE, 0xE00D)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)
_BITS_ALLOCATED = (0x0028, 0x0100)
_PIXEL_REPRESENTATION = (0x0028, 0x0103)
#: Largest value a short-VR explicit header can carry (PS3.5 7.1.2: 16-bit length).
_SHORT_MAX = 0xFFFF
#: How much of a data set's head :func:`read_sop_uids` looks at: SOP Class/Instance UIDs
#: are group 0008 elements, after at most a few hundred bytes of group 0008 and less.
_HEAD_LIMIT = 64 * 1024


class TranscodeError(ValueError):
    """A data set cannot be converted (compressed, malformed, or ends too soon)."""


def can_transcode(source: str, target: str) -> bool:
    """Whether a data set in ``source`` can be sent in ``target`` by this module."""
    return source == target or (source in CONVERTIBLE and target in CONVERTIBLE)


def _name(uid: str) -> str:
    return UID(uid).name or uid


class _Level:
    """One open container: the top-level data set, a sequence, or an item."""

    __slots__ = ("kind", "remaining", "implicit", "little", "out_defined", "values")

    def __init__(self, kind: str, remaining: int | None, implicit: bool, little: bool,
                 out_defined: bool, values: dict | None) -> None:
        self.kind = kind  # "dataset", "sequence" or "item"
        self.remaining = remaining  # input bytes left (None: undefined length)
        self.implicit = implicit  # input encoding of its content
        self.little = little
        self.out_defined = out_defined  # its output keeps the defined length
        # Bits Allocated / Pixel Representation seen in this data set or item (None for
        # a sequence, whose elements are items).
        self.values = values


class Transcoder:
    """Re-encode one data set from ``source`` to ``target`` transfer syntax, streaming.

    Raises :class:`TranscodeError` at construction when either is not one of
    :data:`CONVERTIBLE` (unless they are equal: then bytes pass through unchanged), and
    from ``feed``/``finish`` when the data set cannot be parsed or converted.
    """

    def __init__(self, source: str, target: str) -> None:
        source, target = str(source), str(target)
        self.passthrough = source == target
        if not self.passthrough:
            for uid in (source, target):
                if uid not in _ENCODINGS:
                    names = ", ".join(_name(u) for u in sorted(CONVERTIBLE))
                    raise TranscodeError(
                        f"cannot convert a data set from {_name(source)} to {_name(target)}: "
                        f"{_name(uid)} is compressed (only {names} can be converted "
                        "without decoding pixel data)"
                    )
        self.source, self.target = source, target
        src = _ENCODINGS.get(source, (False, True, False))
        dst = _ENCODINGS.get(target, (False, True, False))
        self._in_implicit, self._in_little, in_deflated = src
        self._out_implicit, self._out_little, out_deflated = dst
        self._inflate = zlib.decompressobj(-15) if in_deflated and not self.passthrough else None
        self._deflate = (zlib.compressobj(6, zlib.DEFLATED, -15)
                         if out_deflated and not self.passthrough else None)
        self._deflated_size = 0
        # Lengths survive only when the header layout is the same in and out.
        self._keep_lengths = self._in_implicit == self._out_implicit
        self._swap = self._in_little != self._out_little
        self._buffer = bytearray()
        self._out: list[bytes | memoryview] = []
        self._stack: list[_Level] = [
            _Level("dataset", None, self._in_implicit, self._in_little, False, {})
        ]
        # The value being streamed: bytes left, swap width, pending partial unit.
        self._value_left = 0
        self._value_width = 0
        self._value_tail = b""
        # (tag, the data set's values, little endian) of a value to remember.
        self._record: tuple[tuple[int, int], dict, bool] | None = None

    # -- public ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Convert ``data`` (the next bytes of the data set); the output so far."""
        if self.passthrough:
            return [data] if len(data) else []
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error as exc:
                raise TranscodeError(f"the deflated data set is corrupt: {exc}") from None
        if data:
            self._parse(memoryview(data))
        return self._drain()

    def finish(self) -> list[bytes | memoryview]:
        """The end of the data set: the last output. Raises if it ended mid-element."""
        if self.passthrough:
            return []
        if self._inflate is not None:
            rest = self._inflate.flush()
            if rest:
                self._parse(memoryview(rest))
        if self._value_left or self._buffer:
            raise TranscodeError("the data set ends inside a data element")
        while len(self._stack) > 1:
            level = self._stack[-1]
            if level.remaining is not None and level.remaining > 0:
                raise TranscodeError(f"the data set ends inside a {level.kind}")
            if level.remaining is None:
                raise TranscodeError(f"the data set ends inside an undefined-length {level.kind}")
            self._close(level)
        out = self._drain()
        if self._deflate is not None:
            tail = self._deflate.flush()
            self._deflated_size += len(tail)
            if tail:
                out.append(tail)
            if self._deflated_size % 2:
                out.append(b"\x00")  # PS3.5 A.5: pad the deflated stream to even length
        return out

    # -- output ---------------------------------------------------------------------------

    def _emit(self, data: bytes | memoryview) -> None:
        if len(data):
            self._out.append(data)

    def _drain(self) -> list[bytes | memoryview]:
        out, self._out = self._out, []
        if self._deflate is None or not out:
            return out
        compressed = []
        for piece in out:
            block = self._deflate.compress(piece)
            if block:
                compressed.append(block)
                self._deflated_size += len(block)
        return compressed

    def _header(self, group: int, elem: int, vr: bytes | None, length: int) -> bytes:
        order = "<" if self._out_little else ">"
        if vr is None or self._out_implicit:
            return struct.pack(order + "HHI", group, elem, length)
        if vr in _LONG_VRS:
            return struct.pack(order + "HH2sHI", group, elem, vr, 0, length)
        return struct.pack(order + "HH2sH", group, elem, vr, length)

    # -- parsing ------------------------------------------------------------------------

    def _consume(self, n: int) -> None:
        """``n`` input bytes of the current containers were read."""
        for level in self._stack:
            if level.remaining is not None:
                level.remaining -= n
                if level.remaining < 0:
                    raise TranscodeError(f"an element overruns its {level.kind}'s length")

    def _parse(self, view: memoryview) -> None:
        pos = 0
        end = len(view)
        while True:
            if self._value_left:
                pos = self._stream_value(view, pos, end)
                if self._value_left:
                    return
            if pos >= end and not self._buffer:
                return
            self._close_finished()
            level = self._stack[-1]
            pos = self._gather(view, pos, end, 8)
            if pos < 0:
                return
            order = "<" if level.little else ">"
            group, elem = struct.unpack_from(order + "HH", self._buffer, 0)
            if group == 0xFFFE or level.implicit:
                vr = None
                size = 8
                length = struct.unpack_from(order + "I", self._buffer, 4)[0]
            else:
                vr = bytes(self._buffer[4:6])
                if vr not in _VALID_VRS:
                    raise TranscodeError(
                        f"({group:04X},{elem:04X}) has VR {vr!r}, not a PS3.5 VR: the data "
                        f"set is not in {_name(self.source)}"
                    )
                if vr in _LONG_VRS:
                    size = 12
                    pos = self._gather(view, pos, end, 12)
                    if pos < 0:
                        return
                    length = struct.unpack_from(order + "I", self._buffer, 8)[0]
                else:
                    size = 8
                    length = struct.unpack_from(order + "H", self._buffer, 6)[0]
            self._buffer.clear()
            self._consume(size)
            pos = self._element((group, elem), vr, length, view, pos, end)

    def _gather(self, view: memoryview, pos: int, end: int, need: int) -> int:
        """Bring the header buffer to ``need`` bytes; the new position, or -1 when the
        input ran out first (what there was is kept for the next ``feed``)."""
        have = len(self._buffer)
        if have < need:
            take = min(need - have, end - pos)
            self._buffer += view[pos:pos + take]
            pos += take
            if len(self._buffer) < need:
                return -1
        return pos

    def _close_finished(self) -> None:
        """Close every defined-length container whose content has all been read."""
        while len(self._stack) > 1 and self._stack[-1].remaining == 0:
            self._close(self._stack.pop())

    def _close(self, level: _Level) -> None:
        if level in self._stack:
            self._stack.remove(level)
        if level.out_defined:
            return
        if level.kind == "item":
            self._emit(self._header(*_ITEM_END, None, 0))
        elif level.kind == "sequence":
            self._emit(self._header(*_SEQUENCE_END, None, 0))

    def _element(self, tag: tuple[int, int], vr: bytes | None, length: int,
                 view: memoryview, pos: int, end: int) -> int:
        level = self._stack[-1]
        group, elem = tag
        if group == 0xFFFE:
            self._delimiter(tag, length, level)
            return pos
        if level.kind == "sequence":
            raise TranscodeError(
                f"({group:04X},{elem:04X}) found where a sequence item was expected"
            )
        values = level.values if level.values is not None else {}
        if vr is None:
            vr = self._dictionary_vr(tag, length, values)
        if length == _UNDEFINED:
            if vr == b"SQ" or vr == b"UN":
                # PS3.5 6.2.2: an undefined-length UN holds Implicit VR LE items.
                implicit = level.implicit if vr == b"SQ" else True
                little = level.little if vr == b"SQ" else True
                self._emit(self._header(group, elem, b"SQ", _UNDEFINED))
                self._stack.append(_Level("sequence", None, implicit, little, False, None))
                return pos
            if tag == _PIXEL_DATA:
                raise TranscodeError(
                    f"encapsulated Pixel Data in {_name(self.source)}: it is legal only in "
                    "compressed transfer syntaxes (PS3.5 A.4) and cannot be converted"
                )
            raise TranscodeError(f"({group:04X},{elem:04X}) {vr!r} has undefined length")
        if vr == b"SQ":
            keep = self._keep_lengths
            self._emit(self._header(group, elem, b"SQ", length if keep else _UNDEFINED))
            self._stack.append(_Level("sequence", length, level.implicit, level.little,
                                      keep, None))
            return pos
        if elem == 0x0000 and not self._keep_lengths:
            return self._skip(length, view, pos, end)  # Group Length: would be wrong
        out_vr = vr
        if not self._out_implicit and vr not in _LONG_VRS and length > _SHORT_MAX:
            out_vr = b"UN"
        self._emit(self._header(group, elem, out_vr, length))
        self._value_left = length
        self._value_width = _SWAP.get(vr, 0) if self._swap else 0
        self._value_tail = b""
        if tag in (_BITS_ALLOCATED, _PIXEL_REPRESENTATION) and length == 2:
            self._record = (tag, values, level.little)
        return pos

    def _delimiter(self, tag: tuple[int, int], length: int, level: _Level) -> None:
        """An item, item delimiter or sequence delimiter (PS3.5 7.5)."""
        if tag == _ITEM:
            if level.kind != "sequence":
                raise TranscodeError("an item outside a sequence")
            keep = self._keep_lengths and length != _UNDEFINED
            self._emit(self._header(*_ITEM, None, length if keep else _UNDEFINED))
            self._stack.append(_Level("item", None if length == _UNDEFINED else length,
                                      level.implicit, level.little, keep, {}))
            return
        if tag == _ITEM_END and level.kind == "item" and level.remaining is None:
            self._stack.pop()
            self._emit(self._header(*_ITEM_END, None, 0))
            return
        if tag == _SEQUENCE_END and level.kind == "sequence" and level.remaining is None:
            self._stack.pop()
            self._emit(self._header(*_SEQUENCE_END, None, 0))
            return
        raise TranscodeError(f"unexpected delimiter (FFFE,{tag[1]:04X}) in a {level.kind}")

    def _dictionary_vr(self, tag: tuple[int, int], length: int, values: dict) -> bytes:
        """The VR of an implicit-VR element (see the module doc)."""
        group, elem = tag
        if elem == 0x0000:
            return b"UL"  # Group Length (PS3.5 7.2)
        if group % 2:
            return b"UN"  # private: its VR is not in the dictionary (PS3.5 6.2.2)
        try:
            vr = dictionary_VR((group << 16) | elem)
        except KeyError:
            return b"UN"
        if vr == "US or SS":
            return b"SS" if values.get(_PIXEL_REPRESENTATION) == 1 else b"US"
        if vr in ("OB or OW", "OW or OB"):
            bits = values.get(_BITS_ALLOCATED)
            return b"OB" if bits is not None and bits <= 8 else b"OW"
        if vr == "US or OW" or vr == "US or SS or OW":
            return b"OW" if length > _SHORT_MAX else b"US"
        if len(vr) != 2:
            return b"UN"
        return vr.encode("ascii")

    def _skip(self, length: int, view: memoryview, pos: int, end: int) -> int:
        self._value_left = length
        self._value_width = -1  # read and discard
        self._value_tail = b""
        return self._stream_value(view, pos, end)

    def _stream_value(self, view: memoryview, pos: int, end: int) -> int:
        """Pass on what is here of the current value, swapped when the byte order
        changes; a value to remember is held until complete."""
        take = min(self._value_left, end - pos)
        if take <= 0:
            return pos
        chunk = view[pos:pos + take]
        pos += take
        self._value_left -= take
        self._consume(take)
        width = self._value_width
        if width < 0:
            return pos
        record = self._record
        if record is None and not width:
            self._emit(chunk)
            return pos
        data = self._value_tail + bytes(chunk)
        done = not self._value_left
        if record is not None:
            if not done:
                self._value_tail = data
                return pos
            tag, values, little = record
            self._record = None
            values[tag] = int.from_bytes(data[:2], "little" if little else "big")
        if not width:
            self._value_tail = b""
            self._emit(data)
            return pos
        usable = len(data) - len(data) % width
        if usable:
            self._emit(_swapped(data[:usable], width))
        if done:
            self._value_tail = b""
            self._emit(data[usable:])  # a malformed odd tail goes out as it is
        else:
            self._value_tail = data[usable:]
        return pos


def _swapped(data: bytes, width: int) -> bytes:
    """``data`` with every ``width``-byte unit reversed (its length is a multiple)."""
    values = array(_ARRAY_CODES[width])
    if values.itemsize != width:  # pragma: no cover - no such platform in use
        return b"".join(data[i:i + width][::-1] for i in range(0, len(data), width))
    values.frombytes(data)
    values.byteswap()
    return values.tobytes()


def transcode(data: bytes | memoryview, source: str, target: str) -> bytes:
    """The whole data set ``data`` converted from ``source`` to ``target``."""
    coder = Transcoder(source, target)
    return b"".join(bytes(b) for b in [*coder.feed(data), *coder.finish()])


def iter_transcoded(chunks: Iterable[bytes | memoryview], source: str,
                    target: str) -> Iterable[bytes | memoryview]:
    """Convert a stream of chunks (see :class:`Transcoder`)."""
    coder = Transcoder(source, target)
    for chunk in chunks:
        yield from coder.feed(chunk)
    yield from coder.finish()


def read_sop_uids(head: bytes | memoryview, transfer_syntax: str) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) from the first bytes of a data set.

    ``head`` is the start of the data set (a few KB are plenty; see ``_HEAD_LIMIT``) in
    ``transfer_syntax``; a deflated one is inflated just that far. Elements before
    (0008,0018) are skipped by their lengths. Either UID is "" when not found there.
    """
    data = bytes(head[:_HEAD_LIMIT])
    ts = str(transfer_syntax)
    if ts == DEFLATED_LE:
        try:
            data = zlib.decompressobj(-15).decompress(data, _HEAD_LIMIT)
        except zlib.error:
            return "", ""
    implicit = ts == IMPLICIT_LE
    order = ">" if ts == EXPLICIT_BE else "<"
    found: dict[int, str] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from(order + "HH", data, pos)
        if (group, elem) > (0x0008, 0x0018):
            break
        if implicit:
            length = struct.unpack_from(order + "I", data, pos + 4)[0]
            pos += 8
        else:
            vr = data[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > len(data):
                    break
                length = struct.unpack_from(order + "I", data, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from(order + "H", data, pos + 6)[0]
                pos += 8
        if length == _UNDEFINED or pos + length > len(data):
            break
        if group == 0x0008 and elem in (0x0016, 0x0018):
            found[elem] = data[pos:pos + length].decode("ascii", "replace").strip(" \x00")
        pos += length
    return found.get(0x0016, ""), found.get(0x0018, "")

