# A wrong attempt at node-ranges: one line per node, but 4 processes per node assumed.
import clusterlab

me = clusterlab.read_env()
if me.local_rank == 0:
    print(f"node {me.node_rank}: ranks {me.node_rank * 4}-{me.node_rank * 4 + 3}")
