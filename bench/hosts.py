"""What making simulated nodes hosts costs (clusterlab.host), next to the launch floor.

    python bench/hosts.py            # about a minute on 2 cores (Linux, as root or with user namespaces)
    python bench/hosts.py --quick    # a few seconds: checks that it runs

1. **launch**: 2 nodes x 4 ranks, hello + one barrier + exit, interleaved and repeated:
   the floor (8 bare interpreters), ``clusterlab simulate``, and the same in host mode
   (``workers/simulate_hosts.py``: one probe, then each forked agent becomes its node).
   The target of issue 12: host mode within 2.5 x the floor.
2. **per node and per task**, timed in this process (median of many):
   ``plan()`` (the forked probe); a fork whose child becomes a node against a bare
   fork, and ``become()`` timed inside the child; keepers started and closed, per
   node; a task (``true``) spawned through ``nsenter`` against the same task without
   it, both with procs.spawn's ``setpriv --pdeathsig`` prefix.

Prints one Markdown table per figure; nothing is written to bench/results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import PYTHON, floor, run_together, sweep  # noqa: E402

from clusterlab import host, procs  # noqa: E402
from clusterlab.keepers import Keepers  # noqa: E402

NODES = ("node001", "node002")


def launch(repeats: int, timeout: float = 120) -> dict[str, list[float]]:
    hello = str(HERE / "workers" / "hello_clusterlab.py")
    args = ["--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0", hello]
    peers = {
        "floor": lambda: floor(8, timeout),
        "simulate": lambda: run_together([[PYTHON, "-m", "clusterlab", "simulate", *args]], timeout).seconds,
        "simulate, host mode": lambda: run_together([[PYTHON, str(HERE / "workers" / "simulate_hosts.py"), *args]],
                                                    timeout).seconds,
    }
    samples: dict[str, list[float]] = {name: [] for name in peers}
    for round_ in range(repeats + 1):  # one warm-up round
        for name, fn in peers.items():
            value = fn()
            if round_:
                samples[name].append(value)
    return samples


def _timed(fn, n: int) -> float:
    """Median wall time of ``fn()`` over ``n`` calls, in milliseconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _fork(then) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            then()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _become_in_child(hosts: host.JobHosts) -> float:
    """become() itself, timed inside a forked child (the fork and the wait are not counted)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            start = time.perf_counter()
            host.become(hosts, 1)
            os.write(w, repr(time.perf_counter() - start).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        return float(os.read(r, 64))
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def _run(argv: list[str]) -> None:
    proc = procs.spawn(argv, dict(os.environ))
    proc.stdout.read()
    proc.stderr.read()
    proc.wait(30)


def per_node_and_task(n: int, nodes: int) -> list[tuple[str, float]]:
    hosts = host.plan(NODES)
    if hosts.via == "off":
        raise SystemExit(f"host mode is not available here: {hosts.note}")
    names = tuple(f"node{i:03d}" for i in range(1, nodes + 1))
    many = host.plan(names)
    rows = [
        ("plan(): the probe (a fork that sets a node up), once per job", _timed(lambda: host.plan(NODES), n)),
        ("a bare fork + exit (reference)", _timed(lambda: _fork(lambda: None), n)),
        ("a fork that becomes a node + exit", _timed(lambda: _fork(lambda: host.become(hosts, 1)), n)),
        ("become() itself, timed in the forked child",
         statistics.median(_become_in_child(hosts) for _ in range(n)) * 1e3),
        (f"keepers: start + close {nodes} nodes, per node",
         _timed(lambda: Keepers.start(many).close(), max(3, n // 10)) / nodes),
    ]
    with Keepers.start(hosts) as keepers:
        enter = keepers.enter_argv(1)
        plain = _timed(lambda: _run(["true"]), n)
        rows += [("a task `true` through procs.spawn (reference)", plain),
                 ("the same task through nsenter into a node", _timed(lambda: _run([*enter, "true"]), n))]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats, n, nodes = (2, 10, 4) if args.quick else (15, 100, 32)
    print(f"host: {host.plan(NODES)}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs\n")
    try:
        rows = per_node_and_task(n, nodes)
        print("| cost (median) | ms |\n| --- | --- |")
        for what, ms in rows:
            print(f"| {what} | {ms:.2f} |")
        samples = launch(repeats)
    finally:
        sweep()
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n**Launch to exit, 2 x 4**, median of {repeats} interleaved runs, ms (x the floor)\n")
    print("| " + " | ".join(med) + " |\n|" + " --- |" * len(med))
    print("| " + " | ".join(f"{v * 1e3:.0f} ({v / med['floor']:.2f}x)" for v in med.values()) + " |")


if __name__ == "__main__":
    main()
