"""The rank script of ``clusterlab zero simulate``: join the ring, train with ZeRO, report.

Launch commands (every one gives 8 ranks on 2 simulated nodes)::

    clusterlab zero simulate --nnodes 2 --nproc-per-node 4 --stage 2 --steps 3
    clusterlab simulate --nnodes 2 --nproc-per-node 4 -m clusterlab.zero.worker --stage 2 --steps 3
    # two terminals, as on two machines:
    clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-port 29500 -m clusterlab.zero.worker --stage 2
    clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 1 --master-port 29500 -m clusterlab.zero.worker --stage 2

Phases of one rank:

1. **rendezvous** - open a listening socket and share its (host, port) with
   every rank through :func:`clusterlab.all_gather_object` (the launcher's
   agents carry it; no torch, no TCPStore);
2. **ring** - connect to rank+1, accept rank-1 (:mod:`clusterlab.zero.transport`);
3. **train** - :func:`clusterlab.zero.simulate.run_rank` logs what this rank holds
   and what it sent inside and across nodes each step;
4. **report** - gather every rank's report; rank 0 writes them to
   ``--result-file`` (JSON) for ``clusterlab zero simulate`` to check.
"""

from __future__ import annotations

import argparse
import json
import sys

import clusterlab

from ..errors import UsageError
from ..layout import ClusterLayout


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clusterlab.zero.worker", description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--result-file", "--result_file", default=None, help="rank 0 writes all reports here (JSON)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a peer (default: 60)")
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The training flags, shared with ``clusterlab zero simulate``."""
    p.add_argument("--stage", type=int, required=True, help="ZeRO stage: 0, 1, 2 or 3")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps (default: 3)")
    p.add_argument("--grad-accum", "--grad_accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--micro-batch", "--micro_batch", type=int, default=4, help="samples per rank per micro-step")
    p.add_argument("--d-in", "--d_in", type=int, default=7)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--d-out", "--d_out", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)


def config_from_args(args):
    from .simulate import SimConfig

    return SimConfig(
        stage=args.stage, steps=args.steps, grad_accum=args.grad_accum, micro_batch=args.micro_batch,
        d_in=args.d_in, hidden=args.hidden, d_out=args.d_out, lr=args.lr, seed=args.seed,
    )


def run(args) -> int:
    from .collectives import Ring
    from .simulate import run_rank
    from .transport import connect_ring, open_listener

    cfg = config_from_args(args)
    view = clusterlab.read_env()
    cfg.check_world(view.world_size)
    layout = ClusterLayout(view.nnodes, view.local_world_size)

    # 1. rendezvous: everyone learns everyone's listening address
    listener = open_listener("127.0.0.1")
    addresses = clusterlab.all_gather_object(list(listener.getsockname()), name="zero-ring", timeout=args.timeout)
    # 2. ring: rank -> rank + 1
    channel = connect_ring(view.rank, view.world_size, listener, addresses, timeout=args.timeout)
    nxt = (view.rank + 1) % view.world_size
    ring = Ring(view.rank, view.world_size, channel, layout.locate(nxt)[0] == view.node_rank)
    try:
        # 3. train
        report = run_rank(cfg, ring, log=lambda line: print(line, flush=True))
        report.update(node_rank=view.node_rank, local_rank=view.local_rank)
        # 4. report
        reports = clusterlab.all_gather_object(report, name="zero-reports", timeout=args.timeout)
    finally:
        channel.close()
    if view.rank == 0 and args.result_file:
        with open(args.result_file, "w", encoding="utf-8") as f:
            json.dump({"nnodes": view.nnodes, "nproc_per_node": view.local_world_size, "reports": reports}, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"clusterlab.zero.worker: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
