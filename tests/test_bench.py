"""The benchmark suite runs (tiny sizes) and writes results of the documented shape.

Not a timed test: the numbers themselves are checked by nobody here; bench/run.py
and docs/performance.md report them against the targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("launch", "barrier", "scale", "site")
PEERS = {
    "launch": {"floor", "clusterlab", "hosts_off", "baseline", "torchrun", "mpirun"},
    "barrier": {"clusterlab", "baseline", "relay", "multiprocessing", "gloo", "mpi4py"},
    "scale": {"floor", "clusterlab"},
}


def _measured_or_skipped(entry: dict, keys: tuple[str, ...]) -> None:
    assert isinstance(entry, dict)
    if "skipped" in entry:
        assert isinstance(entry["skipped"], str) and entry["skipped"]
        return
    assert "failed" not in entry, entry.get("failed")
    for key in keys:
        s = entry[key] if key else entry
        assert set(s) >= {"median", "min", "max", "spread_pct", "samples"}
        assert s["min"] <= s["median"] <= s["max"] and s["min"] > 0
        assert len(s["samples"]) >= 1


@pytest.mark.timeout(600)
def test_quick_suite_writes_results_of_the_right_shape(tmp_path):
    # --baseline: this same tree, measured a second time as the "before" of a change
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path),
                          "--baseline", str(ROOT / "src")], capture_output=True, text=True, timeout=580, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())

    assert results["schema"] == 1 and results["quick"] is True
    machine = results["machine"]
    assert {"date", "os", "cpu", "cores", "memory_gb", "versions"} <= set(machine)
    assert set(FIGURES) <= set(results)

    launch = results["launch"]
    assert set(launch["peers"]) == PEERS["launch"]
    for entry in launch["peers"].values():
        _measured_or_skipped(entry, ("",))
    assert all("median" in launch["peers"][k] for k in ("clusterlab", "floor", "baseline"))

    assert results["barrier"], "no barrier world measured"
    for world, w in results["barrier"].items():
        nnodes, nproc = map(int, w["shape"].split("x"))
        assert nnodes >= 2 and nnodes * nproc == int(world) and w["barriers"] > 0
        assert set(w["peers"]) == PEERS["barrier"]
        for entry in w["peers"].values():
            _measured_or_skipped(entry, ("mean_us", "p99_us"))
        assert "mean_us" in w["peers"]["clusterlab"] and "mean_us" in w["peers"]["baseline"]

    scale = results["scale"]
    assert set(scale["peers"]) == PEERS["scale"]
    for entry in scale["peers"].values():
        _measured_or_skipped(entry, ("",))
    assert isinstance(scale["memory"], list) and len(scale["memory"]) == 2
    for m in scale["memory"]:
        assert m["supervisor_mb"] > 0 and m["agent_mb"] > 0 and 0 < m["rank_median_mb"] <= m["rank_max_mb"]

    assert "skipped" in results["site"]  # quick mode never builds the site

    names = [t["name"] for t in results["targets"]]
    assert len(names) == 7
    for t in results["targets"]:
        assert t["op"] in ("<=", ">=") and t["met"] in (True, False, None)

    table = (tmp_path / "latest.md").read_text()
    assert machine["date"] in table and "| target |" in table and "clusterlab simulate" in table
    assert "baseline at world" in table
