"""A rank that fails on the first attempt only (Failures and restarts).

    clusterlab simulate --nnodes 2 --nproc-per-node 4 --max-restarts 1 examples/flaky.py

Like torchrun, the launcher tells each worker which attempt this is in
TORCHELASTIC_RESTART_COUNT. Rank 2 fails on attempt 0 (a transient error: a
flaky network link, a preempted node); with --max-restarts 1 the launcher
stops everyone and starts the whole world again, and attempt 1 succeeds.
A real job would reload its last checkpoint at the top of this script.
"""

import os
import sys

import clusterlab

me = clusterlab.read_env()
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
print(f"attempt {attempt}: starting", flush=True)
if me.rank == 2 and attempt == 0:
    print("attempt 0: transient failure: connection reset by peer", file=sys.stderr)
    sys.exit(1)
clusterlab.barrier(name="train")
print(f"attempt {attempt}: done", flush=True)
