"""The ``echo``, ``load`` and ``send`` subcommands of ``scpfleet``.

Theory of operation: :func:`add_commands` adds the three subcommands to any argparse
subparsers object (``workers.cli`` calls it for the ``scpfleet`` console script); each
sets ``func(args) -> exit status``. :func:`main` is the same CLI standalone
(``python -m bench.cli echo|load|send ...``). Bad input never shows a traceback: argparse
errors and :class:`~bench.common.UsageError` become one ``scpfleet CMD: error: ...`` line
on stderr and exit status 2. Commands import their modules only when run, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import NoReturn, Sequence

from .common import UsageError

__all__ = ["add_commands", "main", "run_command"]

#: Exit status for usage errors (argparse's, and ours).
EXIT_USAGE = 2


def _one_line_error(self: argparse.ArgumentParser, message: str) -> NoReturn:
    """argparse's error(), less the usage block: one line, exit status 2."""
    self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _quiet_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    return parser


def run_command(func, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Run a subcommand, turning usage errors into one line and exit status 2."""
    try:
        return int(func(args))
    except UsageError as exc:
        prog = getattr(args, "_prog", "scpfleet")
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``echo``, ``load`` and ``send`` to ``subparsers``; each sets ``func``."""
    from . import echo, load, send

    for module in (echo, load, send):
        parser = _quiet_errors(module.add_parser(subparsers))
        func = parser.get_default("func")
        parser.set_defaults(
            func=lambda args, _func=func: run_command(_func, args), _prog=parser.prog
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpfleet",
        description="scpfleet load-generation tools: echo, load, send.",
    )
    _quiet_errors(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
