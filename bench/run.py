"""clusterlab's benchmark suite: launch, barrier, scale and site build, side by side with the peers.

    python bench/run.py            # the full suite (about 8 minutes on 2 cores), or `make bench`
    python bench/run.py --quick    # tiny sizes, a few seconds: checks that the suite runs

Four figures, each measured in one run with every peer interleaved (so a noisy
neighbour hurts all of them alike), repeated, reported as median and spread:

1. **launch**: launch to exit of a 2-node x 4-rank world that says hello, meets
   at one barrier and exits - ``clusterlab simulate``, two ``torchrun`` agents,
   ``mpirun -np 8`` - against the floor: 8 bare interpreters started and reaped.
2. **barrier**: mean and p99 latency of thousands of barriers at world 2, 8 and
   32 across 2 or more nodes - clusterlab, ``multiprocessing.Barrier``, torch
   gloo, mpi4py on OpenMPI, and the *relay floor*: the same processes and hops as
   clusterlab's barrier in as little Python as they take (workers/relay_floor.py).
3. **scale**: 64 nodes x 8 = 512 ranks, launch + barrier + exit, against 512 bare
   interpreters; peak memory of the launcher (supervisor, agents) and per rank.
4. **site**: one full ``mkdocs build --strict``.

Peers that are not installed are reported as skipped. Results go to
``bench/results/latest.json`` and ``bench/results/latest.md`` (see
``bench/report.py`` for the targets they are checked against).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKERS = HERE / "workers"
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import report  # noqa: E402
from harness import PYTHON, BenchFailure, bench_env, floor, free_port, run_together, summary  # noqa: E402


# ---------------------------------------------------------------------------- the commands
def clusterlab_cmd() -> list[str]:
    """The ``clusterlab`` console script users type, or ``python -m clusterlab`` without one."""
    script = Path(PYTHON).with_name("clusterlab")
    return [str(script)] if script.exists() else [PYTHON, "-m", "clusterlab"]


def simulate(nnodes: int, nproc: int, *worker: str, baseline: bool = False, hosts_off: bool = False) -> list[str]:
    """``clusterlab simulate`` (nodes as hosts where the kernel allows it, as by default); with
    ``baseline``, the tree given by ``--baseline`` (``python -m``); with ``hosts_off``, ``--hosts off``."""
    launcher = [PYTHON, "-m", "clusterlab"] if baseline else clusterlab_cmd()
    return [*launcher, "simulate", *(["--hosts", "off"] if hosts_off else []), "--nnodes", str(nnodes),
            "--nproc-per-node", str(nproc), "--master-port", "0", *worker]


def mpirun_cmd(np_: int, *worker: str) -> list[str]:
    mpirun = shutil.which("mpirun", path=f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [mpirun, *root, "--oversubscribe", "-np", str(np_), PYTHON, *worker]


def torchrun_cmds(nnodes: int, nproc: int, *worker: str) -> list[list[str]]:
    port = str(free_port())
    return [[PYTHON, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
             "--node-rank", str(n), "--master-addr", "127.0.0.1", "--master-port", port, *worker]
            for n in range(nnodes)]


def missing(*modules: str) -> str | None:
    """Why a peer is skipped (a module or mpirun not installed), or None."""
    for m in modules:
        if importlib.util.find_spec(m) is None:
            return f"{m} is not installed (pip install -e '.[bench]')"
    if "mpi4py" in modules and mpirun_cmd(1)[0] is None:
        return "mpirun is not on PATH (pip install -e '.[bench]')"
    return None


#: ``--baseline SRC``: an older clusterlab source tree, measured as one more peer beside this one
BASELINE: str | None = None
#: ``--peers a,b``: measure only these peers (the others are reported as skipped)
ONLY: set[str] | None = None


def _baseline(fn):
    """The peer ``fn`` run against ``--baseline``'s tree (its ``src`` first on PYTHONPATH), or skipped."""
    if BASELINE is None:
        return ("no --baseline given", fn)
    return (None, fn)


def _measure(peers: dict, repeats: int, warmup: int = 1) -> dict:
    """Run every available peer ``warmup + repeats`` times, interleaved; keep the timed rounds."""
    if ONLY is not None:
        peers = {name: (skip or (None if name in ONLY else "not in --peers"), fn) for name, (skip, fn) in peers.items()}
    samples: dict[str, list] = {name: [] for name, (skip, _) in peers.items() if not skip}
    failed: dict[str, str] = {}
    for round_ in range(warmup + repeats):
        for name, (skip, fn) in peers.items():
            if skip or name in failed:
                continue
            try:
                value = fn()
            except BenchFailure as exc:
                failed[name] = str(exc)[:2000]
                print(f"  {name}: FAILED {str(exc).splitlines()[0]}", file=sys.stderr)
                continue
            if round_ >= warmup:
                samples[name].append(value)
    out = {}
    for name, (skip, _) in peers.items():
        out[name] = {"skipped": skip} if skip else {"failed": failed[name]} if name in failed else samples[name]
    return out


def _hellos(finished, expect: int) -> float:
    said = sum(o.count("hello from rank") for o in finished.outputs)
    if said != expect:
        raise BenchFailure(f"{said} of {expect} ranks said hello:\n" + "\n".join(finished.outputs)[-1500:])
    return finished.seconds


# ---------------------------------------------------------------------------- 1. launch
def fig_launch(nnodes: int, nproc: int, repeats: int, timeout: float) -> dict:
    hello, world = str(WORKERS / "hello_clusterlab.py"), nnodes * nproc
    peers = {
        "floor": (None, lambda: floor(world, timeout)),
        "clusterlab": (None, lambda: _hellos(run_together([simulate(nnodes, nproc, hello)], timeout), world)),
        "hosts_off": (None, lambda: _hellos(run_together([simulate(nnodes, nproc, hello, hosts_off=True)], timeout),
                                            world)),
        "baseline": _baseline(lambda: _hellos(run_together([simulate(nnodes, nproc, hello, baseline=True)], timeout,
                                                           env=bench_env(PYTHONPATH=str(BASELINE))), world)),
        "torchrun": (missing("torch"), lambda: _hellos(
            run_together(torchrun_cmds(nnodes, nproc, str(WORKERS / "hello_torch.py")), timeout), world)),
        "mpirun": (missing("mpi4py"), lambda: _hellos(
            run_together([mpirun_cmd(world, str(WORKERS / "hello_mpi.py"))], timeout), world)),
    }
    measured = _measure(peers, repeats)
    return {"shape": f"{nnodes}x{nproc}", "peers": {k: v if isinstance(v, dict) else summary(v) for k, v in measured.items()}}


# ---------------------------------------------------------------------------- 2. barrier
def _barrier_stats(finished) -> dict:
    for out in finished.outputs:
        for line in out.splitlines():
            if "BENCH {" in line:
                return json.loads(line.split("BENCH ", 1)[1])
    raise BenchFailure("no BENCH line from rank 0:\n" + "\n".join(finished.outputs)[-1500:])


def fig_barrier(worlds: list[tuple[int, int]], n: int, warmup: int, repeats: int, timeout: float) -> dict:
    out = {}
    for nnodes, nproc in worlds:
        rounds = n if nnodes * nproc <= 8 else max(1, n // 4)  # world 32 on 2 cores: gloo takes ~10 ms a barrier
        out[str(nnodes * nproc)] = _barrier_world(nnodes, nproc, rounds, warmup, repeats, timeout)
    return out


def _barrier_world(nnodes: int, nproc: int, rounds: int, warmup: int, repeats: int, timeout: float) -> dict:
    loop, relay = str(WORKERS / "barrier_loop.py"), str(WORKERS / "relay_floor.py")
    world = nnodes * nproc
    args = (str(rounds), str(warmup))

    def ours(baseline: bool = False) -> dict:
        env = bench_env(PYTHONPATH=str(BASELINE)) if baseline else None
        return _barrier_stats(run_together([simulate(nnodes, nproc, loop, "clusterlab", *args, baseline=baseline)],
                                           timeout, env=env))

    peers = {
        "clusterlab": (None, ours),
        "baseline": _baseline(lambda: ours(baseline=True)),
        "relay": (None, lambda: _barrier_stats(run_together([[PYTHON, relay, str(nnodes), str(nproc), *args]], timeout))),
        "multiprocessing": (None, lambda: _barrier_stats(run_together([[PYTHON, loop, "mp", *args, str(world)]], timeout))),
        "gloo": (missing("torch"),
                 lambda: _barrier_stats(run_together([simulate(nnodes, nproc, loop, "gloo", *args)], timeout))),
        "mpi4py": (missing("mpi4py"),
                   lambda: _barrier_stats(run_together([mpirun_cmd(world, loop, "mpi", *args)], timeout))),
    }
    print(f"barrier: world {world} ({nnodes}x{nproc}), {rounds} barriers", file=sys.stderr)
    measured = _measure(peers, repeats, warmup=0)
    entry = {}
    for name, v in measured.items():
        if isinstance(v, dict):
            entry[name] = v
        else:
            entry[name] = {"mean_us": summary([s["mean_us"] for s in v]), "p99_us": summary([s["p99_us"] for s in v])}
    return {"shape": f"{nnodes}x{nproc}", "barriers": rounds, "peers": entry}


# ---------------------------------------------------------------------------- 3. scale
def _memory_run(nnodes: int, nproc: int, timeout: float) -> dict:
    """One extra (untimed) run: sample the supervisor and the agents; each rank reports its own peak RSS."""
    import subprocess

    import psutil

    sampled = Path(tempfile.mkdtemp(prefix="clusterlab-bench-")) / "sampled"
    env = bench_env(BENCH_REPORT_RSS=str(sampled))  # the ranks wait for this file before they exit
    proc = subprocess.Popen(simulate(nnodes, nproc, str(WORKERS / "hello_clusterlab.py")), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True)
    peak = {"supervisor": 0, "agent": 0}
    done = threading.Event()

    def sample() -> None:
        sup, agents = psutil.Process(proc.pid), []
        while not done.is_set():
            try:
                peak["supervisor"] = max(peak["supervisor"], sup.memory_info().rss)
                if len(agents) < nnodes:
                    agents = sup.children()
                for a in agents:
                    try:
                        peak["agent"] = max(peak["agent"], a.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            done.wait(0.02)

    def sample_agents() -> None:
        # Every rank has reported BENCH_RSS and waits for `sampled`, so every agent is alive:
        # sample them now (at tiny sizes the whole run could slip between two of the sampler's polls).
        try:
            for a in psutil.Process(proc.pid).children():
                peak["agent"] = max(peak["agent"], a.memory_info().rss)
        except psutil.Error:
            pass
        sampled.touch()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    watchdog = threading.Timer(timeout, lambda: harness._kill_trees([proc]))
    watchdog.start()
    lines, reported = [], 0
    try:
        for line in proc.stdout:
            lines.append(line)
            reported += "BENCH_RSS" in line
            if reported == nnodes * nproc and "BENCH_RSS" in line:
                sample_agents()
        proc.wait()
    finally:
        timed_out = not watchdog.is_alive()
        watchdog.cancel()
        done.set()
        sampler.join(5)
        sampled.unlink(missing_ok=True)
        sampled.parent.rmdir()
    if timed_out:
        raise BenchFailure(f"memory run {nnodes}x{nproc} timed out")
    output = "".join(lines)
    ranks = sorted(int(line.rsplit(" ", 1)[1]) * 1024 for line in output.splitlines() if "BENCH_RSS" in line)
    if proc.returncode != 0 or len(ranks) != nnodes * nproc:
        raise BenchFailure(f"memory run {nnodes}x{nproc}: exit {proc.returncode}, {len(ranks)} ranks reported\n{output[-1500:]}")
    mb = 2**20
    return {"shape": f"{nnodes}x{nproc}", "supervisor_mb": peak["supervisor"] / mb, "agent_mb": peak["agent"] / mb,
            "rank_median_mb": ranks[len(ranks) // 2] / mb, "rank_max_mb": ranks[-1] / mb}


def fig_scale(nnodes: int, nproc: int, small: tuple[int, int], repeats: int, timeout: float) -> dict:
    ranks = nnodes * nproc
    hello = str(WORKERS / "hello_clusterlab.py")
    print(f"scale: {nnodes}x{nproc} = {ranks} ranks", file=sys.stderr)
    peers = {
        "floor": (None, lambda: floor(ranks, timeout)),
        "clusterlab": (None, lambda: _hellos(run_together([simulate(nnodes, nproc, hello)], timeout), ranks)),
    }
    measured = _measure(peers, repeats)
    out = {"shape": f"{nnodes}x{nproc}", "ranks": ranks,
           "peers": {k: v if isinstance(v, dict) else summary(v) for k, v in measured.items()}}
    try:
        out["memory"] = [_memory_run(*small, timeout), _memory_run(nnodes, nproc, timeout)]
    except BenchFailure as exc:
        out["memory"] = {"failed": str(exc)[:2000]}
    return out


# ---------------------------------------------------------------------------- 4. site
def fig_site(timeout: float) -> dict:
    if importlib.util.find_spec("mkdocs") is None:
        return {"skipped": "mkdocs is not installed (pip install -e '.[docs]')"}
    print("site: mkdocs build --strict", file=sys.stderr)
    with tempfile.TemporaryDirectory() as site:
        try:
            finished = run_together([[PYTHON, "-m", "mkdocs", "build", "--strict", "-q", "-d", site]], timeout, cwd=str(ROOT))
        except BenchFailure as exc:
            return {"failed": str(exc)[:2000]}
    return {"seconds": summary([finished.seconds])}


# ---------------------------------------------------------------------------- main
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, no site build: checks the suite runs")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per figure (default: 7, quick: 1)")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for latest.json and latest.md")
    p.add_argument("--baseline", metavar="SRC", default=None,
                   help="also measure the clusterlab package in SRC (e.g. a worktree's src/ at an older commit), "
                   "interleaved with this one, in the launch and barrier figures: before/after, side by side")
    p.add_argument("--peers", default=None, metavar="A,B",
                   help="measure only these peers, e.g. clusterlab,baseline,relay (the others are reported as skipped)")
    p.add_argument("--skip", action="append", default=[], choices=["launch", "barrier", "scale", "site"],
                   help="leave a figure out (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    global BASELINE, ONLY
    args = get_args_parser().parse_args(argv)
    if args.peers:
        ONLY = set(args.peers.split(","))
    if args.baseline:
        BASELINE = str(Path(args.baseline).resolve())
        if not (Path(BASELINE) / "clusterlab" / "__init__.py").is_file():
            print(f"bench/run.py: error: --baseline {args.baseline!r} has no clusterlab package; give a src/ directory",
                  file=sys.stderr)
            return 2
    quick = args.quick
    repeats = args.repeats or (1 if quick else 7)
    timeout = 120.0 if quick else 600.0
    results: dict = {"schema": 1, "quick": quick, "repeats": repeats, "machine": harness.machine(),
                     "clusterlab_cmd": " ".join(Path(a).name for a in clusterlab_cmd()),
                     "baseline": BASELINE}
    try:
        if "launch" not in args.skip:
            print("launch: hello + barrier + exit", file=sys.stderr)
            results["launch"] = fig_launch(*((2, 1) if quick else (2, 4)), repeats, timeout)
        if "barrier" not in args.skip:
            worlds = [(2, 1)] if quick else [(2, 1), (2, 4), (4, 8)]
            results["barrier"] = fig_barrier(worlds, 20 if quick else 2000, 2 if quick else 100,
                                             1 if quick else 3, timeout)
        if "scale" not in args.skip:
            results["scale"] = fig_scale(*((3, 2) if quick else (64, 8)), small=(2, 1) if quick else (2, 4),
                                         repeats=1 if quick else 3, timeout=timeout)
        if "site" not in args.skip:
            results["site"] = {"skipped": "quick mode"} if quick else fig_site(timeout)
    finally:
        left = harness.sweep()
        if left:
            print(f"killed {left} leftover process(es)", file=sys.stderr)
    results["targets"] = report.targets(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "latest.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out / "latest.json")
    (out / "latest.md").write_text(report.markdown(results))
    print(report.markdown(results))
    ours = [results.get("launch", {}).get("peers", {}).get("clusterlab", {}),
            results.get("scale", {}).get("peers", {}).get("clusterlab", {})]
    return 1 if any("failed" in x for x in ours) else 0


if __name__ == "__main__":
    sys.exit(main())
