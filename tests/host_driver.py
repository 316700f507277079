"""A tiny launcher that makes simulated nodes hosts with clusterlab.host, for the tests.

It does what the launchers will do once they are wired (see the module's docstring):

    python tests/host_driver.py fork    node001 node002 -- CMD ...   # simulate: a forked agent per node
    python tests/host_driver.py keepers node001 node002 -- CMD ...   # srun: keepers + nsenter per task

Each node runs CMD once, with ``NODE_INDEX`` (0-based) and ``NODE_NAME`` in its
environment; every output line is printed as ``[NAME] line``. The first line on
stderr is the mode (``hosts: ...``), then the fallback note if there is one.
``--hold`` (keepers) prints ``KEEPERS <pid> ...`` instead and waits for EOF on stdin.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src"))

from clusterlab import host, procs
from clusterlab.errors import UsageError
from clusterlab.keepers import Keepers


def _env(index: int, name: str, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra, "NODE_INDEX": str(index), "NODE_NAME": name}


def _collect(name: str, proc: procs.Process) -> int:
    out, err = proc.stdout.read(), proc.stderr.read()
    code = proc.wait(60)
    for line in (out + err).decode(errors="replace").splitlines():
        os.write(1, f"[{name}] {line}\n".encode())  # one write per line: nodes print side by side
    return code


def run_forked(hosts: host.JobHosts, cmd: list[str], cwd: str) -> int:
    """simulate's shape: fork one 'agent' per node; it becomes the node, then spawns the worker."""
    sys.stdout.flush()
    children = []
    for index, name in enumerate(hosts.names):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                host.become(hosts, index)
                code = _collect(name, procs.spawn(cmd, _env(index, name, {}), cwd=cwd))
            finally:
                os._exit(code)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    return max(codes, key=abs)


def run_keepers(hosts: host.JobHosts, cmd: list[str], cwd: str, nestable: bool, hold: bool) -> int:
    """srun's shape: keepers hold the nodes; one process starts every task through nsenter."""
    with Keepers.start(hosts, nestable=nestable) as keepers:
        extra = keepers.environ()
        if hold:
            print("KEEPERS", *keepers.pids, "INODES", *keepers.inodes, flush=True)
            sys.stdin.read()
            return 0
        started = [(name, procs.spawn(keepers.enter_argv(i, cwd) + cmd, _env(i, name, extra), cwd=cwd))
                   for i, name in enumerate(hosts.names)]
        codes = [_collect(name, proc) for name, proc in started]
    return max(codes, key=abs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("way", choices=("fork", "keepers"))
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--self-map", action="store_true", help="keepers not nestable (user mapped to itself)")
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--cwd", default=os.getcwd())
    parser.add_argument("names", nargs="+")
    args, cmd = parser.parse_args(argv[: argv.index("--")]), argv[argv.index("--") + 1:]
    try:
        hosts = host.plan(args.names, args.mode)
    except UsageError as exc:
        print(f"host_driver: error: {exc}", file=sys.stderr)
        return 2
    print(hosts, file=sys.stderr, flush=True)
    if hosts.note:
        print(hosts.note, file=sys.stderr, flush=True)
    if args.way == "fork":
        return run_forked(hosts, cmd, args.cwd)
    return run_keepers(hosts, cmd, args.cwd, not args.self_map, args.hold)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl-C: the keepers are closed on the way out
        sys.exit(130)
