"""Shared test fixtures.

Every test runs with a unique ``CLUSTERLAB_TEST_TAG`` in its environment, which
every process it starts inherits. After the test, any live process that carries
the tag (found by walking every process on the machine, so orphans re-parented to
init are caught too) fails the test, and is killed so the next test starts clean.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _tagged(tag: str) -> list[psutil.Process]:
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get("CLUSTERLAB_TEST_TAG") == tag and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind(monkeypatch):
    """Fail the test if any process it started is still alive afterwards."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv("CLUSTERLAB_TEST_TAG", tag)
    yield
    deadline = time.monotonic() + 5.0  # exiting processes get a moment to finish exiting
    left = _tagged(tag)
    while left and time.monotonic() < deadline:
        psutil.wait_procs(left, timeout=0.2)
        left = _tagged(tag)
    if left:
        described = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in left if p.is_running()]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if described:
            pytest.fail("processes left behind: " + "; ".join(described))
