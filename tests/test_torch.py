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
