"""Exercise portable-rank (From the lab to a real cluster): one worker for torchrun and srun alike.

    clusterlab exercise check portable-rank     # runs it under clusterlab simulate and clusterlab srun

Print `rank R/W local L`. As written it only works where torchrun's variables are set.
"""

import os

rank = int(os.environ["RANK"])  # TODO: srun sets SLURM_PROCID, not RANK
world_size = int(os.environ["WORLD_SIZE"])
local_rank = int(os.environ["LOCAL_RANK"])
print(f"rank {rank}/{world_size} local {local_rank}")
