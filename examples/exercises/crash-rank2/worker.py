"""Exercise crash-rank2 (Failures and restarts): a copy of examples/crash.py; make rank 2 crash instead.

    clusterlab exercise check crash-rank2     # runs this file as 2 x 4

Every rank runs three "steps" with a barrier after each. Rank 5 dies during step 1
with exit status 3, the way a worker dies on a CUDA error or a failed assertion.
The others are then stuck in the barrier: the launcher must notice the death,
stop every other worker on both nodes, and say which rank failed first and why.
"""

import sys
import time

import clusterlab

me = clusterlab.read_env()
for step in range(3):
    time.sleep(0.2)
    if me.rank == 5 and step == 1:
        print(f"step {step}: simulated CUDA error: an illegal memory access was encountered", file=sys.stderr)
        sys.exit(3)
    clusterlab.barrier(name=f"step{step}")
    print(f"finished step {step}", flush=True)
