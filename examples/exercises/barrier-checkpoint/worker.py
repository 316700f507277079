"""Exercise barrier-checkpoint (Part 3): rank 0 writes a file, then every rank reads it.

    clusterlab exercise check barrier-checkpoint     # runs this file as 2 x 4, with --barrier-trace

As it is, the other ranks read before rank 0 has written: add what makes them wait.
"""

import time
from pathlib import Path

import clusterlab

me = clusterlab.read_env()
checkpoint = Path("checkpoint.txt")  # in the job's working directory

if me.rank == 0:
    time.sleep(1.0)  # saving a checkpoint takes a while
    checkpoint.write_text("weights after step 0")

# TODO: nobody waits for rank 0 here
print(f"read: {checkpoint.read_text()}")
