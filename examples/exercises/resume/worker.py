"""Exercise resume (Failures and restarts): after a restart, continue from the last checkpoint.

    clusterlab exercise check resume     # runs this file as 2 x 2 with --max-restarts 1

Rank 0 saves the number of the last finished step in checkpoint.txt. Rank 3 fails in
step 2 of the first attempt; the launcher then restarts everyone. Keep the print lines:
the check reads them.
"""

import os
import sys
import time
from pathlib import Path

import clusterlab

me = clusterlab.read_env()
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
checkpoint = Path("checkpoint.txt")

first_step = 0  # TODO: after a restart, continue after the step saved in checkpoint.txt
for step in range(first_step, 4):
    time.sleep(0.1)  # train
    if me.rank == 3 and step == 2 and attempt == 0:
        sys.exit("rank 3: lost the connection to the parameter server")
    clusterlab.barrier(f"step{step}")
    if me.rank == 0:
        checkpoint.write_text(str(step))  # the last finished step
    clusterlab.barrier(f"saved{step}")  # nobody reports a step before it is saved
    print(f"attempt {attempt}: step {step} done", flush=True)
