"""Seed inputs for the fuzzers: valid PDUs, command sets and data sets, and a mutator.

Theory of operation: random bytes rarely get past a PDU header, so both the Hypothesis
properties (tests/hardening/test_fuzz.py) and the atheris harnesses (tests/fuzz/fuzz_*.py)
start from well-formed inputs that exercise every item, sub-item and element the
decoders know, and corrupt them with :func:`mutate`: byte flips, insertions, deletions,
truncation, and "interesting" values written over the length fields that matter most.
Everything is deterministic and built from tests/fuzz/wire.py plus the engine's own
encoder for the messages a peer answers with (A-ASSOCIATE-AC, responses).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tests.fuzz import wire

__all__ = [
    "pdu_seeds",
    "associate_seeds",
    "command_seeds",
    "dataset_seeds",
    "TRANSFER_SYNTAXES",
    "INTERESTING",
    "mutate",
]

TRANSFER_SYNTAXES = (
    wire.IMPLICIT_LE,
    wire.EXPLICIT_LE,
    wire.EXPLICIT_BE,
    wire.DEFLATED_LE,
    wire.JPEG_BASELINE,
)

#: Values written over length fields: empty, one, off-by-one around limits, all ones.
INTERESTING = (0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80, 0xFF, 0x100, 0x3FFE, 0x3FFF, 0x4000,
               0x7FFF, 0x8000, 0xFFFE, 0xFFFF, 0x10000, 0xFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE,
               0xFFFFFFFF)


def _lp(data: bytes) -> bytes:
    """2-byte length prefix (PS3.7 D.3.3.4-D.3.3.7)."""
    return struct.pack(">H", len(data)) + data


def associate_seeds() -> list[bytes]:
    """A-ASSOCIATE-RQ/AC PDUs with every item and sub-item type (PS3.8 9.3.2-9.3.3, Annex D,
    PS3.7 D.3.3)."""
    rich_user_info = wire.user_information(
        extra=(
            wire.item(0x53, struct.pack(">HH", 3, 1))
            + wire.item(0x54, _lp(wire.CT_IMAGE.encode()) + b"\x01\x01")
            + wire.item(0x56, _lp(wire.CT_IMAGE.encode()) + b"\x01\x00\x01")
            + wire.item(0x57, _lp(wire.CT_IMAGE.encode()) + _lp(b"1.2.840.10008.4.2")
                        + _lp(_lp(b"1.2.840.10008.5.1.4.1.1.2.1")))
            + wire.item(0x58, b"\x02\x01" + _lp(b"user") + _lp(b"secret"))
        )
    )
    rq_plain = wire.associate_rq()
    rq_rich = wire.associate_rq(
        contexts=(
            (1, wire.VERIFICATION, (wire.IMPLICIT_LE,)),
            (3, wire.CT_IMAGE, (wire.EXPLICIT_LE, wire.IMPLICIT_LE, wire.DEFLATED_LE)),
            (5, wire.SECONDARY_CAPTURE, (wire.JPEG_BASELINE,)),
        ),
        user_info=rich_user_info,
    )
    ac_items = (
        wire.item(0x21, b"\x01\x00\x00\x00" + wire.item(0x40, wire.IMPLICIT_LE.encode()))
        + wire.item(0x21, b"\x03\x00\x03\x00" + wire.item(0x40, b""))
    )
    ac_body = (
        struct.pack(">H2x", 1) + b"ANY-SCP".ljust(16) + b"HARDENING".ljust(16) + bytes(32)
        + wire.item(0x10, wire.APPLICATION_CONTEXT.encode())
        + ac_items
        + wire.user_information(extra=wire.item(0x59, _lp(b"token")))
    )
    return [rq_plain, rq_rich, wire.pdu(0x02, ac_body)]


def command_seeds() -> list[bytes]:
    """Command sets (PS3.7 Annex E) of the messages the engine decodes."""
    from engine._dimse import (
        CCancelRQ,
        CEchoRSP,
        CFindRSP,
        CGetRSP,
        CMoveRQ,
        CStoreRSP,
        NActionRQ,
        NEventReportRSP,
        encode_command,
    )

    return [
        wire.c_echo_rq(7),
        wire.c_store_rq(9, wire.CT_IMAGE, "1.2.826.0.1.3680043.2.1125.1"),
        encode_command(CStoreRSP(9, 0xA900, wire.CT_IMAGE, "1.2.3.4", "bad data set", (0x00080018,))),
        encode_command(CEchoRSP(7, 0x0000)),
        encode_command(CMoveRQ(4, "1.2.840.10008.5.1.4.1.2.2.2", b"ARCHIVE", 2)),
        encode_command(CFindRSP(3, 0xFF00, "1.2.840.10008.5.1.4.1.2.2.1", command_data_set_type=1)),
        encode_command(CGetRSP(5, 0xFF00, None, 3, 2, 0, 1, "x", (0x00100010,))),
        encode_command(CCancelRQ(3)),
        encode_command(NActionRQ(6, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1, 1)),
        encode_command(NEventReportRSP(8, 0x0110, "1.2.3", "1.2.3.4", 2, "failed", 7)),
        wire.command_set([(0x0002, wire.ui(wire.CT_IMAGE)), (0x0100, wire.us(0x0140)),
                          (0x0110, wire.us(3)), (0x0800, wire.us(0x0001))]),
    ]


def dataset_seeds(transfer_syntax: str) -> list[bytes]:
    """Data sets in ``transfer_syntax``: the minimal one, one with pixel data, one with a
    sequence of undefined length before the attributes storage reads."""
    plain = wire.dataset(wire.CT_IMAGE, "1.2.3.4.5", "1.2.3.4", "1.2.3.4.6", transfer_syntax)
    pixels = wire.dataset(wire.CT_IMAGE, "1.2.3.4.7", "1.2.3.4", "1.2.3.4.6", transfer_syntax,
                          pixel_bytes=300)
    seeds = [plain, pixels]
    if transfer_syntax not in (wire.DEFLATED_LE,):
        seeds.append(_with_leading_sequence(transfer_syntax))
    return seeds


def _with_leading_sequence(transfer_syntax: str) -> bytes:
    """(0008,0005) CS then (0008,0006) SQ of undefined length holding one item of
    undefined length, then the usual attributes (PS3.5 7.5)."""
    implicit = transfer_syntax == wire.IMPLICIT_LE
    order = ">" if transfer_syntax == wire.EXPLICIT_BE else "<"
    if implicit:
        charset = struct.pack("<HHI", 8, 5, 10) + b"ISO_IR 100"
        seq = struct.pack("<HHI", 8, 6, 0xFFFFFFFF)
    else:
        charset = struct.pack(f"{order}HH2sH", 8, 5, b"CS", 10) + b"ISO_IR 100"
        seq = struct.pack(f"{order}HH2s2xI", 8, 6, b"SQ", 0xFFFFFFFF)
    inner = (struct.pack(f"{order}HHI", 0x0008, 0x0100, 4) + b"ABCD") if implicit else (
        struct.pack(f"{order}HH2sH", 0x0008, 0x0100, b"SH", 4) + b"ABCD")
    item = struct.pack(f"{order}HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack(
        f"{order}HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack(f"{order}HHI", 0xFFFE, 0xE0DD, 0)
    rest = wire.dataset(wire.CT_IMAGE, "1.2.3.4.8", "1.2.3.4", "1.2.3.4.6", transfer_syntax)
    return charset + seq + item + seq_end + rest


def pdu_seeds() -> list[bytes]:
    """One of every PDU type, P-DATA-TF with several PDVs of commands and data."""
    command = wire.c_store_rq(1, wire.CT_IMAGE, "1.2.3.4.5")
    data = wire.dataset(wire.CT_IMAGE, "1.2.3.4.5", "1.2.3.4", "1.2.3.4.6")
    return associate_seeds() + [
        wire.associate_rj(1, 1, 3),
        wire.p_data(wire.pdv(3, wire.MCH_COMMAND_LAST, command)),
        wire.p_data(wire.pdv(3, wire.MCH_DATA, data[:40]), wire.pdv(3, wire.MCH_DATA_LAST, data[40:])),
        wire.p_data(wire.pdv(1, wire.MCH_COMMAND, wire.c_echo_rq()[:10]),
                    wire.pdv(1, wire.MCH_COMMAND_LAST, wire.c_echo_rq()[10:])),
        wire.RELEASE_RQ,
        wire.RELEASE_RP,
        wire.abort(2, 6),
    ]


def mutate(seed: bytes, ops: Sequence[tuple[int, int, int]]) -> bytes:
    """Apply ``ops``, each ``(kind, position, value)``, to ``seed``.

    kind % 7: 0 flip a bit, 1 set a byte, 2 insert a byte, 3 delete a byte, 4 truncate,
    5 write an INTERESTING value as a big-endian 16-bit field, 6 as a 32-bit field (the
    PDU and PDV lengths are big endian; element lengths are little endian, which a flip
    or a set reaches too). Positions wrap around the current length.
    """
    data = bytearray(seed)
    for kind, position, value in ops:
        if not data:
            data.append(value & 0xFF)
            continue
        pos = position % len(data)
        op = kind % 7
        if op == 0:
            data[pos] ^= 1 << (value % 8)
        elif op == 1:
            data[pos] = value & 0xFF
        elif op == 2:
            data.insert(pos, value & 0xFF)
        elif op == 3:
            del data[pos]
        elif op == 4:
            del data[pos:]
        elif op == 5:
            data[pos : pos + 2] = struct.pack(">H", INTERESTING[value % len(INTERESTING)] & 0xFFFF)
        else:
            data[pos : pos + 4] = struct.pack(">I", INTERESTING[value % len(INTERESTING)])
    return bytes(data)
