"""Each simulated node on its own CPUs, as real nodes are.

Reference: a partition of the launcher's CPUs into ``nnodes`` contiguous, disjoint
shares whose sizes differ by at most one; checked in the workers themselves with
``os.sched_getaffinity``.
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import clusterlab, rank_lines, write

from clusterlab.run import split_cpus


@pytest.mark.parametrize("nnodes, ncpus", [(2, 2), (2, 5), (3, 8), (4, 4), (2, 64)])
def test_shares_partition_the_cpus_evenly(nnodes, ncpus):
    cpus = list(range(100, 100 + ncpus))  # any CPU numbers, e.g. a container's cpuset
    shares = split_cpus(nnodes, cpus)
    assert [c for share in shares for c in share] == cpus  # disjoint, complete, in order
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize("nnodes, ncpus", [(1, 4), (3, 2), (64, 2)])
def test_no_shares_with_one_node_or_fewer_cpus_than_nodes(nnodes, ncpus):
    assert split_cpus(nnodes, list(range(ncpus))) is None


PROBE = """
import json, os
print(json.dumps({"node": int(os.environ["GROUP_RANK"]), "cpus": sorted(os.sched_getaffinity(0))}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
@pytest.mark.parametrize("share", [False, True])
def test_workers_run_on_their_nodes_cpus(tmp_path, share):
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.skip("needs at least 2 CPUs")
    script = write(tmp_path / "probe.py", PROBE)
    r = clusterlab("simulate", "-v", "--nnodes", "2", "--nproc-per-node", "2", *(["--share-cpus"] if share else []),
                   str(script))
    assert r.returncode == 0, r.stderr
    seen = {rank: json.loads(lines[0]) for rank, lines in rank_lines(r.stdout).items()}
    assert len(seen) == 4
    expected = [mine, mine] if share else split_cpus(2, mine)
    for probe in seen.values():
        assert probe["cpus"] == expected[probe["node"]]
    assert ("each node on its own" in r.stderr) is not share
