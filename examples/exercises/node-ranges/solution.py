"""Exercise node-ranges (Part 2), a solution: the rank formula read backwards.

    clusterlab exercise check node-ranges examples/exercises/node-ranges/solution.py
"""

import clusterlab

me = clusterlab.read_env()
if me.local_rank == 0:  # one line per node
    first = me.node_rank * me.local_world_size  # rank = node_rank * nproc_per_node + local_rank, with local_rank 0
    last = first + me.local_world_size - 1
    print(f"node {me.node_rank}: ranks {first}-{last}")
