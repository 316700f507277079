"""Exercise barrier-eval (Part 3), a solution: the evaluation stays on rank 0, the barrier is everyone's.

    clusterlab exercise check barrier-eval examples/exercises/barrier-eval/solution.py
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
    clusterlab.barrier("eval")  # every rank, every epoch: the others wait here until rank 0 has evaluated
print("done")
