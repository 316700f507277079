"""Fault-injection kit: start a job, watch its output, break it, then check what it left behind.

A :class:`Job` is either one ``clusterlab simulate`` process or ``nnodes`` separate
``clusterlab launch`` agents (the two-terminal setup). A reader thread per
launcher process collects its output and notes the wall-clock moment it exited,
so a test can wait for a line (never sleep-and-hope) and measure how long the
launcher took to notice a fault and tear everything down.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from helpers import ROOT, free_port

WORKER = str(Path(__file__).resolve().parent / "worker.py")
MODES = ("simulate", "launch")


class Launcher:
    """One launcher process and everything it printed (stdout and stderr merged)."""

    def __init__(self, argv: list[str], env: dict | None = None, cond: threading.Condition | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self.exited_at: float | None = None  # time.time() when the process was reaped
        self._cond = cond or threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        self.proc.stdout.close()
        self.proc.wait()
        with self._cond:
            self.exited_at = time.time()
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> None:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for line in self.lines if rx.search(line)) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.exited_at is not None):
                    if sum(1 for line in self.lines if rx.search(line)) >= count:
                        return
                    raise AssertionError(f"{count} line(s) matching {pattern!r} not seen within {timeout}s "
                                         f"(exited: {self.exited_at is not None}); last lines:\n"
                                         + "\n".join(self.lines[-25:]))
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = 60) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"launcher {self.proc.args[3:5]} did not exit within {timeout}s (a hang); "
                                 "last lines:\n" + "\n".join(self.lines[-25:]))
        return self.proc.returncode


class Job:
    """A job of ``nnodes x nproc`` ranks of worker.py, as ``simulate`` or as separate ``launch`` agents."""

    def __init__(self, mode: str, tmp: Path, fault: str = "wait", fault_rank: int = 0, *, nnodes: int = 2,
                 nproc: int = 2, lines: int = 5, barrier_timeout: float = 120, extra: tuple = (),
                 env: dict | None = None, nodes: tuple | None = None, port: int | None = None,
                 rdzv_timeout: float = 30, gate: bool = False) -> None:
        self.mode, self.nnodes, self.nproc, self.lines = mode, nnodes, nproc, lines
        self.log_dir = tmp / "logs"
        self.truth_dir = tmp / "truth"  # what each rank says it wrote: the reference for the logs
        self.truth_dir.mkdir(exist_ok=True)
        if not gate:  # gated: the faulty rank waits for go() before it misbehaves
            self.go()
        self.port = port if port is not None else (0 if mode == "simulate" else free_port())
        self.started_at = time.time()
        common = ["--nnodes", str(nnodes), "--nproc-per-node", str(nproc), "--log-dir", str(self.log_dir),
                  "--rdzv-timeout", str(rdzv_timeout), *extra]
        tail = [WORKER, fault, str(fault_rank), str(lines), str(barrier_timeout), str(self.truth_dir)]
        full_env = None if env is None else {**os.environ, **env}
        base = [sys.executable, "-m", "clusterlab"]
        self.launchers: dict[int, Launcher] = {}
        self._cond = threading.Condition()
        if mode == "simulate":
            argv = [*base, "simulate", *common, "--master-port", str(self.port), *tail]
            self.launchers[0] = Launcher(argv, full_env, self._cond)
        else:
            # the non-master nodes first: they wait for node 0, as in the two-terminal recipe
            for node in sorted(range(nnodes) if nodes is None else nodes, reverse=True):
                self.launchers[node] = Launcher([*base, "launch", *common, "--master-port", str(self.port),
                                                 "--node-rank", str(node), *tail], full_env, self._cond)

    # ------------------------------------------------------------------ watching
    @property
    def text(self) -> str:
        return "\n".join(launcher.text for launcher in self.launchers.values())

    def output_of(self, node: int) -> str:
        """The output of the launcher that runs ``node`` (the single simulate process, or that agent)."""
        return self.launchers[0 if self.mode == "simulate" else node].text

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> None:
        """Wait until ``count`` lines matching ``pattern`` appeared, summed over every launcher."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:  # shared by the reader threads: woken by every new line and every exit
            while True:
                seen = sum(1 for launcher in self.launchers.values() for line in launcher.lines if rx.search(line))
                if seen >= count:
                    return
                left = deadline - time.monotonic()
                if left <= 0 or all(launcher.exited_at for launcher in self.launchers.values()):
                    tail = "\n---\n".join("\n".join(launcher.lines[-20:]) for launcher in self.launchers.values())
                    raise AssertionError(f"{count} line(s) matching {pattern!r} not seen within {timeout}s "
                                         f"({seen}); output:\n{tail}")
                self._cond.wait(left)

    def go(self) -> None:
        (self.truth_dir / "go").touch()

    def wait_ready(self, timeout: float = 30) -> None:
        """Every rank printed ``ready``: all their numbered lines are out, and in the log files."""
        self.wait_for(r"\] ready$", self.nnodes * self.nproc, timeout)
        # each rank records "ready" in its truth file just after printing it: wait for that file too
        deadline = time.monotonic() + timeout
        files = [self.truth_dir / f"rank{r}.attempt0" for r in range(self.nnodes * self.nproc)]
        while not all(f.exists() and f.read_text().endswith("ready\n") for f in files):
            assert time.monotonic() < deadline, "ranks printed ready but did not record it"
            time.sleep(0.01)

    def finish(self, timeout: float = 60) -> dict[int, int]:
        """Wait for every launcher to exit; their exit statuses by node (simulate: {0: status})."""
        return {node: launcher.wait(timeout) for node, launcher in self.launchers.items()}

    def exited_at(self) -> float:
        return max(launcher.exited_at for launcher in self.launchers.values())

    # ------------------------------------------------------------------ breaking
    def family(self) -> list[psutil.Process]:
        """Every process the job consists of right now: launchers and all their descendants."""
        found = []
        for launcher in self.launchers.values():
            try:
                root = psutil.Process(launcher.proc.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def workers(self) -> dict[int, psutil.Process]:
        """The worker processes by global rank (recognised by their command line and RANK)."""
        out = {}
        for p in self.family():
            try:
                if WORKER in p.cmdline():
                    out[int(p.environ()["RANK"])] = p
            except (psutil.Error, KeyError):
                continue
        return out

    def agent_pid(self, node: int) -> int:
        """The pid of ``node``'s agent: the child of its ``launch`` process, or the simulate agent that runs its workers."""
        if self.mode == "launch":  # the process `clusterlab launch` forked and supervises
            return psutil.Process(self.launchers[node].proc.pid).children()[0].pid
        rank = node * self.nproc
        return self.workers()[rank].ppid()

    def kill_agent(self, node: int, sig: int = signal.SIGKILL) -> float:
        pid = self.agent_pid(node)
        t0 = time.time()
        os.kill(pid, sig)
        return t0

    def signal_launchers(self, sig: int) -> float:
        """Send ``sig`` to every launcher still running; :attr:`signalled` names their nodes."""
        t0 = time.time()
        self.signalled = set()
        for node, launcher in self.launchers.items():
            if launcher.proc.poll() is not None:
                continue  # it had already finished (a node whose teardown was quick)
            try:
                launcher.proc.send_signal(sig)
                self.signalled.add(node)
            except ProcessLookupError:
                pass
        return t0

    # ------------------------------------------------------------------ checking
    def fault_time(self, rank: int) -> float:
        """When the faulty rank announced its fault (``FAULT <time>`` on its stderr log)."""
        text = self.log(rank, "stderr")
        m = re.search(r"^FAULT ([0-9.]+)$", text, re.M)
        assert m, f"rank {rank} never logged its FAULT line:\n{text}"
        return float(m.group(1))

    def log(self, rank: int, stream: str = "stdout", attempt: int = 0) -> str:
        node, local = divmod(rank, self.nproc)
        path = self.log_dir / f"attempt_{attempt}" / f"node{node}" / str(local) / f"{stream}.log"
        return path.read_text() if path.exists() else ""

    def check_logs(self, ranks=None, attempt: int = 0, complete: bool = False) -> None:
        """Every line each rank wrote before the fault is in its log files, whole and in order.

        The reference is the rank's own record in the truth directory, not the launcher's
        output. With ``complete``, every rank must also have got all its lines out (true
        when the fault came after :meth:`wait_ready`).
        """
        for rank in range(self.nnodes * self.nproc) if ranks is None else ranks:
            path = self.truth_dir / f"rank{rank}.attempt{attempt}"
            want = path.read_text().splitlines() if path.exists() else []
            if complete:
                assert want == [f"rank {rank} attempt {attempt} line {i}" for i in range(self.lines)] + ["ready"], want
            got = self.log(rank, "stdout", attempt).splitlines()
            assert got[:len(want)] == want, f"rank {rank} attempt {attempt}: stdout.log lost lines: {got} (wrote {want})"
            if "ready" in want:  # its stderr line came before "ready"
                err = self.log(rank, "stderr", attempt).splitlines()
                assert err[:1] == [f"rank {rank} attempt {attempt} err"], f"rank {rank}: stderr.log lost lines: {err}"


def assert_gone(procs: list[psutil.Process], timeout: float = 5.0) -> None:
    """Walk the snapshot taken while the job ran: every one of those processes must have exited."""
    deadline = time.monotonic() + timeout
    alive = procs
    while True:
        alive = [p for p in alive if _alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        psutil.wait_procs(alive, timeout=0.2)
    assert not alive, "processes left behind: " + "; ".join(f"{p.pid} {' '.join(p.cmdline())[:100]}" for p in alive)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
