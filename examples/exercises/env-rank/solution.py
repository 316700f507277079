"""Exercise env-rank (Part 1), a solution: the global rank from the seed's exports.

    clusterlab exercise check env-rank examples/exercises/env-rank/solution.py
"""

import os

node_rank = int(os.environ["NODE_RANK"])
local_rank = int(os.environ["LOCAL_RANK"])
nproc_per_node = int(os.environ["LOCAL_WORLD_SIZE"])  # processes on each node, never a fixed 4
rank = node_rank * nproc_per_node + local_rank  # nodes are numbered first, then the processes on a node
print(f"rank={rank}")
