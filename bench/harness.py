"""The benchmark's process plumbing: start commands, time them, never leave one behind.

Every process the suite starts carries ``CLUSTERLAB_BENCH_TAG`` in its environment
and leads its own session. A command that overruns its timeout is killed with its
whole tree (process group, then every descendant psutil can still find), and at
the end :func:`sweep` kills anything that still carries the tag - an ``mpirun``
daemon or a torchrun worker that escaped its group included.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import psutil

from clusterlab.procs import kill_tagged, kill_trees
from clusterlab.rendezvous import free_port  # noqa: F401  (re-exported for bench/run.py)

TAG = uuid.uuid4().hex
PYTHON = sys.executable


def bench_env(**extra: str) -> dict[str, str]:
    """The environment of every measured command.

    ``PYTHONDONTWRITEBYTECODE`` is dropped: on a user's machine Python caches
    compiled modules, and a benchmark that recompiles clusterlab on every start
    would measure the compiler, not the launcher.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CLUSTERLAB_BENCH_TAG"] = TAG
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


class BenchFailure(RuntimeError):
    """A measured command failed or timed out; the message carries its output's tail."""


@dataclass
class Finished:
    seconds: float
    outputs: list[str]


def run_together(commands: list[list[str]], timeout: float, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> Finished:
    """Start every command at once, wait for all: the wall time from the first start to the last exit.

    Output is read through temporary files, not pipes, so a chatty command can
    never block on a full pipe while another is still being started.
    """
    import tempfile

    env = env or bench_env()
    files, procs = [], []
    start = time.perf_counter()
    try:
        for argv in commands:
            out = tempfile.TemporaryFile()
            files.append(out)
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          env=env, cwd=cwd, start_new_session=True))
        _wait_all(procs, start + timeout)
        seconds = time.perf_counter() - start
    except subprocess.TimeoutExpired:
        _kill_trees(procs)
        raise BenchFailure(f"timed out after {timeout:g}s: {_show(commands)}\n{_tails(files)}") from None
    except BaseException:
        _kill_trees(procs)
        raise
    outputs = []
    for out in files:
        out.seek(0)
        outputs.append(out.read().decode(errors="replace"))
        out.close()
    bad = [(p.args, p.returncode) for p in procs if p.returncode != 0]
    if bad:
        sweep()
        tails = "\n".join(o[-1500:] for o in outputs)
        raise BenchFailure(f"exit status {bad[0][1]} from {_show([bad[0][0]])}\n{tails}")
    return Finished(seconds, outputs)


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> None:
    """Wait until every process has exited, noticing each exit the moment it happens.

    ``Popen.wait(timeout)`` polls, sleeping 0.5, 1, 2 ... up to 50 ms between looks:
    a 120 ms launch would be timed as 164 ms. A pidfd becomes readable at the exit
    itself, so one ``poll`` on all of them wakes exactly when it should.
    """
    import select

    pending: dict[int, subprocess.Popen] = {}
    try:
        poller = select.poll()
        for p in procs:
            try:
                fd = os.pidfd_open(p.pid)
            except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): the polling wait, coarse
                p.wait(timeout=max(0.0, deadline - time.perf_counter()))
                continue
            pending[fd] = p
            poller.register(fd, select.POLLIN)
        while pending:
            left = deadline - time.perf_counter()
            ready = poller.poll(left * 1000) if left > 0 else []
            if not ready:
                raise subprocess.TimeoutExpired(next(iter(pending.values())).args, left)
            for fd, _ in ready:
                poller.unregister(fd)
                os.close(fd)
                pending.pop(fd).wait()
    finally:
        for fd in pending:
            os.close(fd)


def floor(n: int, timeout: float) -> float:
    """The spawn floor: start ``n`` bare interpreters (``python -c pass``) at once and reap them all."""
    return run_together([[PYTHON, "-c", "pass"]] * n, timeout).seconds


def _kill_trees(procs: list[subprocess.Popen]) -> None:
    kill_trees([p.pid for p in procs])
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    sweep()


def sweep() -> int:
    """Kill every live process that carries this run's tag; return how many there were."""
    return kill_tagged("CLUSTERLAB_BENCH_TAG", TAG, wait=5)


def _show(commands: list[list[str]]) -> str:
    return " & ".join(" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(c)) for c in commands)


def _tails(files) -> str:
    out = []
    for f in files:
        try:
            f.seek(0)
            out.append(f.read().decode(errors="replace")[-800:])
        except (OSError, ValueError):
            pass
    return "\n".join(out)


def summary(samples: list[float]) -> dict:
    """Median and spread of repeated measurements (seconds or microseconds, as given)."""
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread_pct": (max(samples) - min(samples)) / med * 100 if med else 0.0,
        "samples": samples,
    }


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in ("torch", "mpi4py", "psutil"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # not installed: reported as absent
            pass
    try:
        from importlib.metadata import version

        versions["openmpi"] = version("openmpi")
    except Exception:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_at_start": [round(x, 2) for x in load],
        "versions": versions,
    }
