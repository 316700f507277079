"""Exercise debug-unused (Debugging): an all-reduce that fails on one rank; find out why, then fix it.

    clusterlab exercise check debug-unused        # runs this file as 2 nodes x 1, with TORCH_DISTRIBUTED_DEBUG=DETAIL
    TORCH_DISTRIBUTED_DEBUG=DETAIL clusterlab simulate --nnodes 2 --nproc-per-node 1 \
        examples/exercises/debug-unused/worker.py

Every rank sums its gradients with one all-reduce of all of them, flattened, the way
data-parallel training buckets them. One rank took a branch that never used the
`head` layer, so it has no gradient for it.
"""

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
params = {"embed": torch.ones(4), "head": torch.ones(2)}  # stand-ins for the gradients of two layers
used = {"embed": True, "head": rank != 1}  # rank 1's batch never reached the head

grads = [grad for name, grad in params.items() if used[name]]  # TODO: what does rank 1 send?
flat = torch.cat(grads)
dist.all_reduce(flat)
print(f"rank {rank}: all_reduce of {flat.numel()} gradient values, sum {flat.sum().item():g}", flush=True)
dist.destroy_process_group()
