"""Ranks reach a barrier at different times and leave it together (Part 3).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 --barrier-trace trace.jsonl examples/staggered_barrier.py

Each rank "computes" for a different time before the barrier, as real ranks do
when their batches differ in size. Nobody leaves the barrier before the slowest
rank has arrived; the trace records when each rank arrived and left.
"""

import time

import clusterlab

me = clusterlab.read_env()
work = 0.1 + 0.15 * ((me.rank * 3) % me.world_size)  # a different delay per rank, slowest not last
time.sleep(work)
print(f"computed for {work:.2f}s, waiting at barrier 'step'", flush=True)

start = time.monotonic()
clusterlab.barrier(name="step")
print(f"left barrier 'step' after waiting {time.monotonic() - start:.2f}s", flush=True)
