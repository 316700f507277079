"""Exercise portable-rank (From the lab to a real cluster), a solution: ask read_env(), not one launcher.

    clusterlab exercise check portable-rank examples/exercises/portable-rank/solution.py
"""

import clusterlab

me = clusterlab.read_env()  # torchrun's, Slurm's, OpenMPI's or DeepSpeed's names: whichever are set
print(f"rank {me.rank}/{me.world_size} local {me.local_rank}")
