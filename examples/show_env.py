"""Print, on one line, the variables a launcher handed this worker (Part 1).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 examples/show_env.py
    torchrun --standalone --nproc-per-node 4 examples/show_env.py
    NODE_RANK=1 LOCAL_RANK=2 WORLD_SIZE=8 python examples/show_env.py   # the seed's manual exports

Nothing here depends on clusterlab: a worker learns who it is from its environment only.
"""

import os

NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
         "MASTER_ADDR", "MASTER_PORT")

print(" ".join(f"{name}={os.environ.get(name, '-')}" for name in NAMES))
