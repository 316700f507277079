"""Exercises of Part 3, barriers: make everyone wait at the right moment, and only there."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .catalog import Exercise
from .checking import Verdict, run_job, scratch

PAGE = "part3-barriers.md"
#: What rank 0 writes in the checkpoint exercise (the starter and the solution write it too).
CONTENT = "weights after step 0"


def _failed_rank(job) -> tuple[int, str] | None:
    """The first rank whose output ends in an exception or an error, with that last line."""
    for rank, lines in sorted(job.rank_lines().items()):
        bad = [line for line in lines if re.match(r"^\w+(Error|Exception)\b", line) or "timed out" in line
                or "mismatch" in line or "can never complete" in line]
        if bad:
            return rank, bad[-1]
    return None


def check_checkpoint(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    with scratch() as cwd:
        argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0",
                "--barrier-trace", "trace.jsonl", str(attempt)]
        (job,) = run_job([argv], Path(cwd))
        trace_file = Path(cwd, "trace.jsonl")
        trace = [json.loads(line) for line in trace_file.read_text().splitlines()] if trace_file.exists() else []
    v.jobs.append(job)
    failed = _failed_rank(job)
    if failed:
        rank, line = failed
        if "FileNotFoundError" in line:
            fix = "rank 0 has not written the file yet: make every rank wait until it has (and only then read)"
        elif "never arrived" in line or "can never complete" in line:
            fix = "every rank must call the same barriers; a barrier inside `if rank == ...` is reached by some ranks only"
        else:
            fix = "read the last lines below"
        v.fail(f"rank {rank}: {line}", fix)
        return v
    if not v.expect(job.returncode == 0, "every rank exited 0", f"the job ended with {job.status()}"):
        return v
    lines = job.rank_lines()
    readers = [r for r in range(8) if any(f"read: {CONTENT}" in line for line in lines.get(r, []))]
    v.expect(readers == list(range(8)), f"all 8 ranks read `{CONTENT}`",
             f"only ranks {readers} printed `read: {CONTENT}`", "every rank reads the file and prints what it read")
    waited = sorted({t["rank"] for t in trace})
    v.expect(waited == list(range(8)), "all 8 ranks met at a barrier (the --barrier-trace shows them)",
             f"the barrier trace shows ranks {waited} only",
             "wait with clusterlab.barrier(...), not by polling for the file: on a real cluster the file may "
             "appear before it is complete")
    return v


def check_eval(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    with scratch() as cwd:
        argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", str(attempt)]
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    failed = _failed_rank(job)
    if failed:
        rank, line = failed
        fix = ("rank 0 waits in a barrier the others never call: move the barrier out of `if rank == 0`, so "
               "that every rank calls it" if any(k in line for k in ("mismatch", "never arrived", "can never complete"))
               else "read the last lines below")
        v.fail(f"rank {rank}: {line}", fix)
        return v
    if not v.expect(job.returncode == 0, "every rank exited 0", f"the job ended with {job.status()}"):
        return v
    # The starter's lines carry wall-clock times: "eval 0 done at T" (rank 0), "epoch 1 start at T" (all).
    lines = job.rank_lines()
    evals = {int(m.group(1)): float(m.group(2)) for line in lines.get(0, [])
             for m in [re.search(r"eval (\d+) done at ([\d.]+)", line)] if m}
    for epoch in (1, 2):
        done = evals.get(epoch - 1)
        if done is None:
            v.fail(f"rank 0 printed no `eval {epoch - 1} done at ...` line",
                   "keep the starter's print lines: the check reads them")
            return v
        early = []
        for rank in range(4):
            starts = [float(m.group(1)) for line in lines.get(rank, [])
                      for m in [re.search(rf"epoch {epoch} start at ([\d.]+)", line)] if m]
            if not starts:
                v.fail(f"rank {rank} printed no `epoch {epoch} start at ...` line", "keep the starter's print lines")
                return v
            if starts[0] < done:
                early.append(rank)
        v.expect(not early, f"no rank started epoch {epoch} before rank 0's evaluation {epoch - 1} was over",
                 f"ranks {early} started epoch {epoch} before rank 0 finished evaluation {epoch - 1}",
                 "every rank waits for the evaluation: one barrier, called by all ranks, after it")
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="barrier-checkpoint",
        page=PAGE,
        title="Read the file only once it is written",
        task="rank 0 writes a file that every rank then reads: add the barrier that makes this safe",
        statement=(
            "In the starter, rank 0 saves a file (slowly, as checkpoints are saved) and every rank reads it "
            "right away: most ranks crash with `FileNotFoundError`. Make every rank wait until the file is "
            "written, with a barrier, so that all 8 ranks print `read: weights after step 0`. The checker "
            "runs it as 2 x 4 with `--barrier-trace` and looks for every rank in the trace."
        ),
        hint=(
            "A barrier returns only when every rank has called it. Which rank must call it *after* writing, "
            "and which ranks must call it *before* reading? All of them call the same one."
        ),
        starter=_example("barrier-checkpoint/worker.py"),
        solution=_example("barrier-checkpoint/solution.py"),
        check=check_checkpoint,
    ),
    Exercise(
        id="barrier-eval",
        page=PAGE,
        title="The barrier inside an `if`",
        task="only rank 0 evaluates; fix the barrier so that every rank waits for it, and the job ends",
        statement=(
            "After each epoch rank 0 evaluates the model and the others must not start the next epoch "
            "until it is done. The starter puts the barrier inside `if me.rank == 0:`, the classic bug: "
            "run it and read the error. Fix it so the job ends cleanly and no rank starts an epoch before "
            "the previous evaluation is over (the checker compares the times the starter prints)."
        ),
        hint=(
            "A barrier is a collective: it completes when *every* rank has called it, in the same order. "
            "Which ranks reach the barrier in the starter? Keep the evaluation inside the `if`; move only "
            "what every rank must do."
        ),
        starter=_example("barrier-eval/worker.py"),
        solution=_example("barrier-eval/solution.py"),
        check=check_eval,
    ),
]
