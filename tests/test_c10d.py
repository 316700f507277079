"""torchrun's c10d rendezvous under `clusterlab launch`: same command on every node, ranks assigned.

The reference is torch 2.13's dynamic_rendezvous.py (what these tests expect is what it does):
nodes are numbered by sorted descriptor - address, then pid - not by arrival; MIN:MAX waits a
last call after MIN; --node-rank is ignored.
"""

from __future__ import annotations

import argparse
import re

import pytest
from helpers import ROOT, clusterlab, free_port, start, wait_for_line

from clusterlab.config import add_launch_args, config_from_args
from clusterlab.errors import UsageError

RANKS = re.compile(r"^\[node(\d) rank(\d) local(\d)\] rank=(\d) group=(\d) world=(\d) master=(\S+)$", re.M)
WORKER = "import os; print('rank=%s group=%s world=%s master=%s:%s' % tuple(os.environ[k] for k in "\
         "('RANK', 'GROUP_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')), flush=True)"


def c10d(port: int, *extra: str, nnodes: str = "2") -> list[str]:
    return ["launch", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--nnodes", nnodes,
            "--nproc-per-node", "2", "--rdzv-timeout", "30", *extra]


def finish(procs) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        outs.append(out)
        assert p.returncode == 0, out
    return outs


@pytest.fixture
def worker(tmp_path):
    path = tmp_path / "w.py"
    path.write_text(WORKER + "\n")
    return str(path)


def test_two_nodes_without_node_ranks_form_one_job(worker):
    port = free_port()
    first = start(*c10d(port), worker)
    wait_for_line(first, r"c10d rendezvous")  # started first: the lower pid, so node 0 (same address)
    second = start(*c10d(port, "--node-rank", "5"), worker)  # ignored, as torchrun ignores it with c10d
    outs = finish([first, second])
    rows = [m.groups() for out in outs for m in RANKS.finditer(out)]
    assert sorted(int(r[3]) for r in rows) == [0, 1, 2, 3]
    assert {r[5] for r in rows} == {"4"} and len({r[6] for r in rows}) == 1  # one world, one master
    assert {(r[0], r[4]) for r in rows if r[3] in "01"} == {("0", "0")}
    assert "this is node0" in outs[0] and "this is node1" in outs[1]


def test_nodes_are_ranked_by_address_not_by_arrival(worker):
    port = free_port()
    # 127.0.0.2 comes first and hosts the rendezvous (a loopback endpoint is every node's), yet
    # 127.0.0.1 sorts first: it is node 0, as torch's sorted(_NodeDesc) makes it
    late_but_first = c10d(port, "--local-addr", "127.0.0.1")
    early = start(*c10d(port, "--local-addr", "127.0.0.2"), worker)
    wait_for_line(early, r"hosted by this node")
    late = start(*late_but_first, worker)
    outs = finish([early, late])
    assert "this is node1" in outs[0] and "this is node0" in outs[1]
    assert "master=127.0.0.1:" in outs[1]


def test_min_max_starts_with_the_nodes_that_came_after_the_last_call(worker):
    port = free_port()
    procs = [start(*c10d(port, "--rdzv-conf", "last_call_timeout=1", nnodes="1:3"), worker) for _ in range(2)]
    outs = finish(procs)
    assert "waiting 1s (last_call_timeout) for up to" in "".join(outs)
    worlds = {m.group(6) for out in outs for m in RANKS.finditer(out)}
    assert worlds == {"4"}  # 2 nodes x 2: the third never came


def test_a_node_of_another_shape_is_refused_and_the_rendezvous_times_out(worker):
    port = free_port()
    host = start(*c10d(port, "--rdzv-timeout", "3"), worker)
    wait_for_line(host, r"hosted by this node")
    other = clusterlab(*c10d(port, "--rdzv-timeout", "3")[:-4], "--nproc-per-node", "3", "--rdzv-timeout", "3",
                       worker, timeout=30)
    assert other.returncode == 1
    assert "refused this node: --nproc-per-node 3 differs from the host's 2" in other.stderr
    out, _ = host.communicate(timeout=30)
    assert host.returncode == 1
    assert "c10d rendezvous timed out after 3s: 1 of at least 2 node(s) joined" in out


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_launch_args(parser, with_node_rank=True)
    return parser.parse_args([*argv, "examples/hello_ranks.py"])


def test_torchruns_defaults(monkeypatch):
    monkeypatch.chdir(ROOT)
    # one node without --master-port: a free port, as torchrun (c10d at localhost:0), not 29500
    assert config_from_args(parse("--nproc-per-node", "2")).master_port == 0
    assert config_from_args(parse("--nnodes", "2")).master_port == 29500
    # static with MIN:MAX: torch's StaticTCPRendezvous waits for MAX nodes
    assert config_from_args(parse("--nnodes", "1:3")).layout.nnodes == 3
    c = config_from_args(parse("--rdzv-backend", "c10d", "--rdzv-endpoint", "node001", "--nnodes", "2:4",
                               "--rdzv-conf", "last_call_timeout=5,join_timeout=60,is_host=false"))
    assert (c.min_nodes, c.layout.nnodes, c.last_call_timeout, c.rdzv_timeout, c.rdzv_is_host) == (2, 4, 5.0, 60.0, False)


@pytest.mark.parametrize("argv, message", [
    (["--rdzv-backend", "etcd"], "--rdzv-backend='etcd' is not simulated"),
    (["--rdzv-backend", "c10d"], "needs --rdzv-endpoint HOST[:PORT]"),
    (["--rdzv-backend", "c10d", "--rdzv-endpoint", "h:99999"], "'99999' is not a TCP port"),
    (["--rdzv-conf", "last_call_timeout"], "is not KEY=VALUE"),
    (["--rdzv-conf", "last_call_timeout=-1"], "must be a positive number of seconds"),
    (["--nnodes", "3:2"], "needs 0 < MIN <= MAX"),
    (["--nproc-per-node", "gpu"], "CUDA is not available here"),
])
def test_bad_rendezvous_flags_are_one_line(monkeypatch, argv, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UsageError, match=re.escape(message)):
        config_from_args(parse(*argv))
