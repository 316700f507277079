"""A torchrun-style worker: torch.distributed with the gloo backend, one all_reduce.

    clusterlab simulate --nnodes 2 --nproc-per-node 2 examples/allreduce_gloo.py
    torchrun --nnodes 2 --nproc-per-node 2 --node-rank 0 --master-addr HOST0 examples/allreduce_gloo.py

Nothing here knows about clusterlab except the barrier, which under torchrun
becomes torch.distributed.barrier().
"""

import os

import torch
import torch.distributed as dist

import clusterlab

# env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE, exactly as torchrun sets them.
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank)])
dist.all_reduce(t)  # sum of 0 + 1 + ... + (world - 1)
expected = world * (world - 1) / 2
print(f"rank {rank}/{world} on node {os.environ['GROUP_RANK']}: all_reduce sum = {t.item():g} (expected {expected:g})")
assert t.item() == expected
clusterlab.barrier("after-allreduce")  # torch.distributed.barrier() under torchrun
dist.destroy_process_group()
