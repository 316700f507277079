# A wrong attempt at env-rank: reads RANK, which the seed never exported.
import os

print(f"rank={os.environ['RANK']}")
