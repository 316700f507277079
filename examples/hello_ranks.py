"""Every rank says who it is, waits at a barrier, and leaves.

Run it (each command gives the same 8 ranks):

    python fake_multi_node_launcher.py                       # the lab's 2 x 4 default
    clusterlab simulate --nnodes 2 --nproc-per-node 4 examples/hello_ranks.py
    # two terminals, as on two machines:
    clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-port 29500 examples/hello_ranks.py
    clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 1 --master-port 29500 examples/hello_ranks.py
    # on a real cluster, unchanged:
    torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-addr HOST0 --master-port 29500 examples/hello_ranks.py
"""

import os

import clusterlab

view = clusterlab.read_env()
print(
    f"node_rank={view.node_rank} local_rank={view.local_rank} global_rank={view.rank} "
    f"world_size={view.world_size} master={view.master_addr}:{view.master_port}"
)
# The formula every launcher uses; check it against what the launcher gave us.
if view.rank != view.node_rank * view.local_world_size + view.local_rank:
    raise SystemExit(f"rank {view.rank} != {view.node_rank} * {view.local_world_size} + {view.local_rank}")

clusterlab.barrier("hello")
if view.rank == 0:
    print(f"all {view.world_size} ranks passed the barrier (on {os.environ.get('CLUSTERLAB_NODE_NAME', 'this host')})")
