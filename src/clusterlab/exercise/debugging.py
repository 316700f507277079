"""Exercises of "Debugging a multi-node job": the first failure is not the culprit; read what torch says."""

from __future__ import annotations

import re
from pathlib import Path

from .catalog import Exercise
from .checking import Verdict, number, read_answers, run_job, scratch, unanswered
from .failures import _summary

PAGE = "debugging.md"
KEYS = ("stuck_rank", "stuck_node", "summary_can_name_stuck_rank", "root_cause_exit_code")


def check_culprit(attempt: Path, root: Path) -> Verdict:
    """Run Part 3's barrier_timeout.py and hold the answers against its messages and its summary."""
    v = Verdict()
    answers = read_answers(attempt, KEYS)
    if unanswered(answers, KEYS, v):
        return v
    argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "4", "--master-port", "0",
            str(root / "examples" / "barrier_timeout.py")]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    arrived = re.search(r"rank (\d+) on node(\d+) never arrived", job.output)
    summary = _summary(job)
    if not arrived or not summary:
        v.fail(f"barrier_timeout.py ended with {job.status()} without its timeout message or summary")
        return v
    stuck, node = int(arrived.group(1)), int(arrived.group(2))
    named = number((summary.get("rank") or "").split(" ")[0])
    exit_code = number((summary.get("exit") or "").replace("exit code", ""))
    actual = {"stuck_rank": stuck, "stuck_node": node, "root_cause_exit_code": exit_code}
    why = {
        "stuck_rank": "the timeout message names the rank that never arrived: that is where to look",
        "stuck_node": "the same message names its node: node1 (ranks 4-7)",
        "root_cause_exit_code": "a waiting rank whose barrier timed out ends with sys.exit(message): status 1",
    }
    for key, want in actual.items():
        got = number(answers.get(key))
        v.expect(got == want, f"{key}: {want}", f"{key}: you said {answers.get(key) or '(nothing)'}, the job says "
                 f"{want}", why[key])
    said = (answers.get("summary_can_name_stuck_rank") or "").strip().lower()
    v.expect(said in ("no", "never", "false"),
             f"summary_can_name_stuck_rank: no (this run named rank {named}, one of the ranks that waited)",
             f"summary_can_name_stuck_rank: you said {said or '(nothing)'}",
             "the summary names the first rank to *exit* with an error; the stuck rank never exits by itself, "
             "the launcher stops it only after another rank failed")
    return v


def check_unused(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    argv = ["clusterlab", "simulate", "--nnodes", "2", "--nproc-per-node", "1", "--master-port", "0", str(attempt)]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd), env={"TORCH_DISTRIBUTED_DEBUG": "DETAIL"}, timeout=180)
    v.jobs.append(job)
    mismatch = job.first("Detected mismatch between collectives")
    if mismatch:
        shapes = re.findall(r"TensorShape=\[(\d*)\]", mismatch)
        v.fail(f"torch found a collective mismatch: the ranks all-reduce tensors of shapes {shapes}",
               "every rank must send the same number of gradient values: an unused layer's gradient is zeros, not nothing")
        return v
    if not v.expect(job.returncode == 0, "every rank exited 0", f"the job ended with {job.status()}",
                    "read the last lines below"):
        return v
    world = 2
    want_values, want_sum = 6, 4 * world + 2 * (world - 1)  # embed from every rank, head from all but rank 1
    for rank in range(world):
        said = [(int(m.group(1)), float(m.group(2))) for line in job.rank_lines().get(rank, [])
                for m in [re.search(r"all_reduce of (\d+) gradient values, sum ([\d.]+)", line)] if m]
        if not said:
            v.fail(f"rank {rank} printed no `all_reduce of N gradient values, sum S` line", "keep the starter's print")
            return v
        count, total = said[-1]
        v.expect((count, total) == (want_values, want_sum),
                 f"rank {rank}: {want_values} values summing to {want_sum:g} (the head's gradient from rank 0 only)",
                 f"rank {rank}: {count} values summing to {total:g}; every rank should send 6 values and the "
                 f"sum is 4 x {world} (embed) + 2 x {world - 1} (head, not from rank 1) = {want_sum}",
                 "send zeros for the layer rank 1 did not use; do not drop the layer for everyone")
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="debug-culprit",
        page=PAGE,
        title="First failure or culprit?",
        task="from barrier_timeout.py's log, tell the stuck rank from the rank the summary names",
        statement=(
            "Run Part 3's `examples/barrier_timeout.py` (2 x 4) and read its log as you would a real job's. "
            "Answer: which rank is stuck, on which node; can the summary's *root cause* ever be that rank; "
            "and with what exit code did the rank it does name end? The checker runs the job and compares."
        ),
        hint=(
            "Two different questions have two different answers in that log: *who failed first* (the "
            "summary) and *who never arrived* (the error each waiting rank raised). Which one exits on its own?"
        ),
        starter=_example("debug-culprit/answers.txt"),
        solution=_example("debug-culprit/solution.txt"),
        check=check_culprit,
    ),
    Exercise(
        id="debug-unused",
        page=PAGE,
        title="A collective mismatch, found with TORCH_DISTRIBUTED_DEBUG",
        task="find with TORCH_DISTRIBUTED_DEBUG=DETAIL why one rank's all-reduce differs, and fix it",
        statement=(
            "The starter all-reduces every rank's gradients in one flat tensor, but rank 1 never used the "
            "`head` layer and leaves its gradient out. Run it as it is, then with "
            "`TORCH_DISTRIBUTED_DEBUG=DETAIL`, and compare the two errors. Then fix the worker so that "
            "every rank sends the same tensor and the head's gradient still counts where it exists. The "
            "checker runs it under `clusterlab simulate` (2 nodes x 1, torch's gloo) with `DETAIL` on."
        ),
        hint=(
            "This is what DDP's `find_unused_parameters` is about: a parameter a rank did not use has a "
            "gradient of zero on that rank, not no gradient. `torch.zeros_like(grad)` has the right shape."
        ),
        starter=_example("debug-unused/worker.py"),
        solution=_example("debug-unused/solution.py"),
        check=check_unused,
        needs=("torch",),
    ),
]
