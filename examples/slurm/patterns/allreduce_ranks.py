"""The worker of every launch pattern: join the job's process group, all-reduce the ranks, check the sum.

Each batch script in this directory starts it in one of the ways people start
PyTorch on Slurm; ``--via`` names which library turns the job's variables into a
process group (with torch's gloo backend, so it runs without GPUs):

    --via env         torch.distributed.init_process_group("gloo"), env://: RANK, WORLD_SIZE,
                      MASTER_ADDR and MASTER_PORT set by torchrun, or exported by the script
    --via lightning   Lightning Fabric with SLURMEnvironment (rank, world and master from SLURM_*)
    --via submitit    submitit's TorchDistributedEnvironment().export(), then env://
    --via accelerate  Hugging Face Accelerate, under `accelerate launch`

Every rank prints one line; the sum of the ranks 0 .. W-1 is W(W-1)/2 on every rank,
or the worker exits with status 1.

    python examples/slurm/patterns/allreduce_ranks.py            # no launcher: a world of one
"""

import argparse
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=60)  # a rank that cannot reach the others fails in a minute, not in 30


def join(via: str) -> tuple[int, int, int, object]:
    """Join the job's process group the library's way; return rank, world size, local rank, and a closer."""
    if via == "lightning":
        from lightning_fabric import Fabric
        from lightning_fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment()  # SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS; master: first node of SLURM_NODELIST
        nodes = int(os.environ["SLURM_NNODES"])
        fabric = Fabric(accelerator="cpu", strategy="ddp", devices=slurm.world_size() // nodes, num_nodes=nodes,
                        plugins=[slurm])
        fabric.launch()  # under srun, every task is already a process: nothing is spawned
        return fabric.global_rank, fabric.world_size, fabric.local_rank, dist.destroy_process_group
    if via == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)  # on GPUs: Accelerator()
        return (accelerator.process_index, accelerator.num_processes, accelerator.local_process_index,
                accelerator.end_training)
    if via == "submitit":
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export()  # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK
    if "RANK" not in os.environ:  # no launcher at all
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500")
    dist.init_process_group("gloo", timeout=TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.destroy_process_group


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--via", choices=("env", "lightning", "submitit", "accelerate"), default="env")
    via = parser.parse_args().via
    rank, world, local_rank, close = join(via)
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)  # the sum over every rank of the job
    expected = world * (world - 1) // 2
    ok = t.item() == expected
    # one write per line: a node's workers share its stdout, and torchrun runs them unbuffered (python -u)
    sys.stdout.write(f"rank {rank}/{world} (local {local_rank}) on {socket.gethostname()}: all_reduce of the ranks = "
                     f"{t.item():g}, expected {expected} {'ok' if ok else 'WRONG'} [{via}]\n")
    sys.stdout.flush()
    dist.barrier()  # nobody leaves while another rank still talks to it
    close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
