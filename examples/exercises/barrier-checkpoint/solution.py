"""Exercise barrier-checkpoint (Part 3), a solution: one barrier between the write and the reads.

    clusterlab exercise check barrier-checkpoint examples/exercises/barrier-checkpoint/solution.py
"""

import time
from pathlib import Path

import clusterlab

me = clusterlab.read_env()
checkpoint = Path("checkpoint.txt")

if me.rank == 0:
    time.sleep(1.0)
    checkpoint.write_text("weights after step 0")

clusterlab.barrier("checkpoint-written")  # every rank: rank 0 arrives after writing, the others wait for it
print(f"read: {checkpoint.read_text()}")
