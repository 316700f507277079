"""Turn a results dict (``bench/results/latest.json``) into the targets and a markdown table.

Used by ``bench/run.py`` to write ``latest.md`` and by ``docs/performance.md``,
which renders the committed results at build time: one formatter, one table.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def load(path: Path = RESULTS) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _median(entry: dict | None, key: str | None = None) -> float | None:
    if not entry or "skipped" in entry or "failed" in entry:
        return None
    entry = entry[key] if key else entry
    return entry["median"]


def targets(r: dict) -> list[dict]:
    """The issue's targets, each as a ratio measured in this run; ``met`` is None when a peer is missing."""
    out = []

    def add(name: str, value: float | None, op: str, limit: float, detail: str) -> None:
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"name": name, "value": value, "op": op, "limit": limit, "met": met, "detail": detail})

    def ratio(a, b):
        return a / b if a is not None and b else None

    launch = r.get("launch", {}).get("peers", {})
    ours = _median(launch.get("clusterlab"))
    shape = r.get("launch", {}).get("shape", "2x4")
    add(f"launch {shape} / mpirun", ratio(ours, _median(launch.get("mpirun"))), "<=", 0.35, "clusterlab simulate vs mpirun")
    add(f"launch {shape} / floor, --hosts off", ratio(_median(launch.get("hosts_off")), _median(launch.get("floor"))),
        "<=", 2.0, "vs the same number of bare interpreters")
    add(f"launch {shape} / floor, nodes as hosts", ratio(ours, _median(launch.get("floor"))), "<=", 2.5,
        "namespaces per node, as simulate runs by default")
    b8 = r.get("barrier", {}).get("8", {}).get("peers", {})
    ours = _median(b8.get("clusterlab"), "mean_us")
    add("barrier w8 / mpi4py", ratio(ours, _median(b8.get("mpi4py"), "mean_us")), "<=", 2.0, "mean latency, 2 nodes x 4")
    add("gloo / barrier w8", ratio(_median(b8.get("gloo"), "mean_us"), ours), ">=", 20.0, "how many times faster than gloo")
    scale = r.get("scale", {}).get("peers", {})
    ranks = r.get("scale", {}).get("ranks", 512)
    add(f"{ranks} ranks / floor", ratio(_median(scale.get("clusterlab")), _median(scale.get("floor"))), "<=", 1.5,
        "launch + barrier + exit vs as many bare interpreters")
    add("site build (s)", _median(r.get("site"), "seconds"), "<=", 60.0, "mkdocs build --strict")
    return out


def _cell(entry: dict | None, key: str | None = None, scale: float = 1.0, unit: str = "") -> str:
    if entry is None:
        return "-"
    if "skipped" in entry:
        return "skipped"
    if "failed" in entry:
        return "failed"
    s = entry[key] if key else entry
    return f"{s['median'] * scale:.{_digits(s['median'] * scale)}f}{unit} (±{s['spread_pct'] / 2:.0f}%)"


def _barrier_cell(e: dict | None) -> str:
    return _cell(e) if not e or "mean_us" not in e else f"{_cell(e, 'mean_us')} / {e['p99_us']['median']:.0f}"


def _digits(x: float) -> int:
    return 0 if x >= 100 else 1 if x >= 10 else 2


def markdown(r: dict) -> str:
    """The whole results section: machine line, the four tables, the targets."""
    m = r["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}; "
        f"load average at start {', '.join(map(str, m['load_at_start']))}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Median of {r['repeats']} interleaved runs (± half the min-max spread)"
        + (" - QUICK MODE, tiny sizes, not a measurement." if r.get("quick") else "."),
        "",
    ]
    if r.get("baseline"):
        lines += [f"*baseline*: the clusterlab package in `{r['baseline']}`, measured in the same rounds.", ""]
    if "launch" in r:
        p = r["launch"]["peers"]
        nnodes, nproc = map(int, r["launch"]["shape"].split("x"))
        lines += [f"**1. Launch to exit, {nnodes} nodes x {nproc} ranks** (hello + one barrier + exit), milliseconds", "",
                  f"| floor: {nnodes * nproc} bare interpreters | clusterlab simulate (nodes as hosts) "
                  f"| clusterlab simulate --hosts off | torchrun x {nnodes} agents | mpirun -np {nnodes * nproc} |",
                  "| --- | --- | --- | --- | --- |",
                  "| " + " | ".join(_cell(p.get(k), scale=1e3) for k in ("floor", "clusterlab", "hosts_off", "torchrun",
                                                                          "mpirun")) + " |", ""]
        if "mean_us" not in p.get("baseline", {}) and isinstance(p.get("baseline"), dict) and "median" in p["baseline"]:
            lines += [f"baseline: {_cell(p['baseline'], scale=1e3)}", ""]
    if "barrier" in r:
        lines += ["**2. Barrier latency**, microseconds per barrier: mean / p99", "",
                  "| world (nodes x ranks) | clusterlab | Python relay floor | multiprocessing.Barrier | torch gloo "
                  "| mpi4py (OpenMPI) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for world, w in r["barrier"].items():
            cells = []
            for k in ("clusterlab", "relay", "multiprocessing", "gloo", "mpi4py"):
                cells.append(_barrier_cell(w["peers"].get(k)))
            lines.append(f"| {world} ({w['shape']}), {w['barriers']} barriers | " + " | ".join(cells) + " |")
        for world, w in r["barrier"].items():
            base = w["peers"].get("baseline")
            if base and "mean_us" in base:
                lines.append(f"baseline at world {world}: {_barrier_cell(base)}")
        lines.append("")
    if "scale" in r:
        s = r["scale"]
        p = s["peers"]
        lines += [f"**3. Scale: {s['shape']} = {s['ranks']} ranks**, launch + barrier + exit, seconds", "",
                  f"| floor: {s['ranks']} bare interpreters | clusterlab simulate |", "| --- | --- |",
                  f"| {_cell(p.get('floor'))} | {_cell(p.get('clusterlab'))} |", ""]
        mem = s.get("memory")
        if isinstance(mem, list):
            lines += ["Peak resident memory (MB; RSS counts pages an agent still shares with the supervisor "
                      "it was forked from):", "",
                      "| world | supervisor | one agent (max) | one rank (median / max) |", "| --- | --- | --- | --- |"]
            lines += [f"| {x['shape']} | {x['supervisor_mb']:.1f} | {x['agent_mb']:.1f} | "
                      f"{x['rank_median_mb']:.1f} / {x['rank_max_mb']:.1f} |" for x in mem]
            lines.append("")
        elif mem:
            lines += ["Peak memory: failed", ""]
    if "site" in r:
        site = _cell(r["site"], "seconds") if "seconds" in r["site"] else _cell(r["site"])
        lines += [f"**4. Site**: `mkdocs build --strict`: {site} s", ""]
    lines += ["**Targets** (ratios from this run)", "", "| target | measured | limit | met |", "| --- | --- | --- | --- |"]
    for t in r.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        met = "n/a" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['name']} ({t['detail']}) | {value} | {t['op']} {t['limit']:g} | {met} |")
    return "\n".join(lines) + "\n"
