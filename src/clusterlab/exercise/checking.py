"""How an exercise is checked: run the attempt for real, then hold what happened against the task.

A check never reads an attempt's code to guess whether it is right; it runs it
the way the page's lesson runs things (``clusterlab simulate``, ``launch``,
``srun``, ``sbatch``, ``env``, ``zero``), as real processes with a timeout, and
then compares what came out with what must come out: the ranks a job must show,
the values an answers file predicts, the findings a linter must no longer make.
The findings go into a :class:`Verdict`, one line each, a failed one with the
fix; the command line prints it (:mod:`clusterlab.exercise`).

The same job is shown to the reader: on a failure, the last lines the attempt's
job printed follow the findings, so "rank 3 crashed" comes with rank 3's traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError

#: ``[node1 rank5 local1] text``: a worker line as the launcher prefixes it.
TAG = re.compile(r"^\[node(\d+) rank(\d+) local(\d+)\] ?(.*)$")
#: Every wait of a check has a bound; a barrier no other rank reaches fails after this.
BARRIER_TIMEOUT = "10"


@dataclass(frozen=True)
class Job:
    """One finished command of a check: what ran and everything it printed (stdout and stderr merged)."""

    shown: str
    returncode: int | None  # None: killed after its timeout
    output: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def rank_lines(self) -> dict[int, list[str]]:
        """Each global rank's lines, without their prefix."""
        found: dict[int, list[str]] = {}
        for line in self.lines:
            m = TAG.match(line)
            if m:
                found.setdefault(int(m.group(2)), []).append(m.group(4))
        return found

    def placement(self) -> dict[int, tuple[int, int]]:
        """Global rank -> (node rank, local rank), as the launcher's prefixes say."""
        return {int(m.group(2)): (int(m.group(1)), int(m.group(3)))
                for m in map(TAG.match, self.lines) if m}

    def first(self, pattern: str) -> str | None:
        """The first line containing ``pattern`` (a plain substring), or None."""
        return next((line for line in self.lines if pattern in line), None)

    def status(self) -> str:
        if self.timed_out:
            return "killed after its timeout"
        return f"exit {self.returncode}"


@dataclass
class Finding:
    ok: bool
    text: str
    fix: str = ""


@dataclass
class Verdict:
    """The findings of one check, in the order they were made, and the jobs that were run."""

    findings: list[Finding] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.findings.append(Finding(True, text))

    def fail(self, text: str, fix: str = "") -> None:
        self.findings.append(Finding(False, text, fix))

    def expect(self, condition: bool, good: str, bad: str, fix: str = "") -> bool:
        """One finding: ``good`` if ``condition`` holds, else ``bad`` with its ``fix``."""
        if condition:
            self.ok(good)
        else:
            self.fail(bad, fix)
        return condition

    @property
    def passed(self) -> bool:
        return bool(self.findings) and all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]


def project_root() -> Path:
    """The repository whose ``examples/exercises`` the checks use: the current directory, or clusterlab's clone."""
    for candidate in (Path.cwd().absolute(), Path(__file__).resolve().parents[3]):
        if (candidate / "examples" / "exercises").is_dir():
            return candidate
    raise UsageError(f"no examples/exercises/ in {Path.cwd()}: run `clusterlab exercise` from the lab's repository root")


def _real(argv: list[str]) -> list[str]:
    if argv[0] == "clusterlab":
        return [sys.executable, "-m", "clusterlab", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def shown(argv: list[str], env: dict[str, str] | None = None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return f"{prefix} {shlex.join(argv)}".strip()


def _environment(extra: dict[str, str] | None, clean: bool) -> dict[str, str]:
    if clean:  # only what a fresh login shell would have, plus the variables the check sets
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "CLUSTERLAB_TEST_TAG")
               if k in os.environ}
    else:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "OMPI_", "TORCHELASTIC_")) and k not in (
                   "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "CLUSTERLAB_CHANNEL", "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("CLUSTERLAB_BARRIER_TIMEOUT", BARRIER_TIMEOUT)
    # `python` and `clusterlab` inside a job (srun's tasks, a batch script) are this interpreter's.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    env.update(extra or {})
    return env


def run_job(argvs: list[list[str]], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60,
            clean_env: bool = False) -> list[Job]:
    """Start every command at once (usually one), wait for all, each within ``timeout`` seconds.

    A command still running at the deadline is killed with everything it started
    and comes back with ``returncode=None``. Nothing outlives this call.
    """
    from ..procs import descendants, kill_all

    started = time.monotonic()
    procs = [subprocess.Popen(_real(argv), cwd=cwd, env=_environment(env, clean_env), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
             for argv in argvs]
    jobs = []
    try:
        for argv, proc in zip(argvs, procs):
            try:
                out, _ = proc.communicate(timeout=max(0.1, started + timeout - time.monotonic()))
                code = proc.returncode
            except subprocess.TimeoutExpired:
                family = [*descendants([proc.pid])]
                kill_all(family)
                proc.kill()
                out, _ = proc.communicate()
                code = None
            jobs.append(Job(shown(argv, env), code, out, time.monotonic() - started))
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_all(descendants([proc.pid]))
                proc.kill()
                proc.communicate()
    return jobs


def free_port() -> int:
    """A TCP port nobody listens on right now (a check never relies on 29500 being free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch() -> tempfile.TemporaryDirectory:
    """A fresh working directory for an attempt's job (the files it writes land there)."""
    return tempfile.TemporaryDirectory(prefix="clusterlab-exercise-")


def read_answers(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """An answers file: ``key: value`` lines (``#`` starts a comment). Every key of ``keys`` must be there."""
    answers: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise UsageError(f"{path}:{number}: {raw.strip()!r} is not `key: value`; write e.g. `stuck_rank: 6`")
        answers[key.strip()] = value.strip()
    unknown = sorted(set(answers) - set(keys))
    if unknown:
        raise UsageError(f"{path}: unknown answer(s) {unknown}; this exercise asks for {list(keys)}")
    return answers


def unanswered(answers: dict[str, str], keys: tuple[str, ...], v: Verdict) -> bool:
    """True (and one finding) when no answer is filled in yet: then the check runs nothing."""
    if any(answers.get(key) for key in keys):
        return False
    v.fail(f"no answers yet: fill in {', '.join(keys)}", "write each value after its `key:` in the answers file")
    return True


def number(text: str | None) -> int | None:
    """An answer read as a whole number, or None if it is not one."""
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def number_set(text: str | None) -> set[int] | None:
    """``"3, 7"`` -> {3, 7}; ``"none"`` -> set(); None if it is empty or not such a list."""
    text = (text or "").strip().lower()
    if not text:
        return None
    if text in ("none", "-"):
        return set()
    try:
        return {int(part) for part in re.split(r"[,\s]+", text) if part}
    except ValueError:
        return None


def tail(job: Job, count: int = 12) -> list[str]:
    """The last ``count`` lines a job printed (what a failed check shows under its findings)."""
    return job.lines[-count:]
