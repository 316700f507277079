"""Real Slurm 22.05 next to clusterlab: every request of the matrix, every value compared.

For each request of :mod:`conformance.matrix` the real cluster runs it first, then
clusterlab; :func:`conformance.harness.compare` lists every difference after the
one documented normalisation. A difference is allowed only if :data:`EXPLAINED`
names it, with the reason; anything else fails the test. When the whole matrix has
run, the figures go to ``tests/conformance/results/latest.json``, which Part 4 of
the lab reads ("N of N values match Slurm 22.05").
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .harness import NORMALISED, compare, run, wait_idle
from .matrix import ALL, examples

REQUESTS = ALL + examples()
RESULTS = Path(__file__).with_name("results") / "latest.json"

#: Differences clusterlab does not remove yet, each with its reason (request name -> [(pattern, reason)]).
EXPLAINED: dict[str, list[tuple[str, str]]] = {}

_seen: dict[str, dict] = {}


def _explained(name: str, diff: str) -> str | None:
    for pattern, reason in EXPLAINED.get(name, []):
        if re.search(pattern, diff):
            return reason
    return None


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="conformance-") as d:
        yield Path(d)
    if len(_seen) == len(REQUESTS):  # the whole matrix ran: record the figures for the lab
        _write_results()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("request_", REQUESTS, ids=[r.name for r in REQUESTS])
def test_same_as_real_slurm(real_slurm, workdir, request_):
    missing = [m for m in request_.needs if importlib.util.find_spec(m) is None]
    if missing:
        _seen[request_.name] = {"skipped": f"{', '.join(missing)} not installed"}
        pytest.skip(f"{request_.name} needs {', '.join(missing)} (pip install torch==2.13.0 -e '.[interop]')")
    wait_idle(real_slurm.conf, real_slurm.nodes)
    t0 = time.monotonic()
    real = run("real", request_, workdir, real_slurm.conf)
    lab = run("lab", request_, workdir)
    compared, diffs = compare(real, lab, request_.streams)
    unexplained = [d for d in diffs if not _explained(request_.name, d)]
    _seen[request_.name] = {"compared": compared, "differ": len(diffs), "explained": len(diffs) - len(unexplained),
                            "seconds": round(time.monotonic() - t0, 2)}
    assert not unexplained, f"{request_.name}: {len(unexplained)} of {compared} values differ from real Slurm:\n" + \
        "\n".join(unexplained[:40])


def _write_results() -> None:
    version = subprocess.run(["/usr/sbin/slurmd", "-V"], capture_output=True, text=True).stdout.strip()
    ran = {name: r for name, r in _seen.items() if "skipped" not in r}
    compared = sum(r["compared"] for r in ran.values())
    differ = sum(r["differ"] for r in ran.values())
    data = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "slurm": version,
        "requests": len(ran),
        "compared": compared,
        "matched": compared - differ,
        "explained": {name: reason for name, items in EXPLAINED.items() for _, reason in items},
        "normalised": NORMALISED,
        "by_request": _seen,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
