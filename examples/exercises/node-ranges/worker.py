"""Exercise node-ranges (Part 2): local rank 0 of each node prints the global ranks its node holds.

    clusterlab exercise check node-ranges     # runs this file as 2 nodes x 3 processes

Print exactly one line per node, `node N: ranks A-B`, from the worker whose local rank is 0.
"""

import clusterlab

me = clusterlab.read_env()
first = me.node_rank * 4  # TODO: is it always 4 processes per node?
last = first + 3
print(f"node {me.node_rank}: ranks {first}-{last}")  # TODO: every rank prints this; only local rank 0 should
