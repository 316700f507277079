# A wrong attempt at barrier-eval: the barrier removed, so nobody waits for the evaluation.
import time

import clusterlab

me = clusterlab.read_env()
for epoch in range(3):
    print(f"epoch {epoch} start at {time.time():.6f}", flush=True)
    time.sleep(0.1)
    if me.rank == 0:
        time.sleep(0.3)
        print(f"eval {epoch} done at {time.time():.6f}", flush=True)
print("done")
