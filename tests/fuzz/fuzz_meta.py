#!/usr/bin/env python3
"""atheris harness: storage's streaming metadata walk (storage/_meta.py, PS3.5 7, A.5).

Input: byte 0 picks the transfer syntax (Implicit LE, Explicit LE, Explicit BE,
Deflated, JPEG Baseline), byte 1 the fragment size (1..256), the rest is the data set.
Guarantee (tests/fuzz/targets.py check_extractor): never raises; the same result and
error verdict whole, in fragments and byte by byte.

    python tests/fuzz/fuzz_meta.py -atheris_runs=200000
"""

from __future__ import annotations

import _harness
from tests.fuzz import seeds
from tests.fuzz.targets import check_extractor


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    ts = seeds.TRANSFER_SYNTAXES[data[0] % len(seeds.TRANSFER_SYNTAXES)]
    size = data[1] + 1
    body = data[2:]
    check_extractor(ts, body, [size] * (len(body) // size + 1), bytewise_limit=300)


if __name__ == "__main__":
    corpus = [bytes((i, 7 * i + 3)) + ds
              for i, ts in enumerate(seeds.TRANSFER_SYNTAXES) for ds in seeds.dataset_seeds(ts)]
    _harness.run(test_one_input, corpus)
