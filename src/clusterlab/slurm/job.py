"""The simulated controller: turn a request (``-N``, ``-n``, ``-c`` ...) into a job allocation, then into steps.

A real Slurm job has two levels, and so does this one:

* the **allocation** (what ``sbatch`` or a standalone ``srun`` asks slurmctld
  for): nodes, and on each node a number of tasks, CPUs and GPUs. On a shared
  cluster (select/cons_tres) a node gives the job exactly the CPUs its tasks
  need: ``tasks x --cpus-per-task``. Simulated nodes have
  :data:`~clusterlab.slurm.hosts.CPUS_PER_NODE` CPUs and
  :data:`~clusterlab.slurm.hosts.GPUS_PER_NODE` GPUs.
* a **step** (each ``srun`` inside the allocation, numbered 0, 1, 2 ...): a
  layout of tasks on some or all of the allocated nodes, within the allocated
  CPUs. Asking for more CPUs than the allocation holds is an error, as in Slurm
  ("More processors requested than permitted").

Both levels are frozen values, so ``--explain`` can show a plan without running it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass

from ..errors import UsageError
from . import hosts
from .layout import Distribution, TaskLayout, compress_counts, count_tasks, step_layout
from .options import MAX_COUNT, Value


@dataclass(frozen=True)
class Allocation:
    """What the job holds: nodes, and tasks, CPUs and GPUs on each (in ``SLURM_JOB_NODELIST`` order)."""

    job_id: int
    job_name: str
    nodes: tuple[str, ...]
    tasks_per_node: tuple[int, ...]
    cpus_per_node: tuple[int, ...]
    gpus_per_node: tuple[int, ...]
    ntasks: int | None = None  # exported as SLURM_NTASKS only when asked for (-n or --ntasks-per-node)
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    gpus_per_node_opt: str | None = None  # as written, for SLURM_GPUS_PER_NODE
    distribution: str | None = None  # as written, for SLURM_DISTRIBUTION
    submit_dir: str = ""

    @property
    def nodelist(self) -> str:
        return hosts.compress(list(self.nodes))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(asdict(self), f)

    @classmethod
    def load(cls, path: str) -> "Allocation":
        with open(path) as f:
            raw = json.load(f)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    def __str__(self) -> str:
        return (f"job {self.job_id} ({self.job_name}): {len(self.nodes)} nodes {self.nodelist}, "
                f"tasks per node {compress_counts(self.tasks_per_node)}, "
                f"CPUs per node {compress_counts(self.cpus_per_node)}, GPUs per node {compress_counts(self.gpus_per_node)}")


def _v(values: dict[str, Value], key: str, default=None):
    return values[key].value if key in values else default


def _say(values: dict[str, Value], key: str) -> str:
    v = values[key]
    return f"{v.option}={v.value} ({v.source})" if v.source != "command line" else f"{v.option}={v.value}"


def _positive(values, key) -> int | None:
    n = _v(values, key)
    if n is not None and n < 1:
        raise UsageError(f"{_say(values, key)} must be at least 1")
    return n


def node_count(values: dict[str, Value]) -> int | None:
    """``--nodes=2`` -> 2; ``--nodes=2-4`` -> 4 (Slurm grants as many as it can at once; here all are idle)."""
    raw = _v(values, "nodes")
    if raw is None:
        return None
    lo, _, hi = str(raw).partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()) or int(lo) < 1 or (hi and int(hi) < int(lo)):
        raise UsageError(f"{_say(values, 'nodes')} is not a node count; write N or MIN-MAX, e.g. --nodes=2")
    if int(hi or lo) > MAX_COUNT:
        raise UsageError(f"{_say(values, 'nodes')} is more nodes than this simulation runs (at most {MAX_COUNT})")
    return int(hi or lo)


def gpu_count(values: dict[str, Value], key: str) -> int | None:
    """``--gpus-per-node=4``, ``--gpus-per-node=a100:4`` or ``--gres=gpu:a100:4`` -> 4."""
    raw = _v(values, key)
    if raw is None:
        return None
    text = str(raw)
    if key == "gres":
        gpu = [g for g in text.split(",") if g.split(":")[0] == "gpu"]
        if not gpu:
            return None
        text = gpu[0].split(":", 1)[1] if ":" in gpu[0] else "1"
    count = text.rsplit(":", 1)[-1]
    if not count.isdigit():
        raise UsageError(f"{_say(values, key)} is not a GPU count; write e.g. {values[key].option}=4")
    return int(count)


def allocate(values: dict[str, Value], job_id: int, submit_dir: str, default_name: str) -> Allocation:
    """Grant the allocation a request asks for, or explain in one line why it cannot exist."""
    nnodes = node_count(values)
    ntasks = _positive(values, "ntasks")
    per_node = _positive(values, "ntasks_per_node")
    cpt = _positive(values, "cpus_per_task")
    gpn = gpu_count(values, "gpus_per_node") or gpu_count(values, "gres")
    gpt = gpu_count(values, "gpus_per_task")
    dist = Distribution.parse(str(_v(values, "distribution", "*")), os.environ.get("SLURM_DIST_PLANESIZE"))
    names = None
    if "nodelist" in values:
        names = hosts.expand(str(values["nodelist"].value))
        if len(set(names)) != len(names):
            raise UsageError(f"{_say(values, 'nodelist')} names a node twice; list each node once")
        if nnodes is not None and nnodes != len(names):
            raise UsageError(f"{_say(values, 'nodes')} disagrees with {_say(values, 'nodelist')} "
                             f"({len(names)} nodes); drop one of them")
        nnodes = len(names)
    if nnodes is None:  # Slurm packs tasks onto as few nodes as their CPUs allow
        want = ntasks or per_node or 1
        nnodes = math.ceil(want / per_node) if per_node else max(1, math.ceil(want * (cpt or 1) / hosts.CPUS_PER_NODE))
    if ntasks is not None and ntasks < nnodes:
        print(f"srun: Warning: can't run {ntasks} processes on {nnodes} nodes, setting nnodes to {ntasks}",
              file=sys.stderr)
        nnodes = ntasks
        names = names[:ntasks] if names else None
    if ntasks is not None and per_node is not None and ntasks > nnodes * per_node:
        raise UsageError(
            f"--ntasks={ntasks} cannot fit on --nodes={nnodes} x --ntasks-per-node={per_node} = "
            f"{nnodes * per_node} task slots; ask for --nodes={math.ceil(ntasks / per_node)} "
            f"or --ntasks-per-node={math.ceil(ntasks / nnodes)}, or fewer tasks"
        )
    total = ntasks or (nnodes * per_node if per_node else nnodes)
    counts = count_tasks(total, [per_node or total] * nnodes, dist.resolve(total, nnodes))
    cpus = [c * (cpt or 1) for c in counts]
    gpus = [gpn if gpn is not None else (gpt or 0) * c for c in counts]
    names = names or hosts.simulated_names(nnodes)
    for name, c, g in zip(names, cpus, gpus):
        if c > hosts.CPUS_PER_NODE:
            raise UsageError(f"{name} would need {c} CPUs but a simulated node has {hosts.CPUS_PER_NODE}; "
                             f"use more --nodes or a smaller --cpus-per-task")
        if g > hosts.GPUS_PER_NODE:
            raise UsageError(f"{name} would need {g} GPUs but a simulated node has {hosts.GPUS_PER_NODE}; "
                             f"use --gpus-per-node={hosts.GPUS_PER_NODE} or fewer")
    return Allocation(
        job_id=job_id, job_name=str(_v(values, "job_name", default_name)), nodes=tuple(names),
        tasks_per_node=tuple(counts), cpus_per_node=tuple(cpus), gpus_per_node=tuple(gpus),
        ntasks=total if (ntasks or per_node) else None, ntasks_per_node=per_node, cpus_per_task=cpt,
        gpus_per_task=gpt, gpus_per_node_opt=str(values["gpus_per_node"].value) if "gpus_per_node" in values else None,
        distribution=str(values["distribution"].value) if "distribution" in values else None,
        submit_dir=submit_dir,
    )


@dataclass(frozen=True)
class Step:
    """One ``srun`` inside an allocation: its id, its task layout, and what it asked for."""

    alloc: Allocation
    step_id: int
    layout: TaskLayout
    cpus_per_task: int | None
    ntasks_per_node: int | None
    gpus_per_task: int | None
    distribution_given: bool

    def cpus_on_node(self, node: int) -> int:
        """``SLURM_CPUS_ON_NODE``: with ``-c`` the step gets exactly tasks x c CPUs, else all the job's CPUs there."""
        if self.cpus_per_task:
            return self.layout.counts[node] * self.cpus_per_task
        return self.alloc.cpus_per_node[self.alloc.nodes.index(self.layout.nodes[node])]

    def gpus_on_node(self, node: int) -> int:
        return self.alloc.gpus_per_node[self.alloc.nodes.index(self.layout.nodes[node])]


def plan_step(alloc: Allocation, values: dict[str, Value], step_id: int) -> Step:
    """Lay a step out inside ``alloc``; ``values`` are srun's options (command line over inherited SLURM_*)."""
    nnodes = node_count(values)
    ntasks = _positive(values, "ntasks")
    per_node = _positive(values, "ntasks_per_node")
    cpt = _positive(values, "cpus_per_task")
    gpt = gpu_count(values, "gpus_per_task")
    dist = Distribution.parse(str(_v(values, "distribution", "*")), os.environ.get("SLURM_DIST_PLANESIZE"))
    if nnodes is not None and nnodes > len(alloc.nodes):
        raise UsageError(f"{_say(values, 'nodes')} but the job holds only {len(alloc.nodes)} nodes "
                         f"({alloc.nodelist}); ask sbatch for more nodes or use --nodes={len(alloc.nodes)}")
    nnodes = nnodes or len(alloc.nodes)
    if ntasks is not None and ntasks < nnodes:
        if "nodes" in values:
            print(f"srun: Warning: can't run {ntasks} processes on {nnodes} nodes, setting nnodes to {ntasks}",
                  file=sys.stderr)
        nnodes = ntasks
    nodes = list(alloc.nodes[:nnodes])
    slots = [c // (cpt or 1) for c in alloc.cpus_per_node[:nnodes]]
    if ntasks is not None and per_node is not None and ntasks > nnodes * per_node:
        if values["ntasks"].source == "command line" and values["ntasks_per_node"].source == "command line":
            raise UsageError(f"--ntasks={ntasks} cannot fit on {nnodes} nodes x --ntasks-per-node={per_node}; "
                             f"ask for --ntasks={nnodes * per_node} or more nodes")
        print(f"srun: Warning: can't honor --ntasks-per-node set to {per_node} which doesn't match the "
              f"requested tasks {ntasks} with the number of requested nodes {nnodes}. Ignoring "
              f"--ntasks-per-node.", file=sys.stderr)
        per_node = None
    if per_node:
        slots = [min(s, per_node) for s in slots]
    if ntasks is None:
        # srun's default: one task per node; -c changes it to as many tasks as the CPUs allow.
        ntasks = per_node * nnodes if per_node else (sum(slots) if cpt else nnodes)
    if ntasks > sum(slots):
        have = compress_counts(alloc.cpus_per_node[:nnodes])
        raise UsageError(
            f"srun: {ntasks} tasks x {cpt or 1} CPUs need {ntasks * (cpt or 1)} CPUs but the job has "
            f"{sum(alloc.cpus_per_node[:nnodes])} on {nnodes} nodes (SLURM_JOB_CPUS_PER_NODE={have}): "
            f"More processors requested than permitted; lower -n/-c or ask sbatch for more"
        )
    layout = step_layout(nodes, ntasks, slots, dist)
    return Step(alloc, step_id, layout, cpt, per_node, gpt, "distribution" in values)


def default_job_name(command: list[str]) -> str:
    """srun names a job after its command (``python``); sbatch after the script file."""
    return os.path.basename(command[0]) if command else "sbatch"
