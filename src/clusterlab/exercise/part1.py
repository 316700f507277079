"""Exercises of Part 1, node environment variables: a worker learns who it is from its environment."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError
from .catalog import Exercise
from .checking import Verdict, run_job, scratch

PAGE = "part1-environment.md"
#: The job env-rank runs: not the lab's usual 2 x 4, so that a hard-coded 4 shows.
NNODES, NPROC = 3, 2


def check_env_rank(attempt: Path, root: Path) -> Verdict:
    """Run the worker with RANK (and GROUP_RANK, ROLE_RANK) removed, as the seed's exports had none."""
    v = Verdict()
    argv = ["clusterlab", "simulate", "--nnodes", str(NNODES), "--nproc-per-node", str(NPROC), "--master-port", "0",
            "--no-python", "env", "-u", "RANK", "-u", "GROUP_RANK", "-u", "ROLE_RANK", "python", str(attempt)]
    with scratch() as cwd:
        (job,) = run_job([argv], Path(cwd))
    v.jobs.append(job)
    lines, placed = job.rank_lines(), job.placement()
    crashed = {r: ls[-1] for r, ls in lines.items() if any("Traceback" in line for line in ls)}
    if crashed:
        rank, last = sorted(crashed.items())[0]
        fix = ("the check removes RANK, as the seed exported none: compute it from NODE_RANK, "
               "LOCAL_RANK and LOCAL_WORLD_SIZE" if "RANK" in last else "read the traceback below")
        v.fail(f"rank {rank} crashed: {last}", fix)
        return v
    v.expect(job.returncode == 0, "every rank exited 0", f"the job ended with {job.status()}")
    world = NNODES * NPROC
    for rank in range(world):
        node, local = divmod(rank, NPROC)
        said = [m.group(1) for line in lines.get(rank, []) for m in [re.search(r"\brank=(-?\d+)", line)] if m]
        if not said:
            v.fail(f"rank {rank} (node {node}, local {local}) printed no `rank=N` line",
                   "print exactly `rank=` followed by the global rank you computed")
            return v
        if int(said[-1]) != rank:
            printed = int(said[-1])
            if printed == local:
                fix = "that is its rank on its node: add the ranks of the nodes before it (node_rank x processes per node)"
            elif printed == node * 4 + local:
                fix = (f"the check runs {NNODES} nodes x {NPROC} processes: take the processes per node from "
                       "LOCAL_WORLD_SIZE, never a fixed 4")
            else:
                fix = "global rank = node_rank x processes per node + local_rank"
            v.fail(f"rank {rank} (node {node}, local {local}) printed rank={printed}; it is {node} * {NPROC} + "
                   f"{local} = {rank}", fix)
            return v
    v.ok(f"all {world} ranks printed their global rank, computed without RANK ({NNODES} nodes x {NPROC} processes)")
    if placed and len(placed) != world:
        v.fail(f"only ranks {sorted(placed)} printed anything")
    return v


#: What rank 6 of a 2 nodes x 4 tasks job is, field by field, as `clusterlab env` prints it.
RANK6 = {"rank": "6", "local_rank": "2", "world_size": "8", "local_world_size": "4", "node_rank": "1", "nnodes": "2"}
_WHY = {
    "rank": "SLURM_PROCID is the task's rank in the whole step: 0 .. SLURM_NTASKS-1",
    "local_rank": "SLURM_LOCALID counts the tasks on this node only: node 1 holds ranks 4-7, so rank 6 is local 2",
    "world_size": "SLURM_NTASKS counts the tasks of all nodes",
    "local_world_size": "SLURM_TASKS_PER_NODE says how many tasks each node runs, e.g. 4(x2)",
    "node_rank": "SLURM_NODEID is the index of the task's node: 0 for the first, 1 for the second",
    "nnodes": "SLURM_NNODES is the number of nodes",
}


_FIELD_OF = {"SLURM_PROCID": "rank", "SLURM_LOCALID": "local_rank", "SLURM_NTASKS": "world_size",
             "SLURM_NODEID": "node_rank", "SLURM_NNODES": "nnodes", "SLURM_TASKS_PER_NODE": "local_world_size"}


def _field_of(error: str) -> str:
    """The rank-view field of the first Slurm variable an error message names."""
    return next((field for name, field in _FIELD_OF.items() if name in error), "")


def read_exports(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (an ``export`` in front is fine, ``#`` starts a comment)."""
    found = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("export "):
            line = line[len("export "):].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"{path}:{number}: {raw.strip()!r} is not NAME=value; write e.g. SLURM_PROCID=6")
        found[name] = value.strip().strip("'\"")
    return found


def check_env_slurm(attempt: Path, root: Path) -> Verdict:
    """`clusterlab env` reads the attempt's variables alone (a clean environment) and must describe rank 6."""
    v = Verdict()
    exports = read_exports(attempt)
    with scratch() as cwd:
        (job,) = run_job([["clusterlab", "env"]], Path(cwd), env=exports, clean_env=True, timeout=30)
    v.jobs.append(job)
    if job.returncode != 0:
        error = job.first("error:") or (job.lines[-1] if job.lines else job.status())
        error = error.split("error:", 1)[-1].strip()
        fix = ("set the variable it names" if "is not set" in error or "no launcher variables" in error
               else "correct the value it names: " + _WHY.get(_field_of(error), "see the table above"))
        v.fail(f"clusterlab env refused these variables: {error}", fix)
        return v
    launcher = next((line.split(":", 1)[1].strip() for line in job.lines if line.startswith("launcher:")), "")
    if not v.expect(launcher == "Slurm", "clusterlab read them as Slurm's variables",
                    f"clusterlab read them as {launcher}'s variables, not Slurm's",
                    "describe the task with SLURM_* names only (no RANK, LOCAL_RANK or WORLD_SIZE)"):
        return v
    fields: dict[str, str] = {m[1]: m[2] for m in map(re.compile(r"^\s*(\w+) = (\S+)").match, job.lines) if m}
    for name, want in RANK6.items():
        got = fields.get(name)
        v.expect(got == want, f"{name} = {want}", f"{name} = {got}, but rank 6 of 2 x 4 has {name} = {want}",
                 _WHY[name])
    return v


def _example(name: str) -> str:
    return f"examples/exercises/{name}"


EXERCISES = [
    Exercise(
        id="env-rank",
        page=PAGE,
        title="Compute the global rank from the seed's exports",
        task="write a worker that computes its global rank from NODE_RANK, LOCAL_RANK and LOCAL_WORLD_SIZE",
        statement=(
            "The seed exported no `RANK`. Make the worker compute its global rank from the variables every "
            "launcher does give it, and print it as `rank=N`. The checker runs it as 3 nodes x 2 processes "
            "with `RANK` removed from every worker's environment, and compares each rank's line with the "
            "launcher's own `[nodeN rankR localL]` tag."
        ),
        hint=(
            "Node *n* holds the ranks `n * nproc_per_node` to `n * nproc_per_node + nproc_per_node - 1`; "
            "torchrun (and clusterlab) export the processes per node as `LOCAL_WORLD_SIZE`. "
            "Do not assume 4: the check does not run 4 per node."
        ),
        starter=_example("env-rank/worker.py"),
        solution=_example("env-rank/solution.py"),
        check=check_env_rank,
    ),
    Exercise(
        id="env-slurm",
        page=PAGE,
        title="Describe one worker in Slurm's names",
        task="write the SLURM_* variables srun gives rank 6 of a 2 nodes x 4 tasks job",
        statement=(
            "Under `srun` a worker finds no `RANK` at all, only Slurm's names. Write, one `NAME=value` per "
            "line, the variables `srun` gives the task that is **global rank 6** of a job of 2 nodes with "
            "4 tasks each. The checker hands exactly these variables to `clusterlab env` and compares the "
            "rank view it reads with rank 6's."
        ),
        hint=(
            "Five facts are needed: the rank (`SLURM_PROCID`), the rank on the node (`SLURM_LOCALID`), "
            "the number of tasks (`SLURM_NTASKS`), the node's index (`SLURM_NODEID`) and the number of "
            "nodes (`SLURM_NNODES`); `SLURM_TASKS_PER_NODE` says how many tasks each node runs "
            "(`4(x2)`: 4 tasks on each of 2 nodes). The table above has the names."
        ),
        starter=_example("env-slurm/rank6.env"),
        solution=_example("env-slurm/solution.env"),
        check=check_env_slurm,
    ),
]
