"""Run one request under real Slurm and under clusterlab, and compare what each task saw.

A :class:`Request` is a command line (``srun ...``, ``sbatch ...``, ``scontrol ...``)
and, for sbatch, the text of a batch script. :func:`run` runs it on one *side*:

* ``real``: Debian's Slurm 22.05 commands against the cluster of
  :mod:`clusterlab.slurm.realslurm` (``SLURM_CONF`` in the environment);
* ``lab``: ``python -m clusterlab srun/sbatch/scontrol`` with the same arguments.

Every task runs ``dumpenv.sh`` (spelled ``{dump}`` in a request), which writes its
``SLURM_*``, ``SLURMD_*``, ``CUDA_VISIBLE_DEVICES``, ``GPU_DEVICE_ORDINAL`` and
``ROCR_VISIBLE_DEVICES`` into ``{out}/<step>.<task>``. :func:`compare` then diffs
every variable of every task, the exit status, and the output lines.

**What is normalised** (values that differ by nature; everything else must match):
:data:`NORMALISED` names each variable and why; in output lines, the job id becomes
``<job>``, a time stamp ``<time>``, (for the example scripts, whose port is
derived from the job id) a port ``:<port>``, and the time and pid of torch's log prefix
``<time> <pid>``. torch's own diagnostics are left out of the comparison: a line of its
logger (that prefix) and the blank and ``<omitting python frames>`` lines of the tracebacks
it logs, since whether its elastic agent logs, say, "Error waiting on exit barrier" depends on
which node's agent ends first, on a real cluster as here. A launch pattern's stderr is not
compared (:attr:`Request.streams`). Output lines are compared as sorted
lists, because tasks print concurrently, and srun's ``tasks 0-1: Exited ...`` lines
one task at a time, because which tasks share such a line depends on timing. An error message counts as the same when
clusterlab's one line contains Slurm's message (clusterlab may add the fix, and
prefixes ``clusterlab srun: error:`` as every clusterlab command does).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DUMP = str(Path(__file__).with_name("dumpenv.sh"))
SETTLE = str(Path(__file__).with_name("settle.sh"))

#: Variables whose values differ by nature between two runs of the same request (the one list).
NORMALISED = {
    "SLURM_JOB_ID": "the job id, given by the controller",
    "SLURM_JOBID": "the job id (old name)",
    "SLURM_TASK_PID": "the task's process id",
    "SLURM_SRUN_COMM_PORT": "the port srun listens on for its tasks",
    "SLURM_STEP_LAUNCHER_PORT": "the port srun listens on for its tasks (same)",
    "SLURM_WORKING_CLUSTER": "cluster:controller address:PORT:protocol:plugin; the controller's port is free-picked",
    "SLURM_CONF": "the path of the cluster's slurm.conf (a temporary directory on each side)",
}
#: Output text that differs by nature: job ids and time stamps.
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
#: Lines that appear or not depending on timing, never compared (one documented list):
#: - real srun, when a step starts before slurmctld has released the previous step's CPUs,
#:   waits and says so ("step creation temporarily disabled", then "Step created");
#: - clusterlab's launcher, when a node's agent starts before the master listens, says it waits.
TIMING = re.compile(r"step creation temporarily disabled|Step created for job|waiting for the master agent at")
PORT = re.compile(r"(node\d+|127\.0\.0\.1):\d{4,5}\b")
#: torch's log prefix (glog's: level, date, time, pid): ``W1201 09:40:42.184000 10252 torch/...``
TORCH_LOG = re.compile(r"^([WIEF])\d{4} \d\d:\d\d:\d\d\.\d+ \d+ ")


@dataclass(frozen=True)
class Request:
    """One command line (``{dump}`` and ``{out}`` are filled in), and a batch script's text for sbatch."""

    name: str
    argv: tuple[str, ...]
    script: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout: float = 60.0
    cwd: str | None = None  # default: the run's work directory (the same on both sides)
    #: the streams compared: a launch pattern's stderr is torch's and its libraries' logs (pids, times,
    #: and the order in which elastic agents shut their rendezvous down), so only its stdout is compared
    streams: tuple[str, ...] = ("stdout", "stderr")
    needs: tuple[str, ...] = ()  # modules the request's job imports (torch, the interop extra): skipped without


@dataclass
class Outcome:
    code: int
    stdout: list[str]
    stderr: list[str]
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # "<step>.<task>" -> variables
    job_id: str | None = None


def run(side: str, request: Request, workdir: Path, slurm_conf: str | None = None) -> Outcome:
    """Run ``request`` on ``side`` ("real" or "lab"); its files go to ``workdir/side/name``."""
    out = workdir / side / request.name
    out.mkdir(parents=True, exist_ok=True)
    # {settle}, between the steps of a batch script: on the real side, wait for the last step to be gone
    fill = {"dump": DUMP, "out": str(out), "settle": SETTLE if side == "real" else ":"}
    argv = [a.format(**fill) for a in request.argv]
    if request.script is not None:
        script = out / "job.sbatch"
        script.write_text(request.script.format(**fill))
        script.chmod(0o755)
        argv.append(str(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(dict(request.env), CONFORMANCE_OUT=str(out))
    # this interpreter's directory first on PATH, so `python` and `clusterlab` in a batch script are
    # the same on both sides (clusterlab's job puts them there itself; real Slurm passes PATH on)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", os.defpath)
    if side == "real":
        env["SLURM_CONF"] = slurm_conf or ""
        if argv[0] == "sbatch":
            argv.insert(1, "--parsable")
    else:
        argv = [sys.executable, "-m", "clusterlab", *argv]
    proc = subprocess.run(argv, env=env, cwd=request.cwd or workdir, capture_output=True, text=True, timeout=request.timeout)
    outcome = Outcome(proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines())
    if side == "real" and argv[0] == "sbatch" and proc.returncode == 0:
        # `sbatch --wait` polls every 2 s or more; watching the job ourselves takes ~0.1 s
        job = proc.stdout.strip()
        outcome.code = _wait_job(job, env, request.timeout)
        outcome.stdout = [f"Submitted batch job {job}"]
    for path in sorted(out.iterdir()):
        if path.name.endswith(".out"):  # a batch job's output file: part of stdout
            outcome.stdout += [f"{path.name}: {line}" for line in path.read_text().splitlines()]
        elif path.name.endswith(".err"):  # a batch job's --error file: part of stderr
            outcome.stderr += [f"{path.name}: {line}" for line in path.read_text().splitlines()]
        elif path.name != "job.sbatch":
            outcome.envs[path.name] = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    ids = {e.get("SLURM_JOB_ID") for e in outcome.envs.values()} - {None}
    m = re.search(r"Submitted batch job (\d+)", "\n".join(outcome.stdout)) or re.search(r"StepId=(\d+)\.", proc.stderr)
    outcome.job_id = m.group(1) if m else (ids.pop() if len(ids) == 1 else None)
    outcome.stdout = [x for x in outcome.stdout if not TIMING.search(x)]
    outcome.stderr = [x for x in outcome.stderr if not TIMING.search(x)]
    return outcome


#: srun's line for tasks of one node that exited with one status: ``srun: error: node001: tasks 0,2: Terminated``
TASK_EXIT = re.compile(r"^(?P<pre>(?:\S+: )?srun: error: \S+: )tasks? (?P<ids>[\d,-]+): (?P<what>.*)$")


def _split_exits(lines: list[str]) -> list[str]:
    """One line per task: which tasks slurmstepd reaps together (and srun reports on one line)
    depends on timing, so ``tasks 0-1: X`` is compared as ``task 0: X`` and ``task 1: X``."""
    out = []
    for line in lines:
        m = TASK_EXIT.match(line)
        if not m:
            out.append(line)
            continue
        for part in m.group("ids").split(","):
            lo, _, hi = part.partition("-")
            out += [f"{m.group('pre')}task {t}: {m.group('what')}" for t in range(int(lo), int(hi or lo) + 1)]
    return out


def _wait_job(job: str, env: dict[str, str], timeout: float) -> int:
    """Wait for a real batch job to end; its exit status, as ``sbatch --wait`` would return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, timeout=10)
        state = re.search(r"JobState=(\w+)", r.stdout)
        if state and state.group(1) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            code, sig = re.search(r"ExitCode=(\d+):(\d+)", r.stdout).groups()
            return 128 + int(sig) if int(sig) else int(code)
        time.sleep(0.05)
    raise AssertionError(f"real batch job {job} did not end within {timeout:g}s")


def _normal_line(line: str, job_id: str | None) -> str:
    if job_id:
        line = re.sub(rf"\b{job_id}\b", "<job>", line)
    line = TIME.sub("<time>", line)
    line = PORT.sub(r"\1:<port>", line)
    head, sep, rest = line.partition(": ")  # a batch output file's lines: "batch.out: LINE"
    if sep and head.endswith((".out", ".err")):
        line = head + sep + TORCH_LOG.sub(r"\1<time> <pid> ", rest)
    return line.replace("clusterlab srun: error: ", "srun: error: ").replace(
        "clusterlab sbatch: error: ", "sbatch: error: ").replace("clusterlab scontrol: error: ", "scontrol: error: ")


def _normal_value(var: str, value: str | None, job_id: str | None) -> str | None:
    if value is None or var not in NORMALISED:
        return value
    if var == "SLURM_WORKING_CLUSTER":
        parts = value.split(":")
        return ":".join([*parts[:2], "<port>", *parts[3:]]) if len(parts) == 5 else value
    return f"<{NORMALISED[var].split(',')[0]}>"


def _torch_noise(line: str) -> bool:
    """A line of torch's own logger in a batch output file, or of a traceback it logged (see above)."""
    head, sep, rest = line.partition(": ")
    if not (sep and head.endswith((".out", ".err"))):
        return False
    return bool(TORCH_LOG.match(rest)) or rest.strip() in ("", "<omitting python frames>")


def compare(real: Outcome, lab: Outcome, streams: tuple[str, ...] = ("stdout", "stderr")) -> tuple[int, list[str]]:
    """How many values were compared, and every difference as one line."""
    compared, diffs = 1, []
    if real.code != lab.code:
        diffs.append(f"exit status: real {real.code}, clusterlab {lab.code}")
    for stream in streams:
        a = sorted(_normal_line(x, real.job_id) for x in _split_exits(getattr(real, stream)) if not _torch_noise(x))
        b = sorted(_normal_line(x, lab.job_id) for x in _split_exits(getattr(lab, stream)) if not _torch_noise(x))
        compared += max(len(a), len(b))
        missing = [x for x in a if not _covered(x, b)]
        extra = [x for x in b if not any(_covered(y, [x]) for y in a)]
        diffs += [f"{stream}: real only: {x!r}" for x in missing] + [f"{stream}: clusterlab only: {x!r}" for x in extra]
    for name in sorted(set(real.envs) | set(lab.envs)):
        r, c = real.envs.get(name), lab.envs.get(name)
        if r is None or c is None:
            compared += 1
            diffs.append(f"task {name}: {'clusterlab' if r is None else 'real Slurm'} has no such task")
            continue
        for var in sorted(set(r) | set(c)):
            compared += 1
            a, b = _normal_value(var, r.get(var), real.job_id), _normal_value(var, c.get(var), lab.job_id)
            if a != b:
                diffs.append(f"task {name}: {var}: real {a!r}, clusterlab {b!r}")
    return compared, diffs


def _covered(line: str, others: list[str]) -> bool:
    """``line`` is in ``others``, or (an error) some line of ``others`` contains its message."""
    if line in others:
        return True
    m = re.match(r"(.*?\b(?:srun|sbatch|scontrol): error: )(.*)", line)
    return bool(m) and any(o.startswith(m.group(1)) and m.group(2) in o for o in others)


def wait_idle(slurm_conf: str, nodes, timeout: float = 30.0) -> None:
    """Wait until every node of the real cluster is idle again (a finished job's nodes stay
    'completing' for a moment, and a job placed meanwhile would get other nodes)."""
    env = {**os.environ, "SLURM_CONF": slurm_conf}
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True, timeout=10)
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        if all(states.get(n) == "idle" for n in nodes):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"the real cluster's nodes are not idle after {timeout:g}s: {states}")
        time.sleep(0.05)
