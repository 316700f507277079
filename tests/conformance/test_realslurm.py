"""The real cluster itself: its nodes are hosts, /etc is untouched, and stop() leaves no daemon behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time

import psutil
import pytest

from clusterlab.slurm import realslurm


def _etc_digest() -> str:
    h = hashlib.sha256()
    for path in ("/etc/hosts", "/etc/hostname"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_a_private_cluster_starts_runs_and_stops_by_pid():
    reason = realslurm.unavailable()
    if reason:
        pytest.skip(reason)
    before = _etc_digest()
    root = tempfile.mkdtemp(prefix="realslurm-")
    try:
        t0 = time.monotonic()
        cluster = realslurm.start(root)
        started = time.monotonic() - t0
        try:
            r = cluster.run("srun", "-N4", "-l", "hostname")
            # each slurmd runs in a UTS namespace of its own: a task's hostname is its node's name
            assert sorted(r.stdout.split()) == ["0:", "1:", "2:", "3:", "node001", "node002", "node003", "node004"]
            r = cluster.run("srun", "-N2", "getent", "hosts", "node002")  # the private hosts file, in each node
            assert r.stdout.split()[:2] == ["127.0.1.2", "node002"], r.stdout + r.stderr
            daemons = [psutil.Process(pid) for pid in cluster.pids.values()]
            assert len(daemons) == 6  # munged, slurmctld, 4 slurmd
        finally:
            cluster.stop()
        _gone, alive = psutil.wait_procs(daemons, timeout=10)
        assert not alive, [p.pid for p in alive]
        assert not realslurm._stepds(root)
        assert _etc_digest() == before  # nothing under /etc changed
        print(f"real cluster up in {started:.1f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
