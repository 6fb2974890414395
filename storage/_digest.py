"""Content digests of stored data sets: which algorithms there are, and what each proves.

Theory of operation: every stored instance's record carries the digest of its data set
bytes as received and the name of the algorithm that made it (``digest_algorithm``).
The writer computes it while the bytes stream by; whoever checks a file later (the
indexer's tie-break on coarse timestamps, ``scpfleet verify --digests``, recovery,
Storage Commitment with verification) hashes the file's data set again with *the
record's* algorithm, through :func:`new_digest`, so records of both kinds live side by
side in one index.

- ``xxh3-128`` (the default): XXH3 with a 128-bit result. Fast enough to cost nothing
  next to writing the bytes (a few microseconds per 0.5 MB CT slice), and it detects
  accidental corruption -- a flipped bit, a torn or truncated write, a block of another
  file -- with near certainty. It is not cryptographic: someone who can write the files
  can make different bytes with the same digest.
- ``sha256``: SHA-256. About 0.3 ms of CPU per 0.5 MB; it also detects deliberate
  tampering with a file, as long as the index itself (where the digest is kept) is
  trusted.

This module only names and builds hashers; it opens no file.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import xxhash

__all__ = ["DIGEST_ALGORITHMS", "DEFAULT_DIGEST", "DigestAlgorithm", "new_digest"]

DigestAlgorithm = Literal["xxh3-128", "sha256"]
#: The algorithms a record's ``digest_algorithm`` may name, the default first.
DIGEST_ALGORITHMS: tuple[str, ...] = ("xxh3-128", "sha256")
DEFAULT_DIGEST: DigestAlgorithm = "xxh3-128"


def new_digest(algorithm: str) -> Any:
    """A fresh hasher (``update``, ``hexdigest``) for ``algorithm``; ``ValueError`` for a
    name that is not one of :data:`DIGEST_ALGORITHMS`."""
    if algorithm == "xxh3-128":
        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown digest algorithm {algorithm!r} (known: {', '.join(DIGEST_ALGORITHMS)})")
