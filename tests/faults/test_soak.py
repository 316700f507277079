"""Many short worlds, each broken in a randomly chosen way: no hang, no orphan, no lost line.

The count is bounded so the soak runs in the normal suite in about half a minute
(CLUSTERLAB_SOAK_COUNT raises it for a longer local run; CLUSTERLAB_SOAK_SEED
replays one sequence). Every world is checked the same way as in test_faults:
exit status, process tree gone, and every line each rank recorded in its truth
file present in its log file.
"""

from __future__ import annotations

import os
import random
import signal

import pytest

from faults.kit import Job, assert_gone

COUNT = int(os.environ.get("CLUSTERLAB_SOAK_COUNT", "45"))
SEED = int(os.environ.get("CLUSTERLAB_SOAK_SEED", random.randrange(1 << 30)))
#: no world may take longer than this from start to the exit of its last launcher
WORLD_BOUND = 30.0

FAULTS = ["none", "exit", "sigkill", "hang-outside", "flaky", "kill-agent", "sigterm", "sigint"]


@pytest.mark.soak
@pytest.mark.timeout(200)
def test_soak(tmp_path):
    rng = random.Random(SEED)
    for i in range(COUNT):
        fault = rng.choice(FAULTS)
        mode = rng.choice(["simulate", "simulate", "launch"])
        nnodes, nproc = rng.choice([(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)])
        world = nnodes * nproc
        if fault == "kill-agent" and nnodes == 1:
            fault = "sigkill"
        if fault == "hang-outside" and world == 1:
            fault = "exit"  # alone, nobody would ever wait for the hanging rank
        rank = rng.randrange(world)
        where = tmp_path / f"w{i}"
        where.mkdir()
        story = f"seed {SEED} world {i}: {mode} {nnodes}x{nproc}, {fault} at rank {rank}"
        worker_fault = {"kill-agent": "wait", "sigterm": "wait", "sigint": "wait"}.get(fault, fault)
        extra = ("--term-timeout", "1", "--max-restarts", "1" if fault == "flaky" else "0")
        job = Job(mode, where, worker_fault, rank, nnodes=nnodes, nproc=nproc, lines=rng.randint(0, 30),
                  barrier_timeout=1, extra=extra)
        family = []
        if fault in ("kill-agent", "sigterm", "sigint"):
            job.wait_ready()
            family = job.family()
            if fault == "kill-agent":
                job.kill_agent(rng.randrange(nnodes))
            else:
                job.signal_launchers(signal.SIGTERM if fault == "sigterm" else signal.SIGINT)
        codes = job.finish(WORLD_BOUND)
        assert job.exited_at() - job.started_at < WORLD_BOUND, story
        if fault in ("none", "flaky"):
            assert set(codes.values()) == {0}, f"{story}\n{job.text}"
        elif fault in ("sigterm", "sigint"):
            sig = signal.SIGTERM if fault == "sigterm" else signal.SIGINT
            assert set(codes.values()) <= {128 + sig, -sig}, f"{story}\n{job.text}"
        elif fault == "kill-agent":
            assert all(c != 0 for c in codes.values()), f"{story}\n{job.text}"
        else:
            assert set(codes.values()) <= {1, 0} and 1 in codes.values(), f"{story}\n{job.text}"
        assert_gone(family)
        job.check_logs(attempt=0)
        if fault == "flaky":
            job.check_logs(attempt=1)
