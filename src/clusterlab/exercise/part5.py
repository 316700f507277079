"""Exercises of Part 5, DeepSpeed ZeRO: the batch-size rule, and the bytes a stage sends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .catalog import Exercise
from .checking import Verdict, number, number_set, read_answers, run_job, scratch, unanswered

PAGE = "part5-deepspeed.md"


def check_batch(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    try:
        config = json.loads(attempt.read_text(encoding="utf-8"))
    except ValueError as exc:
        v.fail(f"{attempt.name} is not JSON: {exc}", "keep the file valid JSON (a missing comma? a trailing one?)")
        return v
    if not isinstance(config, dict):
        v.fail(f"{attempt.name} holds a JSON {type(config).__name__}, not an object", "start from the starter file")
        return v
    for key, want in (("train_micro_batch_size_per_gpu", 4), ("gradient_accumulation_steps", 2)):
        v.expect(config.get(key) == want, f"{key} is still {want}",
                 f"{key} is {config.get(key)!r}; the task keeps it at {want}",
                 "change only what the batch rule forces you to change")
    with scratch() as cwd:
        (job,) = run_job([["clusterlab", "zero", "config", str(attempt), "--world-size", "12"]], Path(cwd), timeout=60)
    v.jobs.append(job)
    error = job.first("error:")
    v.expect(job.returncode == 0, "DeepSpeed's batch rule accepts it on 12 ranks",
             f"refused on 12 ranks: {error.split('error:', 1)[1].strip() if error else job.status()}",
             "train_batch_size = micro batch per GPU x accumulation steps x world size")
    return v


KEYS = ("stage1_bytes_sent_per_rank", "stage3_bytes_sent_per_rank", "ranks_sending_across_nodes")
_SENT = re.compile(r"sent (\d+) B inside the node, (\d+) B across nodes")


def check_traffic(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    answers = read_answers(attempt, KEYS)
    if unanswered(answers, KEYS, v):
        return v
    measured: dict[str, object] = {}
    for stage in (1, 3):
        argv = ["clusterlab", "zero", "simulate", "--nnodes", "2", "--nproc-per-node", "4", "--stage", str(stage),
                "--steps", "1"]
        with scratch() as cwd:
            (job,) = run_job([argv], Path(cwd), timeout=120)
        v.jobs.append(job)
        sent = {rank: (int(m.group(1)), int(m.group(2))) for rank, lines in job.rank_lines().items()
                for line in lines for m in [_SENT.search(line)] if m}
        if job.returncode != 0 or len(sent) != 8:
            v.fail(f"zero simulate --stage {stage} ended with {job.status()} and reported {len(sent)} of 8 ranks")
            return v
        totals = {inside + across for inside, across in sent.values()}
        measured[f"stage{stage}_bytes_sent_per_rank"] = str(max(totals))
        across = {rank for rank, (_, out) in sent.items() if out}
        measured.setdefault("ranks_sending_across_nodes", across)
    why = {
        "stage1_bytes_sent_per_rank": "ZeRO-1 reduce-scatters the fp16 gradients and all-gathers the fp16 parameters: "
                                      "2 x (p-1)/p x 2 bytes x psi = 2 x 7/8 x 528",
        "stage3_bytes_sent_per_rank": "ZeRO-3 gathers the parameters twice (forward and backward) and reduce-scatters "
                                      "the gradients once: 3 x 7/8 x 528",
        "ranks_sending_across_nodes": "the ring runs 0 -> 1 -> ... -> 7 -> 0: only the hops 3 -> 4 and 7 -> 0 leave a node",
    }
    for key in KEYS:
        want: Any = measured[key]
        if key == "ranks_sending_across_nodes":
            got = number_set(answers.get(key))
            ok = got == want
            shown_want = ", ".join(map(str, sorted(want)))
        else:
            got_number = number(answers.get(key))
            ok = got_number == int(want)
            shown_want = want
        v.expect(ok, f"{key}: {shown_want}", f"{key}: you said {answers.get(key) or '(nothing)'}, the run measured "
                 f"{shown_want}", why[key])
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="zero-batch",
        page=PAGE,
        title="Move a DeepSpeed config to 12 ranks",
        task="fix ds_config.json for 3 nodes x 4 GPUs, keeping the micro-batch and the accumulation steps",
        statement=(
            "The lab's `ds_config.json` is written for 8 ranks. Your job now runs on 3 nodes x 4 GPUs. "
            "Keep 4 samples per GPU per micro-step and 2 accumulation steps, and change what DeepSpeed's "
            "batch rule requires, so that `clusterlab zero config FILE --world-size 12` accepts it."
        ),
        hint=(
            "DeepSpeed checks `train_batch_size = train_micro_batch_size_per_gpu x "
            "gradient_accumulation_steps x world_size` before it starts anything."
        ),
        starter=_example("zero-batch/ds_config.json"),
        solution=_example("zero-batch/solution.json"),
        check=check_batch,
    ),
    Exercise(
        id="zero-traffic",
        page=PAGE,
        title="Predict what ZeRO sends",
        task="predict the bytes each rank sends per step under ZeRO-1 and ZeRO-3, and which ranks cross nodes",
        statement=(
            "For the lab's model (&Psi; = 264 parameters, fp16 on the wire) on 2 nodes x 4 ranks, predict "
            "how many bytes each rank sends in one optimizer step under ZeRO-1 and under ZeRO-3, and which "
            "ranks send across nodes. The checker runs `clusterlab zero simulate` for both stages (8 real "
            "processes each) and compares with what the ranks measured."
        ),
        hint=(
            "A ring reduce-scatter or all-gather over p ranks makes each rank send (p - 1)/p of the data. "
            "Count the collectives of one step in the table above (ZeRO-1: two; ZeRO-3: three), each over "
            "2&Psi; bytes. For the last question, follow the ring 0 &rarr; 1 &rarr; ... &rarr; 7 &rarr; 0."
        ),
        starter=_example("zero-traffic/answers.txt"),
        solution=_example("zero-traffic/solution.txt"),
        check=check_traffic,
    ),
]
