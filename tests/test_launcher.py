"""The launcher with real processes: simulate, two launch agents, failures, signals, logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import LINE, ROOT, clusterlab, free_port, rank_lines, start, wait_for_line, write

HELLO = str(ROOT / "examples" / "hello_ranks.py")


def check_hello(text: str, nnodes: int, nproc: int) -> None:
    ranks = rank_lines(text)
    assert sorted(ranks) == list(range(nnodes * nproc)), text
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        node, rank, local = map(int, m.groups()[:3])
        assert rank == node * nproc + local  # the prefix itself obeys the formula
        if "node_rank=" in line:
            assert f"node_rank={node} local_rank={local} global_rank={rank} world_size={nnodes * nproc}" in line


def test_simulate_two_nodes_of_four():
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0", HELLO)
    assert res.returncode == 0, res.stderr
    check_hello(res.stdout, 2, 4)
    assert "all 8 ranks passed the barrier" in res.stdout


def test_two_launch_agents_form_one_world():
    port = str(free_port())
    args = ["--nnodes", "2", "--nproc-per-node", "3", "--master-port", port, "--rdzv-timeout", "30"]
    node1 = start("launch", *args, "--node-rank", "1", HELLO)
    node0 = start("launch", *args, "--node_rank", "0", HELLO)  # torchrun's underscore spelling works too
    out0, _ = node0.communicate(timeout=60)
    out1, _ = node1.communicate(timeout=60)
    assert node0.returncode == 0 and node1.returncode == 0, out0 + out1
    check_hello(out0 + out1, 2, 3)
    assert set(rank_lines(out0)) == {0, 1, 2} and set(rank_lines(out1)) == {3, 4, 5}


def test_crash_stops_every_node_with_a_summary(tmp_path):
    script = write(tmp_path / "crash.py", """
import os, sys, clusterlab
rank = int(os.environ["RANK"])
print(f"rank {rank} up", flush=True)
if rank == 6:
    print("about to fail", file=sys.stderr, flush=True)
    sys.exit(3)
clusterlab.barrier("never-complete")   # everyone else waits here until they are stopped
""")
    t0 = time.monotonic()
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0", str(script))
    elapsed = time.monotonic() - t0
    assert res.returncode == 1
    assert elapsed < 15, f"teardown took {elapsed:.1f}s"
    err = res.stderr
    assert "root cause" in err and "node1 (node1)" in err and "rank      : 6 (local_rank 2)" in err
    assert "exit code 3" in err and "about to fail" in err


def test_signal_death_is_named(tmp_path):
    script = write(tmp_path / "kill.py", """
import os, signal, clusterlab
if os.environ["RANK"] == "1":
    os.kill(os.getpid(), signal.SIGKILL)
clusterlab.barrier()
""")
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "1", "--master-port", "0", str(script))
    assert res.returncode == 1 and "signal 9 (SIGKILL)" in res.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_reaches_every_worker(tmp_path, sig):
    script = write(tmp_path / "wait.py", """
import os, time, clusterlab
print("ready", flush=True)
if os.environ["RANK"] == "0":
    time.sleep(600)        # never reaches the barrier
clusterlab.barrier()
""")
    proc = start("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(script))
    lines = []
    for _ in range(4):
        lines += wait_for_line(proc, r"\] ready$")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, out
    # (the autouse fixture checks that no worker survived)


def test_barrier_timeout_names_the_missing_rank(tmp_path):
    script = write(tmp_path / "late.py", """
import os, time, clusterlab
if os.environ["RANK"] == "3":
    time.sleep(60)
clusterlab.barrier("step", timeout=1)
""")
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(script))
    assert res.returncode == 1
    assert "barrier 'step' (collective call #0) timed out after 1s: rank 3 on node1 never arrived" in res.stdout + res.stderr


def test_barrier_name_mismatch_is_an_error_not_a_hang(tmp_path):
    script = write(tmp_path / "mismatch.py", """
import os, clusterlab
clusterlab.barrier("eval" if os.environ["RANK"] == "3" else "epoch")
""")
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(script), timeout=30)
    assert res.returncode == 1
    text = res.stdout + res.stderr
    assert "barrier name mismatch" in text and "'epoch'" in text and "rank 3 on node1 reached 'eval'" in text


def test_mismatch_after_repeated_barriers_reaches_the_fast_path(tmp_path):
    # after a few "epoch" barriers each rank (and agent) expects the next one byte for byte;
    # a different one must still be seen, and its error must reach ranks on the fast path
    script = write(tmp_path / "late_mismatch.py", """
import os, clusterlab
for _ in range(5):
    clusterlab.barrier("epoch")
clusterlab.barrier("eval" if os.environ["RANK"] == "3" else "epoch")
""")
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(script), timeout=30)
    assert res.returncode == 1
    text = res.stdout + res.stderr
    assert "barrier name mismatch at collective call #5" in text and "rank 3 on node1 reached 'eval'" in text, text
    assert "rank 0: barrier name mismatch" in text, text  # rank 0 took the fast path, and raised


def test_all_gather_object_in_rank_order(tmp_path):
    script = write(tmp_path / "gather.py", """
import os, clusterlab
got = clusterlab.all_gather_object({"r": int(os.environ["RANK"])})
assert got == [{"r": i} for i in range(int(os.environ["WORLD_SIZE"]))], got
# every rank gives None: a barrier's round on the wire, still a list of the world's Nones here
got = clusterlab.all_gather_object(None)
assert got == [None] * int(os.environ["WORLD_SIZE"]), got
for i in range(50):
    clusterlab.barrier(f"b{i}")
print("ok")
""")
    res = clusterlab("simulate", "--nnodes", "3", "--nproc-per-node", "2", "--master-port", "0", str(script))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("] ok") == 6


def test_log_dir_filter_and_trace(tmp_path):
    logs, trace = tmp_path / "logs with space", tmp_path / "trace.jsonl"
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                     "--log-dir", str(logs), "--local-ranks-filter", "0", "--barrier-trace", str(trace), HELLO)
    assert res.returncode == 0, res.stderr
    assert set(rank_lines(res.stdout)) == {0, 2}  # only local rank 0 of each node on the console
    for node in (0, 1):
        for local in (0, 1):
            text = (logs / "attempt_0" / f"node{node}" / str(local) / "stdout.log").read_text()
            assert text.startswith(f"node_rank={node} local_rank={local} global_rank={node * 2 + local}")
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert sorted(e["rank"] for e in events) == [0, 1, 2, 3]
    assert all(e["name"] == "hello" and e["leave"] >= e["arrive"] for e in events)
    # nobody leaves before the last rank arrived: that is what a barrier is
    assert min(e["leave"] for e in events) >= max(e["arrive"] for e in events)


def test_restart_after_failure(tmp_path):
    script = write(tmp_path / "flaky.py", """
import os, sys, clusterlab
attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print(f"attempt {attempt} of max {os.environ['TORCHELASTIC_MAX_RESTARTS']}", flush=True)
clusterlab.barrier()
if attempt == 0 and os.environ["RANK"] == "2":
    sys.exit(1)
""")
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                     "--max-restarts", "1", str(script))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("attempt 1 of max 1") == 4
    assert "restarting the whole world, attempt 1 of 1" in res.stderr
    res = clusterlab("simulate", "--nnodes", "1", "--nproc-per-node", "2", "--master-port", "0",
                     "--max-restarts", "1", "--no-python", "false")
    assert res.returncode == 1 and "after 2 attempt(s)" in res.stderr


def test_node_that_never_joins_is_named():
    res = clusterlab("launch", "--nnodes", "3", "--nproc-per-node", "1", "--node-rank", "0",
                     "--master-port", str(free_port()), "--rdzv-timeout", "1", HELLO)
    assert res.returncode == 1
    assert "node rank(s) 1, 2 never joined" in res.stderr


def test_master_that_never_comes_up():
    res = clusterlab("launch", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", "1",
                     "--master-port", str(free_port()), "--rdzv-timeout", "1", HELLO)
    assert res.returncode == 1 and "the master agent (node 0) never answered" in res.stderr


def test_port_in_use_is_one_clear_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        res = clusterlab("simulate", "--nnodes", "2", "--master-port", port, HELLO)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"clusterlab simulate: error: cannot listen on 127.0.0.1:{port}: the port is "
                                  "already in use (another job?); pick a free --master-port")


@pytest.mark.parametrize(
    "args, message",
    [
        (["simulate", "--nnodes", "0", HELLO], "nnodes=0 must be at least 1"),
        (["simulate", "--nnodes", "1:4", HELLO], "simulate starts every node itself, so it needs one number"),
        (["simulate", "--nproc-per-node", "gpu", HELLO], "CUDA is not available here"),
        (["simulate", "--nproc-per-node", "x", HELLO], "--nproc-per-node='x' is not a number"),
        (["simulate", "missing_script.py"], "script 'missing_script.py' does not exist"),
        (["launch", "--nnodes", "2", "--node-rank", "2", HELLO], "--node-rank=2 is outside 0..1"),
        (["simulate", "--master-port", "70000", HELLO], "--master-port=70000 is not a TCP port"),
        (["simulate", "--local-ranks-filter", "0,9", "--nproc-per-node", "2", HELLO], "outside 0..1"),
        (["simulate", "--redirects", "3", HELLO], "give --log-dir"),
        (["simulate", "--master-addr", "no.such.host.invalid", HELLO], "does not resolve"),
    ],
)
def test_bad_flags_one_line_exit_2(args, message):
    res = clusterlab(*args, timeout=30)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_python_dash_m_and_console_script_agree():
    res = subprocess.run([sys.executable, "-m", "clusterlab", "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "simulate" in res.stdout and "launch" in res.stdout


def test_barrier_outside_a_launcher_says_so():
    res = subprocess.run([sys.executable, "-c", "import clusterlab; clusterlab.barrier()"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 1 and "clusterlab.barrier() needs a launcher" in res.stderr


# ---------------------------------------------------------------- the seed's entry point
FAKE = str(ROOT / "fake_multi_node_launcher.py")


def test_fake_launcher_default_two_by_four():
    res = subprocess.run([sys.executable, FAKE], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    check_hello(res.stdout, 2, 4)


def test_fake_launcher_reads_the_seed_exports(monkeypatch):
    port = str(free_port())
    env = {"NODE_RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "8", "MASTER_ADDR": "localhost", "MASTER_PORT": port}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, FAKE], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 20
    assert ("read from the environment: NODE_RANK=0 LOCAL_RANK=0 WORLD_SIZE=8 MASTER_ADDR=localhost "
            f"MASTER_PORT={port}") in res.stdout
    assert "WORLD_SIZE=8 with 4 ranks per node -> 2 node(s)" in res.stdout
    check_hello(res.stdout, 2, 4)
    assert f"master=localhost:{port}" in res.stdout


def test_fake_launcher_two_terminals(monkeypatch):
    port = str(free_port())
    for k, v in {"WORLD_SIZE": "8", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():
        monkeypatch.setenv(k, v)
    procs = []
    for node in ("1", "0"):
        monkeypatch.setenv("NODE_RANK", node)
        procs.append(subprocess.Popen([sys.executable, FAKE, "--only-this-node", "--rdzv-timeout", "30"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert set(rank_lines(outs[0])) == {4, 5, 6, 7} and set(rank_lines(outs[1])) == {0, 1, 2, 3}
    check_hello(outs[0] + outs[1], 2, 4)


def test_rank_that_exits_early_fails_the_barrier_at_once(tmp_path):
    script = write(tmp_path / "early.py", """
import os, clusterlab
if os.environ["RANK"] == "3":
    raise SystemExit(0)          # one barrier call fewer than the others
clusterlab.barrier("step", timeout=600)
""")
    t0 = time.monotonic()
    res = clusterlab("simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(script))
    assert time.monotonic() - t0 < 30  # not the 600 s timeout
    assert res.returncode == 1
    assert "barrier 'step' (collective call #0) can never complete: rank 3 on node1 already exited" in res.stdout + res.stderr


def test_second_request_while_waiting_is_refused_and_the_first_still_counts(tmp_path):
    # clusterlab.channel waits for each answer; a writer that does not must not count twice
    script = write(tmp_path / "twice.py", """
import os, clusterlab
if os.environ["RANK"] == "0":
    w, r = (int(x) for x in os.environ["CLUSTERLAB_CHANNEL"].split(",")[:2])
    line = b'{"op":"gather","seq":0,"name":"","timeout":60.0,"data":null}\\n'
    os.write(w, line + line)
    got = b""
    while got.count(b"\\n") < 2:
        got += os.read(r, 4096)
    print(got.decode(), flush=True)
else:
    clusterlab.barrier(timeout=60)
""")
    res = clusterlab("simulate", "--nnodes", "1", "--nproc-per-node", "2", "--master-port", "0", str(script), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "rank 0 sent a collective request while still in call #0" in res.stdout
    assert '{"seq":0,"data":[null,null]}' in res.stdout


def test_malformed_channel_request_is_answered_at_once(tmp_path):
    script = write(tmp_path / "garbage.py", """
import os
w, r = (int(x) for x in os.environ["CLUSTERLAB_CHANNEL"].split(",")[:2])
os.write(w, b"this is not a collective request\\n")
print(os.read(r, 4096).decode().strip(), flush=True)
""")
    res = clusterlab("simulate", "--nnodes", "1", "--nproc-per-node", "1", "--master-port", "0", str(script), timeout=30)
    assert res.returncode == 0, res.stderr
    assert "rank 0 sent a malformed collective request on CLUSTERLAB_CHANNEL" in res.stdout
