"""Print who this process is in its job: one line per worker, read through ``clusterlab.read_env()``.

Launch commands (from the repository root):

    python examples/slurm/rank_view.py                                   # no launcher: a world of one
    clusterlab srun -N2 --ntasks-per-node=2 python examples/slurm/rank_view.py
    clusterlab sbatch examples/slurm/task_per_gpu.sbatch                 # one Slurm task per GPU
    clusterlab sbatch examples/slurm/torchrun_per_node.sbatch            # one torchrun per node

``read_env()`` picks the right table for whichever launcher started us: torchrun's
``RANK``/``LOCAL_RANK`` when they are set, Slurm's ``SLURM_PROCID``/``SLURM_LOCALID``
otherwise. ``CUDA_VISIBLE_DEVICES`` is what Slurm gave this node (simulated: no GPU is
touched); a worker uses device ``cuda:LOCAL_RANK`` of that list.
"""

import os
import sys

import clusterlab
from clusterlab.errors import UsageError

try:
    view = clusterlab.read_env()
except UsageError:  # started by hand, without any launcher
    view = None

node = os.environ.get("SLURMD_NODENAME", "this machine")
# One write per line: workers of one node share its stdout (torchrun runs them with python -u,
# where print() writes the text and the newline separately, and two workers' lines could mix).
devices = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
if view is None:
    sys.stdout.write(f"{node}: no launcher, a world of one\n")
else:
    slurm = f"SLURM_PROCID={os.environ['SLURM_PROCID']} " if "SLURM_PROCID" in os.environ else ""
    sys.stdout.write(f"{node}: rank {view.rank}/{view.world_size} local_rank {view.local_rank} "
                     f"node {view.node_rank}/{view.nnodes} ({view.launcher}; {slurm}"
                     f"CUDA_VISIBLE_DEVICES={devices} -> cuda:{view.local_rank}) master "
                     f"{view.master_addr}:{view.master_port}\n")
