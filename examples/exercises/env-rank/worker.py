"""Exercise env-rank (Part 1): print this worker's global rank, computed from the seed's exports.

    clusterlab exercise check env-rank        # runs this file as 3 nodes x 2 processes, without RANK

The seed exported NODE_RANK, LOCAL_RANK and WORLD_SIZE, never RANK; torchrun and
clusterlab also export LOCAL_WORLD_SIZE, the number of processes on each node.
"""

import os

local_rank = int(os.environ["LOCAL_RANK"])
rank = local_rank  # TODO: this is only the rank on this node; compute the rank in the whole job
print(f"rank={rank}")
