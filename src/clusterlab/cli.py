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
import sys

from .errors import UsageError

# Modules that contribute subcommands, in the order `clusterlab --help` lists them.
COMMAND_MODULES = (
    "clusterlab.run",
    "clusterlab.env",
    "clusterlab.slurm.cli",
    "clusterlab.zero.cli",
)

# Where the core subcommands live. `clusterlab simulate ...` then imports only
# clusterlab.run, not every feature module: the launcher's start-up is on the
# critical path of every job (see docs/performance.md). Any other word, and
# `clusterlab --help`, build the whole parser.
_HOME = {"launch": "clusterlab.run", "simulate": "clusterlab.run", "env": "clusterlab.env"}


def get_args_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` whose first word is a core subcommand, only that module's part."""
    parser = argparse.ArgumentParser(
        prog="clusterlab",
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
