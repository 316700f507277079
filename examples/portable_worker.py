"""The same worker under clusterlab, torchrun and srun (From the lab to a real cluster).

    clusterlab simulate --nnodes 2 --nproc-per-node 2 examples/portable_worker.py
    torchrun --standalone --nproc-per-node 2 examples/portable_worker.py
    torchrun --nnodes 2 --nproc-per-node 4 --node-rank $NODE_RANK \
        --master-addr $MASTER_ADDR --master-port 29500 examples/portable_worker.py   # on each node
    srun --nodes 2 --ntasks-per-node 4 python examples/portable_worker.py        # inside sbatch

The worker asks one question, "who am I?", through clusterlab.read_env(), which
reads whichever launcher's variables are present. With torch installed it then
joins a gloo process group and all-reduces its rank: every rank must print the
same sum, 0 + 1 + ... + (world_size - 1). Without torch it says so and stops.
"""

import os

import clusterlab

me = clusterlab.read_env()
print(f"I am {me}", flush=True)

try:
    import torch
    import torch.distributed as dist
except ImportError:
    print("torch is not installed: skipping the all-reduce")
    raise SystemExit(0) from None

# torch's default init_method "env://" reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
# torchrun and clusterlab set them; srun does not, so fill them in from the rank view
# (this is the whole of "porting" a torchrun script to srun).
for name, value in (("RANK", me.rank), ("WORLD_SIZE", me.world_size),
                    ("MASTER_ADDR", me.master_addr), ("MASTER_PORT", me.master_port)):
    os.environ.setdefault(name, str(value))
dist.init_process_group("gloo")
total = torch.tensor([me.rank])
dist.all_reduce(total)  # sums over every rank, on every node
print(f"all_reduce(rank) = {total.item()} (expected {sum(range(me.world_size))})", flush=True)
dist.destroy_process_group()
