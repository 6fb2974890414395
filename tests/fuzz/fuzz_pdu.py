#!/usr/bin/env python3
"""atheris harness: the PDU framer and decoder (engine/_pdu.py, PS3.8 9.3).

Input: byte 0 chooses the read size (1..256), the rest is the stream a peer sends.
Guarantee (tests/fuzz/targets.py check_pdu_stream): parse or RemoteProtocolError with a
Table 9-26 A-ABORT, the same verdict whole, in reads of that size and byte by byte.

    python tests/fuzz/fuzz_pdu.py -atheris_runs=200000
"""

from __future__ import annotations

import _harness
from tests.fuzz import seeds
from tests.fuzz.targets import check_pdu_stream


def test_one_input(data: bytes) -> None:
    if not data:
        return
    size = data[0] + 1
    stream = data[1:]
    check_pdu_stream(stream, [size] * (len(stream) // size + 1), bytewise_limit=256)


if __name__ == "__main__":
    pdus = seeds.pdu_seeds()
    _harness.run(test_one_input, [bytes((i * 37 % 256,)) + pdu for i, pdu in enumerate(pdus)]
                 + [b"\x10" + b"".join(pdus)])
