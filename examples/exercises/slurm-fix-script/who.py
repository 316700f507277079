"""The worker of exercise slurm-fix-script: prints the numbers torch's env:// rendezvous would read."""

import os

names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
print(f"{os.environ.get('SLURMD_NODENAME', '?')}: " + " ".join(f"{n}={os.environ.get(n, '-')}" for n in names))
