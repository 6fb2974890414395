"""``scpfleet echo``: C-ECHO an SCP and time it (PS3.7 9.1.5, PS3.4 Annex A).

Theory of operation: one association proposing only the Verification SOP Class, then
``--count`` C-ECHOs on it back to back, each printed with its round-trip time, then
A-RELEASE. A refusal is told in words: the A-ASSOCIATE-RJ's result, source and reason
(PS3.8 Table 9-21), an abort, a timeout or a connection failure. Exit status 0 when the
association was accepted and every C-ECHO answered Success, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from engine import aio
from engine.presentation import build_context
from engine.sop_class import VerificationSOPClass
from engine.status import status_category, status_description

from .common import (
    add_target_arguments,
    check_target,
    open_association,
    positive_int,
    quiet_engine,
    requestor_config,
    rsp_cause,
)

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Verify that a DICOM SCP answers: request an association proposing the Verification
SOP Class, send C-ECHO --count times and print each result with its round-trip time.
Exit status 0 when every C-ECHO answered Success, 1 when the association was rejected
or aborted or an echo failed or went unanswered (the reason is printed), 2 on bad
arguments."""

EPILOG = """\
examples:
  scpfleet echo 127.0.0.1 11112
  scpfleet echo pacs.example 104 --aec PACS --aet MYSCU --count 5 --timeout 5"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "echo",
        help="C-ECHO an SCP and print the round-trip time",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(parser)
    parser.add_argument(
        "--count", type=positive_int, default=1, metavar="N",
        help="C-ECHOs to send on the association (default 1)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Entry point for ``scpfleet echo``; returns the exit status."""
    check_target(args.host)
    quiet_engine(args.verbose)
    loop = aio.new_event_loop()
    try:
        return loop.run_until_complete(_echo(args))
    finally:
        loop.close()


async def _echo(args: argparse.Namespace) -> int:
    out = sys.stdout
    config = requestor_config(args, [build_context(VerificationSOPClass)])
    where = f"{args.aec}@{args.host}:{args.port}"
    outcome = await open_association(args.host, args.port, config)
    assoc = outcome.assoc
    if assoc is None:
        print(f"echo {where}: failed: {outcome.reason}", file=out)
        return 1
    if not assoc.accepted_contexts:
        print(f"echo {where}: failed: the Verification SOP Class was not accepted", file=out)
        await assoc.release()
        return 1
    print(f"association with {where} accepted in {outcome.setup_s * 1e3:.2f} ms", file=out)
    failures = 0
    for n in range(1, args.count + 1):
        start = time.perf_counter()  # loop.time() is millisecond-grained on uvloop
        try:
            rsp = await assoc.send_c_echo()
        except RuntimeError:  # the association ended under us: no response
            rsp = None
        elapsed = (time.perf_counter() - start) * 1e3
        status = getattr(rsp, "Status", None) if rsp is not None else None
        if status is None:
            _, words = rsp_cause(assoc)
            print(f"C-ECHO {n}: failed after {elapsed:.2f} ms: {words}", file=out)
            return 1
        ok = status_category(status) == "Success"
        failures += not ok
        print(
            f"C-ECHO {n}: {status_description(status)} (0x{status:04X}) in {elapsed:.2f} ms",
            file=out,
        )
    await assoc.release()
    print("association released" if assoc.is_released else "association ended", file=out)
    return 1 if failures else 0
