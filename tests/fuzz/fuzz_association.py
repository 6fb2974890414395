#!/usr/bin/env python3
"""atheris harness: one transport connection's whole stack (engine/_connection.py: PDU
framing, the PS3.8 Table 9-10 machine, ACSE negotiation, DIMSE assembly).

Input: byte 0 picks the state the connection is first driven to by valid traffic (Sta2,
Sta6 mid-command or mid-data-set, Sta13 after release/reject/abort, requestor Sta5/6/7:
tests/fuzz/targets.py STATES), byte 1 the read size (1..256); the rest is what the peer
sends next. The service user answers as engine/aio.py does (evaluate_request on every
A-ASSOCIATE-RQ). Guarantee (check_connection): nothing raises, every PDU we send is
well formed, and closing the transport always ends in Sta1.

    python tests/fuzz/fuzz_association.py -atheris_runs=200000
"""

from __future__ import annotations

import _harness
from tests.fuzz import seeds
from tests.fuzz.targets import STATES, check_connection, split

_STATE_NAMES = sorted(STATES)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    state = _STATE_NAMES[data[0] % len(_STATE_NAMES)]
    size = data[1] + 1
    stream = data[2:]
    check_connection(state, split(stream, [size] * (len(stream) // size + 1)))


if __name__ == "__main__":
    corpus = [bytes((i % len(_STATE_NAMES), 64)) + pdu
              for i, pdu in enumerate(seeds.pdu_seeds() * 2)]
    _harness.run(test_one_input, corpus)
