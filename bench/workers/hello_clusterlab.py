"""Launch figure, clusterlab: hello + one barrier + exit (`clusterlab simulate ... hello_clusterlab.py`)."""
import os

import clusterlab

print(f"hello from rank {os.environ['RANK']}")
clusterlab.barrier()
if os.environ.get("BENCH_REPORT_RSS"):  # the memory run: this rank's peak resident set, in KiB
    import resource
    import time

    print(f"BENCH_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", flush=True)
    # the job stays up (its agents too) until the bench has sampled it: it creates this file
    deadline = time.monotonic() + 60
    while not os.path.exists(os.environ["BENCH_REPORT_RSS"]) and time.monotonic() < deadline:
        time.sleep(0.01)
