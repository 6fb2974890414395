"""bench/syscalls.py: strace's summary table and the per-instance difference."""

from __future__ import annotations

import pytest

from bench.syscalls import parse_summary, per_instance

# strace -f -c -q output: a row with errors, rows without, the separator and the total.
TABLE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 52.11    0.001042           5       200           write
 30.00    0.000600           3       180        20 openat
 17.89    0.000358           1       310           read
------ ----------- ----------- --------- --------- ----------------
100.00    0.002000                   690        20 total
"""


def test_parse_summary_reads_calls_by_name() -> None:
    assert parse_summary(TABLE) == {"write": 200, "openat": 180, "read": 310}
    assert parse_summary("") == {}


def test_per_instance_is_the_difference_over_the_extra_instances() -> None:
    big = {"write": 420, "read": 210, "futex": 5}
    small = {"write": 20, "read": 10, "futex": 5, "mkdir": 1}
    assert per_instance(big, small, 104, 4) == {"write": 4.0, "read": 2.0}
    with pytest.raises(ValueError):
        per_instance(big, small, 4, 4)
