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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterlab",
        description="Multi-Node Distributed Training Simulation (LOCAL): launch, inspect and "
        "break multi-node jobs on one machine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature module not written yet
            if not (exc.name and name.startswith(exc.name)):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
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
