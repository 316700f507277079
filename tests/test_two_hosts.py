"""Two real hosts: each node agent in its own network namespace, joined by a veth cable.

The namespaces are the project's own test hosts (10.231.x.0/24 exists only inside them), so
the agents meet over a real network interface, not loopback: exactly what happens between two
machines. Needs root and iproute2; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from helpers import ROOT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (`ip netns`) to make two hosts"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts():
    tag = uuid.uuid4().hex[:6]
    a, b = f"clA{tag}", f"clB{tag}"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
    except subprocess.CalledProcessError as exc:
        subprocess.run(["ip", "netns", "del", a], capture_output=True, timeout=10)
        pytest.skip(f"network namespaces are not available here: {exc.stderr.decode().strip()}")
    try:
        ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        for ns, dev, addr in ((a, f"va{tag}", "10.231.7.1/24"), (b, f"vb{tag}", "10.231.7.2/24")):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "link", "set", dev, "name", "eth0")  # both hosts call their NIC eth0
            ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def run_two(two_hosts, script: str, extra_env: dict | None = None) -> list[subprocess.CompletedProcess]:
    a, b = two_hosts
    env = dict(os.environ, **(extra_env or {}))
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--master-addr", "10.231.7.1", "--master-port", "29500",
              "--rdzv-timeout", "60"]
    procs = [
        subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "clusterlab", "launch", *common,
                          "--node-rank", str(node), script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=ROOT, env=env)
        for node, ns in ((1, b), (0, a))
    ]
    outs = [p.communicate(timeout=150)[0] for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outs)]


def test_two_hosts_form_one_world(two_hosts):
    node1, node0 = run_two(two_hosts, str(ROOT / "examples" / "hello_ranks.py"))
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout + node1.stdout
    assert "all 4 ranks passed the barrier" in node0.stdout
    assert "[node1 rank3 local1] node_rank=1 local_rank=1 global_rank=3 world_size=4 master=10.231.7.1:29500" in node1.stdout


@pytest.mark.timeout(200)
def test_gloo_across_two_hosts(two_hosts):
    pytest.importorskip("torch", reason="torch is not installed")
    # As on a real multi-homed host, gloo must be told which NIC to use; otherwise it picks the
    # address its host name resolves to (here 127.0.0.1) and the peers cannot reach it.
    node1, node0 = run_two(two_hosts, str(ROOT / "examples" / "allreduce_gloo.py"), {"GLOO_SOCKET_IFNAME": "eth0"})
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout + node1.stdout
    assert (node0.stdout + node1.stdout).count("all_reduce sum = 6 (expected 6)") == 4
