"""A rank that leaves one barrier call early (Part 3).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 examples/barrier_exit_early.py

Rank 5 skips the last barrier (think: an `if rank != 5:` around the call, or an
early `return` on one rank) and exits cleanly. On a real cluster the other seven
would wait in that barrier until the collective timeout (NCCL's default is 10
minutes). Here the master agent knows rank 5 has exited, so the barrier fails at
once and says who left.
"""

import sys

import clusterlab
from clusterlab.errors import BarrierError

me = clusterlab.read_env()
clusterlab.barrier("start")
if me.rank == 5:
    sys.exit(0)  # one barrier call fewer than everybody else
try:
    clusterlab.barrier("end", timeout=600)
except BarrierError as exc:
    sys.exit(str(exc))
