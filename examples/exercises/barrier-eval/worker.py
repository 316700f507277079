"""Exercise barrier-eval (Part 3): only rank 0 evaluates, and everyone must wait for it.

    clusterlab exercise check barrier-eval     # runs this file as 2 x 2

Run it, read the error, then fix the barrier. Keep the print lines: the check reads their times.
"""

import time

import clusterlab

me = clusterlab.read_env()
for epoch in range(3):
    print(f"epoch {epoch} start at {time.time():.6f}", flush=True)
    time.sleep(0.1)  # train
    if me.rank == 0:
        time.sleep(0.3)  # evaluate
        print(f"eval {epoch} done at {time.time():.6f}", flush=True)
        clusterlab.barrier("eval")  # TODO: who calls this barrier?
print("done")
