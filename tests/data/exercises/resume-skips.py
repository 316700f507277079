# A wrong attempt at resume: resumes two steps after the checkpoint, skipping one.
import os
import sys
import time
from pathlib import Path

import clusterlab

me = clusterlab.read_env()
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
checkpoint = Path("checkpoint.txt")
first_step = int(checkpoint.read_text()) + 2 if checkpoint.exists() else 0
for step in range(first_step, 4):
    time.sleep(0.1)
    if me.rank == 3 and step == 2 and attempt == 0:
        sys.exit("rank 3: lost the connection to the parameter server")
    clusterlab.barrier(f"step{step}")
    if me.rank == 0:
        checkpoint.write_text(str(step))
    clusterlab.barrier(f"saved{step}")
    print(f"attempt {attempt}: step {step} done", flush=True)
