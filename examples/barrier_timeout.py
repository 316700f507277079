"""A barrier that times out because one rank never comes (Part 3).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 examples/barrier_timeout.py

Rank 6 is stuck (here: asleep) and never reaches the barrier. The other ranks
give up after 2 seconds, and the error names the ranks that did not arrive, the
first thing to look at on a real cluster when a job hangs in a collective.
A worker that cannot go on says why in one line and exits non-zero; the
launcher then stops everybody else, rank 6 included.
"""

import sys
import time

import clusterlab
from clusterlab.errors import BarrierError

me = clusterlab.read_env()
if me.rank == 6:
    time.sleep(60)  # stuck: a dead data loader, a deadlock, a slow disk...
try:
    clusterlab.barrier(name="step", timeout=2.0)
except BarrierError as exc:
    sys.exit(str(exc))  # the message already names this rank
print("never printed: the barrier cannot complete without rank 6")
