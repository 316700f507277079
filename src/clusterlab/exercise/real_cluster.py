"""Exercises of "From the lab to a real cluster": one worker for every launcher; what srun does on a crash."""

from __future__ import annotations

import re
from pathlib import Path

from .catalog import Exercise
from .checking import Verdict, number, read_answers, run_job, scratch, unanswered

PAGE = "real-cluster.md"
_VIEW = re.compile(r"rank (\d+)/(\d+) local (\d+)\b")


def check_portable(attempt: Path, root: Path) -> Verdict:
    """The same file under clusterlab simulate (torchrun's variables) and clusterlab srun (Slurm's only)."""
    v = Verdict()
    runs = {
        "clusterlab simulate": ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                                str(attempt)],
        "srun": ["clusterlab", "srun", "--nodes", "2", "--ntasks-per-node", "2", "--label", "python", str(attempt)],
    }
    for name, argv in runs.items():
        with scratch() as cwd:
            (job,) = run_job([argv], Path(cwd))
        v.jobs.append(job)
        crash = next((line for line in job.lines if re.search(r"\b(KeyError|Error)\b", line)), None)
        if job.returncode != 0:
            fix = ("under srun there is no RANK, LOCAL_RANK or WORLD_SIZE: read the rank view with "
                   "clusterlab.read_env() (or SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS)" if name == "srun"
                   else "read the last lines below")
            v.fail(f"under {name} the job ended with {job.status()}" + (f": {crash.split(': ', 1)[-1]}" if crash else ""),
                   fix)
            return v
        if name == "srun":  # --label: "2: text", the task id is the global rank
            said = {int(m.group(1)): m.group(2) for line in job.lines for m in [re.match(r"^\s*(\d+): (.*)$", line)] if m}
        else:
            said = {rank: lines[-1] for rank, lines in job.rank_lines().items() if lines}
        for rank in range(4):
            m = _VIEW.search(said.get(rank, ""))
            want = (rank, 4, rank % 2)
            got = tuple(int(x) for x in m.groups()) if m else None
            if got != want:
                v.fail(f"under {name}, rank {rank} printed {said.get(rank, 'nothing')!r}; it is rank {rank}/4 local "
                       f"{rank % 2}", "print `rank R/W local L` from the rank view")
                return v
        v.ok(f"under {name}: ranks 0-3 of 4, each with its local rank")
    return v


KEYS = ("default_still_running", "default_exit_status", "with_k_still_running")
SCRIPT = 'if [ "$SLURM_PROCID" = 1 ]; then echo "task 1: giving up"; exit 3; fi; sleep 2; echo still running'


def check_srun_crash(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    answers = read_answers(attempt, KEYS)
    if unanswered(answers, KEYS, v):
        return v
    actual = {}
    for label, extra in (("default", []), ("with_k", ["-K"])):
        argv = ["clusterlab", "srun", "-N2", "-n4", *extra, "-l", "bash", "-c", SCRIPT]
        with scratch() as cwd:
            (job,) = run_job([argv], Path(cwd), timeout=60)
        v.jobs.append(job)
        actual[f"{label}_still_running"] = sum(1 for line in job.lines if line.endswith(": still running"))
        actual[f"{label}_exit_status"] = -1 if job.returncode is None else job.returncode
    why = {
        "default_still_running": "by default (KillOnBadExit=0, no -K) srun lets the other tasks run on: all 3 finish",
        "default_exit_status": "srun exits with the highest exit code of its tasks: 3",
        "with_k_still_running": "-K (--kill-on-bad-exit) ends the whole step at the first non-zero exit, before the "
                                "others wake up",
    }
    for key in KEYS:
        got, want = number(answers.get(key)), actual[key]
        v.expect(got == want, f"{key}: {want}", f"{key}: you said {answers.get(key) or '(nothing)'}, srun did {want}",
                 why[key])
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="portable-rank",
        page=PAGE,
        title="A worker that runs under every launcher",
        task="make a worker that reads RANK directly also run unchanged under srun",
        statement=(
            "The starter reads `RANK`, `WORLD_SIZE` and `LOCAL_RANK` straight from `os.environ`: fine under "
            "torchrun and clusterlab, a `KeyError` under `srun`. Make it print `rank R/W local L` under both, "
            "without telling it which launcher started it. The checker runs it under `clusterlab simulate` "
            "(2 x 2) and under `clusterlab srun` (2 nodes x 2 tasks)."
        ),
        hint="`clusterlab.read_env()` reads whichever launcher's names it finds, as `portable_worker.py` does.",
        starter=_example("portable-rank/worker.py"),
        solution=_example("portable-rank/solution.py"),
        check=check_portable,
    ),
    Exercise(
        id="srun-crash",
        page=PAGE,
        title="What srun does when a task crashes",
        task="predict what srun's other tasks do, and its exit status, when one task exits 3: without and with -K",
        statement=(
            "Four tasks on two nodes; task 1 exits with status 3 at once, the others sleep 2 s and print "
            f"`still running`:\n\n    clusterlab srun -N2 -n4 -l bash -c '{SCRIPT}'\n\n"
            "Predict how many `still running` lines appear and srun's exit status, then how many lines "
            "appear with `-K`. The checker runs both."
        ),
        hint=(
            "srun(1), `-K, --kill-on-bad-exit`: without it, the default is the cluster's `KillOnBadExit`, "
            "which is 0 unless the administrators changed it. And \"the exit code of srun is the highest "
            "exit code of its tasks\"."
        ),
        starter=_example("srun-crash/answers.txt"),
        solution=_example("srun-crash/solution.txt"),
        check=check_srun_crash,
    ),
]
