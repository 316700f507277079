"""Break real jobs on purpose, under ``simulate`` and as separate ``launch`` agents.

For every fault each test checks five things:

1. the exit status of every launcher;
2. the message: it names the node/rank and the cause;
3. the time from the fault to the last launcher's exit, against a bound stated here;
4. that no process is left behind: the job's process tree, walked with psutil while
   it ran, is gone afterwards (and the autouse fixture walks every process on the
   machine for the test's tag, catching orphans re-parented to init);
5. that every line each rank wrote before the fault is in its ``--log-dir`` file.

The bounds are loose on purpose (the CI machine has two shared cores); the
measured times are an order of magnitude below them. docs/snippets/guarantees.md
quotes these numbers.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import psutil
import pytest

from faults.kit import MODES, Job, Launcher, assert_gone

#: a worker exits or is killed -> every launcher has exited (teardown included)
WORKER_FAULT_BOUND = 5.0
#: the collective timeout the tests give clusterlab.barrier()
BARRIER_TIMEOUT = 2.0
#: a barrier timeout is detected within its timeout plus this
BARRIER_SLACK = 5.0
#: an agent dies (its connection closes) -> every other launcher has exited
AGENT_LOST_BOUND = 3.0
#: the heartbeat timeout the frozen-agent test sets (CLUSTERLAB_HEARTBEAT_TIMEOUT)
HEARTBEAT_TIMEOUT = 2.0
#: a rendezvous that cannot complete ends within --rdzv-timeout plus this
RDZV_SLACK = 4.0
#: SIGINT/SIGTERM to the launcher -> exited, with workers that stop on SIGTERM
SIGNAL_BOUND = 5.0


def _summary_names(text: str, node: int, rank: int, local: int, cause: str) -> None:
    assert "root cause" in text, text
    assert f"node      : node{node} " in text, text
    assert f"rank      : {rank} (local_rank {local})" in text, text
    assert cause in text, text
    assert "every worker on every node was stopped" in text
    _no_traceback(text)


def _no_traceback(text: str) -> None:
    """The launcher itself never crashed: a Python traceback of its own starts at column 0.

    (A worker's traceback is fine: it is part of the job's output, prefixed, and quoted
    in the summary's stderr tail.)
    """
    assert not [line for line in text.splitlines() if line.startswith("Traceback")], text


# ---------------------------------------------------------------- worker faults
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault, cause", [("exit", "exit code 3"), ("sigkill", "signal 9 (SIGKILL)")])
def test_worker_dies(tmp_path, mode, fault, cause):
    job = Job(mode, tmp_path, fault, fault_rank=3, gate=True)  # rank 3 = node1 local1: not on the master
    job.wait_ready()
    family = job.family()
    job.go()
    codes = job.finish()
    assert set(codes.values()) == {1}, job.text
    for node in job.launchers:  # every agent prints the summary it got from the master
        _summary_names(job.output_of(node), 1, 3, 1, cause)
    elapsed = job.exited_at() - job.fault_time(3)
    assert elapsed < WORKER_FAULT_BOUND, f"detected and torn down in {elapsed:.2f}s"
    assert_gone(family)
    job.check_logs(complete=True)


@pytest.mark.parametrize("mode", MODES)
def test_worker_hangs_inside_a_barrier(tmp_path, mode):
    """Rank 1 waits at a barrier nobody else calls: once the others exit, it fails at once, naming them."""
    job = Job(mode, tmp_path, "hang-in-barrier", fault_rank=1, barrier_timeout=BARRIER_TIMEOUT, gate=True)
    job.wait_ready()
    family = job.family()
    job.go()
    codes = job.finish()
    assert set(codes.values()) == {1}, job.text
    text = job.text
    # the others exited 0 without calling it: no need to wait for the timeout
    assert "barrier 'extra' (collective call #0) can never complete: rank 0" in text
    assert "already exited without calling it" in text
    _summary_names(job.output_of(0), 0, 1, 1, "exit code 1")
    elapsed = job.exited_at() - job.fault_time(1)
    assert elapsed < BARRIER_SLACK, f"{elapsed:.2f}s"
    assert_gone(family)
    job.check_logs(complete=True)


@pytest.mark.parametrize("mode", MODES)
def test_worker_hangs_outside_while_others_wait(tmp_path, mode):
    """Rank 2 sleeps forever and ignores SIGTERM; the others' barrier times out naming it; it gets SIGKILL."""
    job = Job(mode, tmp_path, "hang-outside", fault_rank=2, barrier_timeout=BARRIER_TIMEOUT,
              extra=("--term-timeout", "1"), gate=True)
    job.wait_ready()
    family = job.family()
    job.go()
    codes = job.finish()
    assert set(codes.values()) == {1}, job.text
    assert "barrier 'end' (collective call #0) timed out after 2s: rank 2 on node1 never arrived (3 of 4 ranks did)" in job.text
    elapsed = job.exited_at() - job.fault_time(2)
    assert elapsed < BARRIER_TIMEOUT + 1 + BARRIER_SLACK, f"{elapsed:.2f}s"
    assert_gone(family)  # including rank 2, which ignored SIGTERM
    job.check_logs(complete=True)


# ---------------------------------------------------------------- agent faults
@pytest.mark.parametrize("mode", MODES)
def test_non_master_agent_sigkilled(tmp_path, mode):
    job = Job(mode, tmp_path, "wait")
    job.wait_ready()
    family = job.family()
    t0 = job.kill_agent(1)
    codes = job.finish()
    # its launcher (simulate's, or node 1's own `launch`) reports the kill and exits 128+9
    assert codes == ({0: 1} if mode == "simulate" else {0: 1, 1: 128 + signal.SIGKILL}), job.text
    assert "the agent of node1 was killed by signal 9 (SIGKILL)" in job.text
    assert "the agent of node1 (" in job.output_of(0) and "was lost (connection closed" in job.output_of(0)
    elapsed = job.launchers[0].exited_at - t0
    assert elapsed < AGENT_LOST_BOUND, f"the others noticed and stopped in {elapsed:.2f}s"
    assert_gone(family)  # node1's workers die with their agent (PR_SET_PDEATHSIG)
    job.check_logs(complete=True)  # every line was out before the kill: wait_ready saw them on the console


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["wait", "idle"])  # ranks inside a barrier, or before their first one
def test_master_agent_sigkilled(tmp_path, mode, fault):
    job = Job(mode, tmp_path, fault)
    job.wait_ready()
    family = job.family()
    t0 = job.kill_agent(0)
    codes = job.finish()
    survivor = job.launchers[0 if mode == "simulate" else 1]
    assert codes == ({0: 128 + signal.SIGKILL} if mode == "simulate" else {0: 128 + signal.SIGKILL, 1: 1}), job.text
    assert "the agent of node0 was killed by signal 9 (SIGKILL)" in job.text
    assert "node1: lost the master agent (node0 at 127.0.0.1:" in survivor.text
    elapsed = survivor.exited_at - t0
    assert elapsed < AGENT_LOST_BOUND, f"{elapsed:.2f}s"
    assert_gone(family)
    job.check_logs(complete=True)


@pytest.mark.parametrize("mode", MODES)
def test_launcher_sigkilled(tmp_path, mode):
    """The launcher itself (`clusterlab simulate`, or node 1's `clusterlab launch`) dies by
    SIGKILL: its agents read EOF on their lifeline pipe and stop their nodes as on SIGHUP,
    so nothing outlives it."""
    job = Job(mode, tmp_path, "wait")
    job.wait_ready()
    family = job.family()
    t0 = time.time()
    job.launchers[0 if mode == "simulate" else 1].proc.kill()
    job.finish()  # its output pipe closes once the agents, which share it, have exited too
    assert job.exited_at() - t0 < SIGNAL_BOUND, f"{job.exited_at() - t0:.2f}s"
    for node in (0, 1) if mode == "simulate" else (1,):
        assert f"node{node}: the launcher is gone; stopping this node's workers" in job.text, job.text
    _no_traceback(job.text)
    assert_gone(family)


def test_agent_sigkilled_leaves_no_grandchild(tmp_path):
    """A worker started a process in a session of its own (setsid), then its agent was
    SIGKILLed: the worker dies with the agent (PR_SET_PDEATHSIG), and the grandchild,
    re-parented to `clusterlab launch` (a subreaper), is swept by it."""
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "spawner.py"
    script.write_text(f"""
import subprocess, sys, time
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
open({str(pidfile)!r}, "w").write(str(child.pid))
print("spawned", flush=True)
time.sleep(300)
""")
    job = Launcher([sys.executable, "-m", "clusterlab", "launch", "--standalone", "--nproc-per-node", "1",
                    str(script)])
    job.wait_for("spawned")
    grandchild = psutil.Process(int(pidfile.read_text()))
    agent = psutil.Process(job.proc.pid).children()[0]
    agent.send_signal(signal.SIGKILL)
    assert job.wait(30) == 128 + signal.SIGKILL, job.text
    assert "the agent of node0 was killed by signal 9 (SIGKILL)" in job.text, job.text
    assert_gone([grandchild])


def test_frozen_agent_is_caught_by_the_heartbeat(tmp_path):
    """SIGSTOP keeps the connection open: only the missing heartbeats reveal the dead node."""
    job = Job("launch", tmp_path, "wait", env={"CLUSTERLAB_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)})
    job.wait_ready()
    family = job.family()
    t0 = job.kill_agent(1, signal.SIGSTOP)
    try:
        assert job.launchers[0].wait(30) == 1, job.text
        elapsed = job.launchers[0].exited_at - t0
    finally:
        job.kill_agent(1, signal.SIGCONT)  # it wakes up, finds the master gone, stops its workers
    assert job.launchers[1].wait(30) == 1, job.text
    assert "the agent of node1 (" in job.launchers[0].text and "heartbeat missed" in job.launchers[0].text
    assert "node1: lost the master agent" in job.launchers[1].text
    assert elapsed < HEARTBEAT_TIMEOUT + 1.0 + AGENT_LOST_BOUND, f"{elapsed:.2f}s"
    assert_gone(family)
    job.check_logs(complete=True)


# ---------------------------------------------------------------- rendezvous faults
def test_a_node_never_joins(tmp_path):
    job = Job("launch", tmp_path, "none", nnodes=3, nproc=1, nodes=(0, 1), rdzv_timeout=2)
    codes = job.finish()
    assert codes == {0: 1, 1: 1}, job.text
    assert "rendezvous timed out after 2s: node rank(s) 2 never joined" in job.launchers[0].text
    # node 1 either hears it from the master or reaches its own --rdzv-timeout first
    assert ("rendezvous timed out on the master" in job.launchers[1].text
            or "node1: gave up waiting for the other nodes to join" in job.launchers[1].text), job.text
    assert job.exited_at() - job.started_at < 2 + RDZV_SLACK
    assert not job.log_dir.exists()  # no worker ever started


def test_the_master_never_comes_up(tmp_path):
    job = Job("launch", tmp_path, "none", nproc=1, nodes=(1,), rdzv_timeout=2)
    assert job.finish() == {1: 1}, job.text
    assert (f"rendezvous timed out after 2s: the master agent (node 0) never answered at 127.0.0.1:{job.port}"
            in job.text)
    assert job.exited_at() - job.started_at < 2 + RDZV_SLACK


@pytest.mark.parametrize("mode", MODES)
def test_port_already_taken(tmp_path, mode):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        job = Job(mode, tmp_path, "none", nproc=1, nodes=(0,), port=port)
        codes = job.finish()
    assert codes == {0: 2}, job.text
    assert job.text.strip().splitlines()[-1] == (
        f"clusterlab {mode}: error: cannot listen on 127.0.0.1:{port}: the port is already in use "
        "(another job?); pick a free --master-port")


def test_node_pointed_at_a_port_that_is_not_a_master(tmp_path):
    """Node 1 reaches a listener that answers with garbage (say, a web server): a clean refusal."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        job = Job("launch", tmp_path, "none", nproc=1, nodes=(1,), port=other.getsockname()[1])
        conn, _ = other.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            codes = job.finish()
    assert codes == {1: 1}, job.text
    assert "refused this agent: the master sent garbage" in job.text


def test_two_jobs_side_by_side(tmp_path):
    """Two jobs with different ports on one machine: both succeed, neither sees the other's ranks."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Job("simulate", tmp_path / "a", "none", extra=("--rdzv-id", "job-a"))
    b = Job("launch", tmp_path / "b", "none", extra=("--rdzv-id", "job-b"))
    family = a.family() + b.family()
    assert a.finish() == {0: 0} and b.finish() == {0: 0, 1: 0}, a.text + b.text
    for job in (a, b):
        assert job.text.count("] ready") == 4
        for rank in range(4):
            assert job.text.count(f"] rank {rank} done") == 1
        job.check_logs(complete=True)
    assert_gone(family)


# ---------------------------------------------------------------- signals to the launcher
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("moment", ["rendezvous", "work", "teardown"])
def test_signal_to_the_launcher(tmp_path, mode, sig, moment):
    """Ctrl-C or SIGTERM while the agents meet, while ranks work, or while a failure is being torn down."""
    if moment == "rendezvous":
        # simulate's rendezvous takes milliseconds; a lone master agent waits for its node 1 forever
        job = Job(mode, tmp_path, "wait", nodes=(0,) if mode == "launch" else None)
        job.wait_for(r"node0 is the master: waiting for 1 more node")
    elif moment == "work":
        job = Job(mode, tmp_path, "wait", extra=("--term-timeout", "2"))
        job.wait_ready()
    else:
        # rank 3 fails; rank 2 ignores SIGTERM, so the teardown lasts --term-timeout 3 seconds
        job = Job(mode, tmp_path, "hang-outside", fault_rank=2, barrier_timeout=1, extra=("--term-timeout", "3"))
        job.wait_for(r"timed out after 1s")
    family = job.family()
    t0 = job.signal_launchers(sig)
    codes = job.finish()
    # 128+N from the agent's handler; -N if the signal landed after an agent restored the default
    # action at the very end of its shutdown (nothing was left to stop): a shell shows 128+N for both.
    # During a teardown a node whose workers stopped at once may have finished, with the job's own
    # status, before the signal was sent; under `launch` that is a launcher of its own.
    for node, code in codes.items():
        if node in job.signalled:
            assert code in {128 + sig, -sig}, (node, code, job.text)
        else:
            assert moment == "teardown" and code == 1, (node, code, job.text)
    assert 128 + sig in [codes[node] for node in job.signalled], job.text
    _no_traceback(job.text)
    if moment == "work" or (mode == "launch" and moment == "rendezvous"):
        # (simulate's rendezvous takes milliseconds: there the signal may land in any phase, and the
        # message that wins depends on it; the status and the clean-up are what must not change)
        assert f"interrupted by {signal.Signals(sig).name}" in job.text, job.text
    bound = SIGNAL_BOUND + (3 if moment == "teardown" else 0)
    assert job.exited_at() - t0 < bound, f"{job.exited_at() - t0:.2f}s"
    assert_gone(family)
    if moment != "rendezvous":
        job.check_logs(complete=moment == "work")


# ---------------------------------------------------------------- restarts
@pytest.mark.parametrize("mode", MODES)
def test_restart_then_success(tmp_path, mode):
    job = Job(mode, tmp_path, "flaky", fault_rank=1, extra=("--max-restarts", "1"))
    codes = job.finish()
    assert set(codes.values()) == {0}, job.text
    assert "rank 1 on node0 failed (exit code 1); restarting the whole world, attempt 1 of 1" in job.text
    job.check_logs(attempt=0)
    job.check_logs(attempt=1)
    for rank in range(4):
        assert f"rank {rank} done" in job.log(rank, attempt=1)


@pytest.mark.parametrize("mode", MODES)
def test_restarts_exhausted(tmp_path, mode):
    job = Job(mode, tmp_path, "always-fail", fault_rank=2, extra=("--max-restarts", "1"))
    codes = job.finish()
    assert set(codes.values()) == {1}, job.text
    assert "job failed after 2 attempt(s)" in job.text
    _summary_names(job.output_of(1), 1, 2, 0, "exit code 1")
    job.check_logs(attempt=0)
    job.check_logs(attempt=1)
