"""Exercise debug-unused (Debugging), a solution: an unused layer contributes zeros, not nothing.

    clusterlab exercise check debug-unused examples/exercises/debug-unused/solution.py

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

# Same tensors on every rank, in the same order: a gradient this rank did not produce is zero.
grads = [grad if used[name] else torch.zeros_like(grad) for name, grad in params.items()]
flat = torch.cat(grads)
dist.all_reduce(flat)
print(f"rank {rank}: all_reduce of {flat.numel()} gradient values, sum {flat.sum().item():g}", flush=True)
dist.destroy_process_group()
