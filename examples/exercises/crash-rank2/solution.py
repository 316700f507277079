"""Exercise crash-rank2 (Failures and restarts), a solution: rank 2 dies in step 1 with status 7.

    clusterlab exercise check crash-rank2 examples/exercises/crash-rank2/solution.py
"""

import sys
import time

import clusterlab

me = clusterlab.read_env()
for step in range(3):
    time.sleep(0.2)
    if me.rank == 2 and step == 1:  # rank 2 is node 0, local rank 2
        print(f"step {step}: simulated CUDA error: an illegal memory access was encountered", file=sys.stderr)
        sys.exit(7)
    clusterlab.barrier(name=f"step{step}")
    print(f"finished step {step}", flush=True)
