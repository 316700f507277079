"""The real Slurm cluster the conformance tests compare against: started once per session.

Skipped, with the reason, where it cannot run (not root, slurm-wlm or munge missing):
:func:`clusterlab.slurm.realslurm.unavailable` names the fix.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from clusterlab.slurm import realslurm


@pytest.fixture(scope="session")
def real_slurm():
    reason = realslurm.unavailable()
    if reason:
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="realslurm-")  # short: munged's socket path must fit in 108 bytes
    try:
        cluster = realslurm.start(root)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
