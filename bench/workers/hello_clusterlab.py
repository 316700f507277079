"""Launch figure, clusterlab: hello + one barrier + exit (`clusterlab simulate ... hello_clusterlab.py`)."""
import os

import clusterlab

print(f"hello from rank {os.environ['RANK']}")
clusterlab.barrier()
if os.environ.get("BENCH_REPORT_RSS"):  # the memory run: this rank's peak resident set, in KiB
    import resource

    print(f"BENCH_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
