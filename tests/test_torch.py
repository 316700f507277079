"""A torchrun-style gloo script runs unchanged under clusterlab (skipped without torch)."""

import pytest
from helpers import ROOT, clusterlab, free_port, start

torch = pytest.importorskip("torch", reason="torch is not installed: `pip install torch` (CI installs the CPU build)")

SCRIPT = str(ROOT / "examples" / "allreduce_gloo.py")


@pytest.mark.timeout(180)
def test_gloo_all_reduce_under_simulate():
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", SCRIPT, timeout=150)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("all_reduce sum = 6 (expected 6)") == 4


@pytest.mark.timeout(180)
def test_gloo_all_reduce_under_two_launch_agents():
    port = str(free_port())
    args = ["--nnodes", "2", "--nproc-per-node", "2", "--master-port", port, "--rdzv-timeout", "60"]
    node1 = start("launch", *args, "--node-rank", "1", SCRIPT)
    node0 = start("launch", *args, "--node-rank", "0", SCRIPT)
    outs = [p.communicate(timeout=150)[0] for p in (node0, node1)]
    assert node0.returncode == 0 and node1.returncode == 0, outs
    assert (outs[0] + outs[1]).count("all_reduce sum = 6 (expected 6)") == 4


@pytest.mark.timeout(180)
def test_same_script_under_real_torchrun():
    """The reference: torch's own launcher runs the script too, and clusterlab.barrier() becomes dist.barrier()."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          SCRIPT], capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("all_reduce sum = 1 (expected 1)") == 2


def _c10d_pair(first: list[str], second: list[str]) -> list[str]:
    """Start two agents of one c10d rendezvous, in this order (so the first has the lower pid); their outputs."""
    import subprocess

    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
             for argv in (first, second)]
    try:
        outs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs


@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ["clusterlab", "torchrun"])
def test_c10d_rendezvous_ranks_the_first_started_node_first(engine):
    """Two agents on one machine, the same command, no --node-rank: both engines make one world of 4,
    and both make node 0 the agent started first (same address, lower pid: torch sorts descriptors)."""
    import sys

    port = str(free_port())
    common = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", "2",
              "--nproc-per-node", "2", SCRIPT]
    launcher = [sys.executable, "-m", "clusterlab", "launch"] if engine == "clusterlab" else \
        [sys.executable, "-m", "torch.distributed.run"]
    first, second = _c10d_pair([*launcher, *common], [*launcher, *common])
    assert (first + second).count("all_reduce sum = 6 (expected 6)") == 4, first + second
    assert "on node 0: all_reduce" in first and "on node 1: all_reduce" not in first, first
    assert "on node 1: all_reduce" in second, second
