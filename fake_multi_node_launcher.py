#!/usr/bin/env python3
"""The lab's entry point: two nodes of four ranks each, on this machine.

A thin wrapper over ``clusterlab simulate`` and ``clusterlab launch`` that runs
``examples/hello_ranks.py`` (or ``--script``) on every rank. Three modes:

1. **Nothing set** - ``python fake_multi_node_launcher.py``
   simulates the default 2 nodes x 4 ranks and every rank logs its node_rank,
   local_rank, global_rank and world_size, then meets the others at a barrier.

2. **The seed's Part 1 exports** - for example::

       export NODE_RANK=0 LOCAL_RANK=0 WORLD_SIZE=8 MASTER_ADDR=localhost MASTER_PORT=23456
       python fake_multi_node_launcher.py

   reads those variables, prints what each one means for the job
   (WORLD_SIZE / --nproc-per-node = number of nodes, NODE_RANK = this terminal's
   node), and simulates the whole world at MASTER_ADDR:MASTER_PORT, so it
   finishes in seconds instead of waiting for a node nobody starts.

3. **One node per terminal** - ``--only-this-node`` runs just node NODE_RANK's
   agent. Two terminals with NODE_RANK=0 and NODE_RANK=1 (same WORLD_SIZE,
   MASTER_ADDR, MASTER_PORT) rendezvous over TCP and form one eight-rank world,
   as two machines would::

       NODE_RANK=0 WORLD_SIZE=8 MASTER_ADDR=127.0.0.1 MASTER_PORT=23456 python fake_multi_node_launcher.py --only-this-node
       NODE_RANK=1 WORLD_SIZE=8 MASTER_ADDR=127.0.0.1 MASTER_PORT=23456 python fake_multi_node_launcher.py --only-this-node
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run from a clone without installing: this process and the workers it starts find src/clusterlab.
sys.path.insert(0, str(HERE / "src"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "src"), os.environ.get("PYTHONPATH")]))

from clusterlab.cli import main as clusterlab_main  # noqa: E402
from clusterlab.config import DEFAULT_MASTER_PORT  # noqa: E402
from clusterlab.errors import UsageError  # noqa: E402
from clusterlab.layout import ClusterLayout  # noqa: E402

SEED_VARS = ("NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=4, help="ranks per node (default: 4)")
    p.add_argument("--nnodes", type=int, default=None, help="nodes (default: WORLD_SIZE / nproc-per-node, else 2)")
    p.add_argument("--only-this-node", action="store_true",
                   help="run only node NODE_RANK's agent; start the other nodes in other terminals")
    p.add_argument("--script", default=str(HERE / "examples" / "hello_ranks.py"), help="worker script for every rank")
    p.add_argument("--rdzv-timeout", type=float, default=300.0, help="seconds to wait for the other nodes (default: 300)")
    return p


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer; export {name}=0 (for example)") from None


def plan(args: argparse.Namespace) -> list[str]:
    """The ``clusterlab`` command line this run stands for; prints how the exports were read."""
    found = {k: os.environ[k] for k in SEED_VARS if k in os.environ}
    world, node_rank = _env_int("WORLD_SIZE"), _env_int("NODE_RANK")
    if world is not None:
        layout = ClusterLayout.from_world_size(world, args.nproc_per_node)
        if args.nnodes is not None and args.nnodes != layout.nnodes:
            raise UsageError(f"--nnodes {args.nnodes} disagrees with WORLD_SIZE={world} / {args.nproc_per_node} "
                             f"per node = {layout.nnodes}")
    else:
        layout = ClusterLayout(args.nnodes or 2, args.nproc_per_node)
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT", "0" if not args.only_this_node else str(DEFAULT_MASTER_PORT))
    if found:
        print("read from the environment: " + " ".join(f"{k}={v}" for k, v in found.items()))
        print(f"  WORLD_SIZE={layout.world_size} with {layout.nproc_per_node} ranks per node -> {layout.nnodes} node(s)")
        if node_rank is not None:
            layout.check_node_rank(node_rank)
            ranks = layout.ranks_on(node_rank)
            print(f"  NODE_RANK={node_rank} -> this terminal is node {node_rank}, global ranks {ranks[0]}-{ranks[-1]} "
                  f"(global_rank = {node_rank} * {layout.nproc_per_node} + local_rank)")
        if "LOCAL_RANK" in found:
            print(f"  LOCAL_RANK={found['LOCAL_RANK']} describes one worker; the launcher gives each worker its own")
        print(f"  MASTER_ADDR:MASTER_PORT={addr}:{port} -> where node 0's agent listens")
    common = ["--nnodes", str(layout.nnodes), "--nproc-per-node", str(layout.nproc_per_node),
              "--master-addr", addr, "--master-port", port, "--rdzv-timeout", str(args.rdzv_timeout)]
    if args.only_this_node:
        if node_rank is None:
            raise UsageError("--only-this-node needs NODE_RANK: export NODE_RANK=0 in one terminal and NODE_RANK=1 in the other")
        layout.check_node_rank(node_rank)
        print(f"running only node {node_rank}'s agent; start the other node(s) with the same WORLD_SIZE/MASTER_ADDR/MASTER_PORT")
        return ["launch", *common, "--node-rank", str(node_rank), args.script]
    if node_rank is not None:
        print(f"simulating all {layout.nnodes} nodes here (use --only-this-node to run just node {node_rank})")
    return ["simulate", *common, args.script]


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        command = plan(args)
    except UsageError as exc:
        print(f"fake_multi_node_launcher.py: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    return clusterlab_main(command)


if __name__ == "__main__":
    sys.exit(main())
