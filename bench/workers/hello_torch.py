"""Launch figure, torchrun: hello + one gloo barrier + exit (two `torchrun --nnodes 2` agents)."""
import os

import torch.distributed as dist

print(f"hello from rank {os.environ['RANK']}")
dist.init_process_group("gloo")
dist.barrier()
dist.destroy_process_group()
