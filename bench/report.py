"""Counting, percentiles and the summary/JSON output shared by ``load`` and ``send``.

Theory of operation: each sender process keeps a :class:`Histogram` of latencies (an
HDR-style log-linear bucket table: exact below 128 us, then 64 buckets per power of two,
so any percentile is within 1/64 of the true value) and a :class:`Tally` of counters.
Both are plain data that msgspec encodes for the trip to the parent, and both merge by
addition, so the parent's totals do not depend on how work was split. This module
formats what it is given: it does no I/O other than writing the text or JSON it is
asked to write, and never reads a clock.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import msgspec

__all__ = [
    "PERCENTILES",
    "Histogram",
    "Tally",
    "merge_tallies",
    "status_key",
    "format_count",
    "format_bytes",
    "format_duration",
    "format_table",
    "progress_text",
    "latency_summary",
    "write_json",
]

# Sub-bucket resolution: 2**7 exact values, then 2**6 buckets per octave (<= 1.6 % error).
_SUB_BITS = 7
_SUB_COUNT = 1 << _SUB_BITS
_HALF = _SUB_COUNT >> 1
#: Percentiles every latency summary reports.
PERCENTILES = (50.0, 95.0, 99.0)


def _bucket(value: int) -> int:
    """Bucket index of a non-negative integer value (microseconds)."""
    if value < _SUB_COUNT:
        return value
    shift = value.bit_length() - _SUB_BITS
    return _SUB_COUNT + (shift - 1) * _HALF + ((value >> shift) - _HALF)


def _bucket_bounds(index: int) -> tuple[int, int]:
    """The [low, high] integer values that land in bucket ``index``."""
    if index < _SUB_COUNT:
        return index, index
    shift, offset = divmod(index - _SUB_COUNT, _HALF)
    shift += 1
    mantissa = offset + _HALF
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram(msgspec.Struct):
    """A mergeable latency histogram in integer microseconds."""

    buckets: dict[int, int] = msgspec.field(default_factory=dict)
    count: int = 0
    total: int = 0
    minimum: int = 0
    maximum: int = 0

    def record(self, seconds: float) -> None:
        us = int(seconds * 1e6)
        if us < 0:
            us = 0
        index = _bucket(us)
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1
        if self.count == 0 or us < self.minimum:
            self.minimum = us
        if us > self.maximum:
            self.maximum = us
        self.count += 1
        self.total += us

    def merge(self, other: "Histogram") -> None:
        if other.count == 0:
            return
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.minimum = other.minimum if self.count == 0 else min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        self.count += other.count
        self.total += other.total

    def percentile(self, pct: float) -> float:
        """The value (us) at percentile ``pct`` (0-100): nearest rank, bucket midpoint,
        clamped to the exact minimum and maximum."""
        if self.count == 0:
            return 0.0
        rank = max(1, -(-self.count * pct // 100))  # ceil without floats drifting
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                low, high = _bucket_bounds(index)
                mid = (low + high) / 2
                return float(min(max(mid, self.minimum), self.maximum))
        return float(self.maximum)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class Tally(msgspec.Struct):
    """Counters of one sender (or of all of them, once merged)."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0
    associations: int = 0
    warnings_by_status: dict[str, int] = msgspec.field(default_factory=dict)
    failures_by_status: dict[str, int] = msgspec.field(default_factory=dict)
    failures_by_cause: dict[str, int] = msgspec.field(default_factory=dict)
    latency: Histogram = msgspec.field(default_factory=Histogram)
    setup: Histogram = msgspec.field(default_factory=Histogram)

    def fail_status(self, status: int) -> None:
        key = status_key(status)
        self.failures_by_status[key] = self.failures_by_status.get(key, 0) + 1
        self.failed += 1

    def warn_status(self, status: int) -> None:
        key = status_key(status)
        self.warnings_by_status[key] = self.warnings_by_status.get(key, 0) + 1

    def fail_cause(self, cause: str, instances: int = 1) -> None:
        """Count ``instances`` failed for ``cause`` (rejected, aborted, timeout ...).

        Every failed instance is counted once, by status or by cause, so ``failed`` is
        always the sum of both tables.
        """
        if instances <= 0:
            return
        self.failures_by_cause[cause] = self.failures_by_cause.get(cause, 0) + instances
        self.failed += instances

    def merge(self, other: "Tally") -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.bytes += other.bytes
        self.associations += other.associations
        for mine, theirs in (
            (self.warnings_by_status, other.warnings_by_status),
            (self.failures_by_status, other.failures_by_status),
            (self.failures_by_cause, other.failures_by_cause),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        self.latency.merge(other.latency)
        self.setup.merge(other.setup)


def merge_tallies(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def status_key(status: int) -> str:
    """A DIMSE status as the JSON key ``"0xA700"``."""
    return f"0x{status:04X}"


def latency_summary(hist: Histogram) -> dict[str, float]:
    """min/mean/p50/p95/p99/max of ``hist`` in milliseconds (3 decimals)."""
    out = {"count": hist.count, "min": hist.minimum / 1e3, "mean": hist.mean / 1e3}
    for pct in PERCENTILES:
        out[f"p{pct:g}"] = hist.percentile(pct) / 1e3
    out["max"] = hist.maximum / 1e3
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def format_count(n: float) -> str:
    if n >= 100:
        return f"{n:,.0f}"
    return f"{n:,.1f}"


def format_bytes(n: float) -> str:
    """Decimal units, as MB/s is in this toolkit's reports."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)} min {secs:04.1f} s"


def format_table(rows: Iterable[tuple[str, Any]]) -> str:
    """Two aligned columns: label, value."""
    rows = list(rows)
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def progress_text(
    done: int, total: int | None, failed: int, elapsed: float, rate: float, mbps: float,
    extra: str = "",
) -> str:
    """One progress line (no newline): counts, instances/s, MB/s, failures."""
    of = f"/{total}" if total else ""
    pct = f" {100 * done / total:5.1f}%" if total else ""
    return (
        f"{done}{of}{pct}  {format_count(rate)} inst/s  {mbps:.2f} MB/s  "
        f"failed {failed}  {elapsed:.1f} s{extra}"
    )


def write_json(path: str | os.PathLike[str], report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON, atomically (write, then rename)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fobj:
        json.dump(report, fobj, indent=2, sort_keys=False)
        fobj.write("\n")
    os.replace(tmp, path)
