"""Exercises of "Failures and restarts": make a rank crash on purpose, and resume after a restart."""

from __future__ import annotations

import re
from pathlib import Path

from .catalog import Exercise
from .checking import Verdict, number, number_set, read_answers, run_job, scratch, unanswered

PAGE = "failures.md"


def _summary(job) -> dict[str, str]:
    """The launcher's root-cause summary as fields: ``rank: 5 (local_rank 1)`` -> {"rank": "5 (local_rank 1)"}."""
    fields = {}
    for line in job.lines:
        m = re.match(r"^\[clusterlab\]\s+(node|rank|exit)\s*: (.*)$", line)
        if m and m.group(1) not in fields:
            fields[m.group(1)] = m.group(2).strip()
    return fields


def _crash_job(attempt: Path, v: Verdict):
    argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0", str(attempt)]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    return job


def check_crash(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    job = _crash_job(attempt, v)
    summary = _summary(job)
    if not v.expect(job.returncode == 1 and bool(summary), "the job failed and the launcher printed its summary",
                    f"the job ended with {job.status()} and {'a' if summary else 'no'} failure summary",
                    "make rank 2 exit with a non-zero status (sys.exit(7)) during step 1"):
        return v
    v.expect(summary.get("rank", "").startswith("2 "), "the summary names rank 2 as the root cause",
             f"the summary names rank {summary.get('rank')} as the root cause", "it is rank 2 that must fail")
    v.expect(summary.get("exit") == "exit code 7", "with exit code 7", f"with {summary.get('exit')}",
             "exit with status 7: sys.exit(7)")
    lines = job.rank_lines()
    step0 = sorted(r for r, ls in lines.items() if "finished step 0" in ls)
    step1 = sorted(r for r, ls in lines.items() if "finished step 1" in ls)
    v.expect(step0 == list(range(8)), "every rank finished step 0 first", f"only ranks {step0} finished step 0",
             "rank 2 crashes in step 1, after step 0 went through")
    v.expect(step1 == [], "nobody finished step 1", f"ranks {step1} finished step 1",
             "the crash happens before rank 2 reaches step 1's barrier")
    return v


KEYS = ("root_cause_rank", "launcher_exit_status", "node1_finished_step_0", "node1_finished_step_1")


def check_predict(attempt: Path, root: Path) -> Verdict:
    """Run the exercise's own crash worker (rank 2, exit 7, step 1) and hold the predictions against it."""
    v = Verdict()
    answers = read_answers(attempt, KEYS)
    if unanswered(answers, KEYS, v):
        return v
    job = _crash_job(root / "examples/exercises/crash-rank2/solution.py", v)
    summary = _summary(job)
    rank = number((summary.get("rank") or "").split(" ")[0])
    lines = job.rank_lines()
    node1 = range(4, 8)
    actual = {
        "root_cause_rank": rank,
        "launcher_exit_status": job.returncode,
        "node1_finished_step_0": {r for r in node1 if "finished step 0" in lines.get(r, [])},
        "node1_finished_step_1": {r for r in node1 if "finished step 1" in lines.get(r, [])},
    }
    why = {
        "root_cause_rank": "the summary names the first worker that failed: rank 2",
        "launcher_exit_status": "a failed job makes the launcher exit 1, whatever the worker's own status",
        "node1_finished_step_0": "step 0's barrier completed everywhere before rank 2 crashed",
        "node1_finished_step_1": "node 1's ranks wait in barrier step1 for rank 2, which never comes; "
                                 "they are stopped, not finished",
    }
    for key in KEYS:
        raw = answers.get(key, "")
        got = number_set(raw) if key.startswith("node1") else number(raw)
        want = actual[key]
        shown = ", ".join(map(str, sorted(want))) or "none" if isinstance(want, set) else str(want)
        v.expect(got == want, f"{key}: {shown}", f"{key}: you said {raw or '(nothing)'}, the job did {shown}", why[key])
    return v


def check_resume(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
            "--max-restarts", "1", str(attempt)]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    if not v.expect(job.returncode == 0, "attempt 1 finished the job (exit 0)", f"the job ended with {job.status()}",
                    "read the last lines below"):
        return v
    lines = job.rank_lines()
    for rank in range(4):
        steps = [(int(m.group(1)), int(m.group(2))) for line in lines.get(rank, [])
                 for m in [re.search(r"attempt (\d+): step (\d+) done", line)] if m]
        second = [step for attempt, step in steps if attempt == 1]
        first = [step for attempt, step in steps if attempt == 0]
        if not second:
            v.fail(f"rank {rank} printed no `attempt 1: step N done` line", "keep the starter's print lines")
            return v
        done_before = max(first, default=-1)
        if second[0] <= done_before:
            v.fail(f"rank {rank} did step {second[0]} again in attempt 1; attempt 0 had finished steps up to "
                   f"{done_before}", "at start, read the checkpoint and continue with the step after it")
            return v
        if second[0] != done_before + 1 or second != list(range(second[0], 4)):
            v.fail(f"rank {rank} did steps {second} in attempt 1 after finishing up to {done_before}: a step was skipped",
                   "continue with exactly the step after the last one saved")
            return v
    v.ok("every rank resumed at the step after the last checkpoint and did each step once")
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="crash-rank2",
        page=PAGE,
        title="Make rank 2 crash",
        task="change a copy of crash.py so that rank 2 dies in step 1 with exit status 7",
        statement=(
            "The starter is a copy of `examples/crash.py`. Make **rank 2** (on node 0) crash during step 1 "
            "with exit status **7** instead of rank 5. Before you run it, predict what the summary will say "
            "and which `finished step` lines appear; the next exercise asks for those predictions."
        ),
        hint="`me.rank` is the global rank; `sys.exit(7)` ends a worker with status 7.",
        starter=_example("crash-rank2/worker.py"),
        solution=_example("crash-rank2/solution.py"),
        check=check_crash,
    ),
    Exercise(
        id="crash-predict",
        page=PAGE,
        title="Predict what node 1 prints",
        task="predict the root cause, the launcher's exit status and node 1's lines when rank 2 crashes",
        statement=(
            "With rank 2 crashing in step 1 (the solution of the exercise above), predict: the rank the "
            "summary names as root cause, the launcher's exit status, and which of node 1's ranks (4-7) "
            "print `finished step 0` and `finished step 1`. The checker runs that job and compares."
        ),
        hint=(
            "A barrier completes only when every rank has called it, and a crashed rank never calls the "
            "next one. The launcher's own exit status does not copy the worker's."
        ),
        starter=_example("crash-predict/answers.txt"),
        solution=_example("crash-predict/solution.txt"),
        check=check_predict,
    ),
    Exercise(
        id="resume",
        page=PAGE,
        title="Resume from the checkpoint after a restart",
        task="make a restarted job continue from its last checkpoint instead of step 0",
        statement=(
            "The starter trains 4 steps and rank 0 saves the number of the last finished step to "
            "`checkpoint.txt` after each one. On the first attempt rank 3 fails in step 2; with "
            "`--max-restarts 1` the launcher starts everyone again, and the starter starts over at step 0. "
            "Make attempt 1 continue with the step after the checkpoint. The checker runs it with "
            "`--max-restarts 1` and reads the `attempt A: step S done` lines."
        ),
        hint=(
            "At the top, before the loop: if `checkpoint.txt` exists, the first step to run is the number "
            "in it plus one. `TORCHELASTIC_RESTART_COUNT` tells you which attempt this is."
        ),
        starter=_example("resume/worker.py"),
        solution=_example("resume/solution.py"),
        check=check_resume,
    ),
]
