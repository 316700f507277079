"""Ranks that disagree about which barrier they are in (Part 3).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 examples/barrier_mismatch.py

Rank 3 took a different branch and calls barrier "eval" while everyone else is in
"train". With unnamed barriers this would silently pair the wrong calls; naming
them turns the bug into an error that names both barriers and the ranks in each.
"""

import sys

import clusterlab
from clusterlab.errors import BarrierError

me = clusterlab.read_env()
name = "eval" if me.rank == 3 else "train"
try:
    clusterlab.barrier(name=name, timeout=10.0)
except BarrierError as exc:
    sys.exit(str(exc))  # the message already names this rank
print(f"passed barrier {name!r}")
