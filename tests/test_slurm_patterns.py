"""The launch patterns people use (examples/slurm/patterns), each run unchanged under `clusterlab sbatch`.

Reference: torch's own gloo all-reduce, across the 4 ranks of 2 simulated nodes; every rank must
get 0 + 1 + 2 + 3 = 6 and be where Slurm's layout puts it (ranks 0-1 on node001, 2-3 on node002).
The patterns need torch (pip install torch==2.13.0); Lightning, submitit and Accelerate come from
the `interop` extra (pip install -e '.[interop]'). Each test is skipped with that reason otherwise.
The same files run under a real Slurm 22.05 in tests/conformance.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = ROOT / "examples" / "slurm" / "patterns"
#: pattern -> the module it needs besides torch (the interop extra)
NEEDS = {"lightning": "lightning_fabric", "submitit": "submitit", "accelerate": "accelerate"}
LINE = re.compile(r"^rank (\d)/(\d) \(local (\d)\) on (node\d+): all_reduce of the ranks = (\S+), expected (\d+) (\w+)")


def _missing(name: str) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch==2.13.0)"
    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (the interop extra: pip install -e '.[interop]')"
    return None


def run_pattern(path: Path, timeout: float = 110) -> subprocess.CompletedProcess:
    # the venv's bin first on PATH, as `. .venv/bin/activate` does (accelerate's command is there)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run([sys.executable, "-m", "clusterlab", "sbatch", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


SCRIPTS = sorted(p.stem for p in PATTERNS.glob("*.sbatch"))


def test_every_pattern_of_the_issue_is_here():
    assert SCRIPTS == ["accelerate", "head_ip", "lightning", "submitit", "task_per_gpu_env", "torchrun_c10d",
                       "torchrun_static"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SCRIPTS)
def test_pattern_all_reduces_the_ranks(name):
    reason = _missing(name)
    if reason:
        pytest.skip(reason)
    r = run_pattern(PATTERNS / f"{name}.sbatch")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    seen = {}
    for line in r.stdout.splitlines():
        m = LINE.match(line)
        if m:
            rank, world, local, node, got, expected, verdict = m.groups()
            seen[int(rank)] = (node, int(local), int(world), float(got), int(expected), verdict)
    assert seen == {0: ("node001", 0, 4, 6.0, 6, "ok"), 1: ("node001", 1, 4, 6.0, 6, "ok"),
                    2: ("node002", 0, 4, 6.0, 6, "ok"), 3: ("node002", 1, 4, 6.0, 6, "ok")}, r.stdout + r.stderr
    if name == "head_ip":  # the head node answered with its own address
        assert "head node node001 is at 127.0.1.1" in r.stdout.splitlines()
