"""Exercises of Part 4, Slurm: a batch script the linter and the job both accept, and srun's layouts."""

from __future__ import annotations

import re
from pathlib import Path

from .catalog import Exercise
from .checking import Verdict, number, read_answers, run_job, unanswered

PAGE = "part4-slurm.md"
_FINDING = re.compile(r"^\S+:(\d+): \[([\w-]+)\] (.*)$")


def lint(attempt: Path, root: Path, v: Verdict) -> bool:
    """Run ``clusterlab sbatch --lint`` on the attempt: one finding per linter finding. True if quiet."""
    (job,) = run_job([["clusterlab", "sbatch", "--lint", str(attempt)]], root, timeout=60)
    v.jobs.append(job)
    findings = []
    for i, line in enumerate(job.lines):
        m = _FINDING.match(line)
        if m:
            fix = next((rest.split("fix:", 1)[1].strip() for rest in job.lines[i + 1:i + 4] if "fix:" in rest), "")
            findings.append((m.group(1), m.group(2), m.group(3), fix))
    for line_no, rule, what, fix in findings:
        v.fail(f"the linter: line {line_no}: [{rule}] {what}", fix)
    if not findings and job.returncode != 0:
        v.fail(f"clusterlab sbatch --lint ended with {job.status()}: {job.lines[-1] if job.lines else ''}")
        return False
    if not findings:
        v.ok("the linter finds nothing to say")
    return not findings


def check_fix_script(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    lint(attempt, root, v)
    (job,) = run_job([["clusterlab", "sbatch", str(attempt)]], root, timeout=90)
    v.jobs.append(job)
    if not v.expect(job.returncode == 0, "the job ran to its end", f"the job ended with {job.status()}",
                    "read the last lines below"):
        return v
    seen: dict[int, tuple[str, str, str]] = {}
    duplicates = []
    for line in job.lines:
        m = re.match(r"^(\S+): RANK=(\S+) LOCAL_RANK=(\S+) WORLD_SIZE=(\S+)$", line)
        if m:
            node, rank, local, world = m.groups()
            key = number(rank)
            if key in seen:
                duplicates.append(rank)
            seen[-1 if key is None else key] = (node, local, world)
    if not v.expect(sorted(seen) == [0, 1, 2, 3] and not duplicates, "four tasks, ranks 0-3, each once",
                    f"the tasks said RANK = {sorted(seen)}{' with repeats ' + str(duplicates) if duplicates else ''}",
                    "each task must expand its own $SLURM_PROCID (single quotes around the srun command)"):
        return v
    for rank, (node, local, world) in sorted(seen.items()):
        want_node = f"node00{rank // 2 + 1}"
        v.expect((node, local, world) == (want_node, str(rank % 2), "4"),
                 f"rank {rank} runs on {want_node} as LOCAL_RANK {rank % 2} of WORLD_SIZE 4",
                 f"rank {rank} runs on {node} with LOCAL_RANK={local} WORLD_SIZE={world}; one task per GPU puts "
                 f"it on {want_node} as local rank {rank % 2}", "ask for the shape: --ntasks-per-node=2")
    return v


#: The questions of slurm-distribution: srun -N3 -n8 --exclusive, block and cyclic.
KEYS = ("block_tasks_per_node", "block_task5_node", "block_task5_localid",
        "cyclic_task5_node", "cyclic_task5_localid")


def check_distribution(attempt: Path, root: Path) -> Verdict:
    v = Verdict()
    answers = read_answers(attempt, KEYS)
    if unanswered(answers, KEYS, v):
        return v
    actual = {}
    for dist in ("block", "cyclic"):
        argv = ["clusterlab", "srun", "-N3", "-n8", "--exclusive", "-m", dist, "-l", "bash", "-c",
                "echo $SLURM_NODEID $SLURM_LOCALID $SLURM_TASKS_PER_NODE"]
        (job,) = run_job([argv], root, timeout=60)
        v.jobs.append(job)
        line = next((x for x in job.lines if x.startswith("5: ")), None)
        if line is None:
            v.fail(f"srun -m {dist} printed no line for task 5 ({job.status()})")
            return v
        node, local, per_node = line[3:].split()
        actual.update({f"{dist}_task5_node": node, f"{dist}_task5_localid": local, f"{dist}_tasks_per_node": per_node})
    why = {
        "block_tasks_per_node": "8 tasks on 3 whole nodes are counted out round-robin: 3, 3, 2, written 3(x2),2",
        "block_task5_node": "block: consecutive ranks share a node, 0-2 on node 0, 3-5 on node 1",
        "block_task5_localid": "block: task 5 is the third task (0, 1, 2) of node 1",
        "cyclic_task5_node": "cyclic: ranks are dealt round-robin, 0 -> node 0, 1 -> node 1, 2 -> node 2, 3 -> node 0 ...",
        "cyclic_task5_localid": "cyclic: node 2 receives tasks 2 and 5, so task 5 is its second (local id 1)",
    }
    for key in KEYS:
        got = (answers.get(key) or "").replace(" ", "")
        if not got:
            v.fail(f"no answer for {key}", "fill in every line of the answers file")
            continue
        v.expect(got == actual[key], f"{key}: {actual[key]}", f"{key}: you said {got}, srun says {actual[key]}",
                 why[key])
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="slurm-fix-script",
        page=PAGE,
        title="Fix a batch script until the linter is quiet",
        task="fix a one-task-per-GPU batch script until `sbatch --lint` is quiet and the tasks are ranks 0-3",
        statement=(
            "The starter is pattern (b) with four of the mistakes the linter knows. Fix it until "
            "`clusterlab sbatch --lint` finds nothing and the job's four tasks say `RANK` 0 to 3, two per "
            "node, each with its `LOCAL_RANK`. The checker runs the linter, then the job."
        ),
        hint=(
            "Read the linter's output: every finding has a `fix:` line. Then run the starter as it is "
            "(`clusterlab sbatch examples/exercises/slurm-fix-script/job.sbatch`) and look at the `RANK` "
            "each task prints: who expanded `$SLURM_PROCID`, the batch shell or the task?"
        ),
        starter=_example("slurm-fix-script/job.sbatch"),
        solution=_example("slurm-fix-script/solution.sbatch"),
        check=check_fix_script,
    ),
    Exercise(
        id="slurm-distribution",
        page=PAGE,
        title="Predict srun's layout",
        task="predict SLURM_TASKS_PER_NODE, SLURM_NODEID and SLURM_LOCALID of task 5 under -m block and -m cyclic",
        statement=(
            "For `srun -N3 -n8 --exclusive` (8 tasks on 3 whole nodes), predict `SLURM_TASKS_PER_NODE`, "
            "and the node (`SLURM_NODEID`) and local id (`SLURM_LOCALID`) of task 5, with `-m block` and "
            "with `-m cyclic`. Write them in the answers file; the checker runs both `srun` commands and "
            "compares. (Without `--exclusive`, on shared nodes, Slurm 22.05 packs the CPUs onto the first "
            "node: 6, 1, 1 - see the section 'Real Slurm next to clusterlab'.)"
        ),
        hint=(
            "First count the tasks per node: on whole nodes Slurm deals 8 tasks over 3 nodes as evenly as it can, the "
            "larger counts first. Then `block` fills node 0 with consecutive ranks before node 1, while "
            "`cyclic` deals one rank to each node in turn. The local id counts a node's tasks from 0."
        ),
        starter=_example("slurm-distribution/answers.txt"),
        solution=_example("slurm-distribution/solution.txt"),
        check=check_distribution,
    ),
]
