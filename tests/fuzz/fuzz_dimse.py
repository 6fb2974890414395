#!/usr/bin/env python3
"""atheris harness: DIMSE command sets and message assembly (engine/_dimse.py, PS3.7).

Input: byte 0 even -> the rest is one command set for decode_command; odd -> the rest is
a list of PDVs for MessageAssembler, each ``context flags length data...`` (flags bit 0
command, bit 1 last). Guarantees: tests/fuzz/targets.py check_command / check_assembler.

    python tests/fuzz/fuzz_dimse.py -atheris_runs=200000
"""

from __future__ import annotations

import _harness
from engine._pdu import PDV
from tests.fuzz import seeds, wire
from tests.fuzz.targets import check_assembler, check_command


def pdvs_of(data: bytes) -> list[PDV]:
    out, pos = [], 0
    while pos + 3 <= len(data):
        context, flags, length = data[pos], data[pos + 1], data[pos + 2]
        payload = data[pos + 3 : pos + 3 + length]
        out.append(PDV(context, bool(flags & 1), bool(flags & 2), memoryview(payload)))
        pos += 3 + length
    return out


def frame(context: int, flags: int, payload: bytes) -> bytes:
    out = b""
    for i in range(0, max(len(payload), 1), 255):
        piece = payload[i : i + 255]
        last = i + 255 >= len(payload)
        out += bytes((context, (flags & 1) | (flags & 2 if last else 0), len(piece))) + piece
    return out


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        check_assembler(pdvs_of(data[1:]))
    else:
        check_command(data[1:])


if __name__ == "__main__":
    commands = seeds.command_seeds()
    dataset = wire.dataset(wire.CT_IMAGE, "1.2.3.4.5", "1.2.3.4", "1.2.3.4.6")
    assembled = [
        b"\x01" + frame(3, 3, wire.c_store_rq(1, wire.CT_IMAGE, "1.2.3.4.5")) + frame(3, 2, dataset),
        b"\x01" + frame(1, 3, wire.c_echo_rq()) + frame(1, 3, wire.c_echo_rq(2)),
    ]
    _harness.run(test_one_input, [b"\x00" + c for c in commands] + assembled)
