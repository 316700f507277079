"""The ``clusterlab`` command line: one subcommand per lab part.

Each feature module owns its subcommands through a ``register(subparsers)``
function that adds parsers and sets ``func=`` to a callable taking the parsed
namespace and returning an exit status. This file only wires them together and
turns user mistakes (:class:`~clusterlab.errors.UsageError`) into one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import UsageError

# Modules that contribute subcommands, in the order `clusterlab --help` lists them.
COMMAND_MODULES = (
    "clusterlab.run",
    "clusterlab.env",
    "clusterlab.slurm.cli",
    "clusterlab.zero.cli",
    "clusterlab.exercise",
)

# Where the core subcommands live. `clusterlab simulate ...` then imports only
# clusterlab.run, not every feature module: the launcher's start-up is on the
# critical path of every job (see docs/performance.md). Any other word, and
# `clusterlab --help`, build the whole parser.
_HOME = {"launch": "clusterlab.run", "simulate": "clusterlab.run", "env": "clusterlab.env"}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without importing :mod:`shutil`.

    argparse builds a formatter for every ``add_argument`` call, and the stock one
    imports shutil to measure the terminal: ~3 ms on the start-up of every job.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`argparse.RawDescriptionHelpFormatter`, sized like :class:`HelpFormatter`."""


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it: $COLUMNS, the terminal, or 80."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def get_args_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` whose first word is a core subcommand, only that module's part."""
    parser = argparse.ArgumentParser(
        prog="clusterlab",
        formatter_class=HelpFormatter,
        description="Multi-Node Distributed Training Simulation (LOCAL): launch, inspect and "
        "break multi-node jobs on one machine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    home = _HOME.get(argv[0]) if argv else None
    for name in (home,) if home else COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature module not written yet
            if not (exc.name and name.startswith(exc.name)):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = get_args_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"clusterlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """The ``clusterlab`` console script: :func:`main`, and for a launch a quick exit.

    A launcher that has returned has reaped its agents and workers and closed
    its sockets; tearing down the interpreter's modules after that would add
    ~5 ms to every job (docs/performance.md). Other subcommands exit normally,
    so their ``atexit`` clean-ups run.
    """
    code = main()
    if sys.argv[1:2] in (["launch"], ["simulate"]):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console()
