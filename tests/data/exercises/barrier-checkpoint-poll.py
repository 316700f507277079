# A wrong attempt at barrier-checkpoint: waits by polling for the file, not at a barrier.
import time
from pathlib import Path

import clusterlab

me = clusterlab.read_env()
checkpoint = Path("checkpoint.txt")
if me.rank == 0:
    time.sleep(1.0)
    checkpoint.write_text("weights after step 0")
while not checkpoint.exists():
    time.sleep(0.05)
print(f"read: {checkpoint.read_text()}")
