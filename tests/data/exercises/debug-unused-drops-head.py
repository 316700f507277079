# A wrong attempt at debug-unused: the head's gradient dropped on every rank, so the shapes agree but it is lost.
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
flat = torch.ones(4)
dist.all_reduce(flat)
print(f"rank {rank}: all_reduce of {flat.numel()} gradient values, sum {flat.sum().item():g}", flush=True)
dist.destroy_process_group()
