"""The simulated controller: turn a request (``-N``, ``-n``, ``-c`` ...) into a job allocation, then into steps.

A real Slurm job has two levels, and so does this one. The rules below are Slurm
22.05's with ``select/cons_tres`` and ``CR_Core`` (:mod:`clusterlab.slurm.config`),
checked value by value against a real cluster by ``tests/conformance``.

**The options first** (srun's ``_opt_verify``, ``src/srun/libsrun/opt.c``): with
``-N`` and no ``-n`` there is one task per node (``--ntasks-per-node`` of them);
with ``-n`` smaller than ``-N``, srun warns and lowers ``-N``; a
``--ntasks-per-node`` that disagrees with ``n / N`` is dropped, with a warning when
``n`` is larger.

**The allocation** (what ``sbatch`` or a standalone ``srun`` gets from slurmctld):

* *Shared nodes* (the default): cons_tres takes the job's CPUs from the first
  node first, leaving one task's worth for each other node it must use. So
  ``-N2 -n4`` is ``3,1`` and ``-N4 -n10`` is ``7,1(x3)``: the job gets exactly
  the CPUs its tasks need (``tasks x -c``), but not evenly spread.
* *Whole nodes* (``--exclusive``): every node's 64 CPUs and 8 GPUs are the job's,
  and the tasks are spread as evenly as Slurm's step layout spreads them
  (``3(x2),2(x2)``).
* ``--ntasks-per-node=K``: exactly K tasks on each node.

**A step** (each ``srun``, numbered 0, 1, 2 ...) lays its tasks on the first
``-N`` nodes of the job within the CPUs the job holds there
(:func:`~clusterlab.slurm.layout.step_layout`); more tasks than that is Slurm's
"More processors requested than permitted" (exit status 1). Inside a job srun
reads ``SLURM_NTASKS``, ``SLURM_JOB_NUM_NODES``, ``SLURM_NTASKS_PER_NODE`` ...
as defaults, but in 22.05 *not* ``SLURM_CPUS_PER_TASK`` (only
``SRUN_CPUS_PER_TASK``): a step's ``-c`` is 1 unless srun is given it.

Both levels are frozen values, so ``--explain`` can show a plan without running it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from . import hosts
from .layout import Distribution, TaskLayout, compress_counts, count_tasks, step_layout
from .options import MAX_COUNT, Value

#: What slurmctld's refusal looks like from srun (allocating) and from sbatch (submitting).
UNAVAILABLE = {"srun": "Unable to allocate resources: Requested node configuration is not available",
               "sbatch": "Batch job submission failed: Requested node configuration is not available"}


class SlurmError(UsageError):
    """A request Slurm itself refuses: the command prints ``srun: error: MESSAGE`` and exits with 1, as srun does."""

    status = 1


@dataclass(frozen=True)
class Allocation:
    """What the job holds: nodes, and tasks, CPUs and GPUs on each (in ``SLURM_JOB_NODELIST`` order)."""

    job_id: int
    job_name: str
    nodes: tuple[str, ...]
    tasks_per_node: tuple[int, ...]
    cpus_per_node: tuple[int, ...]
    gpus_per_node: tuple[int, ...]  # GPUs the job holds on each node (all 8 with --exclusive)
    ntasks: int | None = None  # exported as SLURM_NTASKS only when asked for (-n or --ntasks-per-node)
    ntasks_per_node: int | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    gpus_per_node_opt: str | None = None  # as written, for SLURM_GPUS_PER_NODE
    distribution: str | None = None  # as written, for SLURM_DISTRIBUTION
    submit_dir: str = ""
    submit_host: str = ""  # where sbatch or srun ran (SLURM_SUBMIT_HOST); a step inside the job keeps it
    exclusive: bool = False
    gpus_asked: bool = False  # --gpus-per-node, --gpus-per-task or --gres=gpu asked: steps get the GPUs

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
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**fields)

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


@dataclass(frozen=True)
class Shape:
    """``-N``, ``-n`` and ``--ntasks-per-node`` after srun's checks (None: not given)."""

    nnodes: int | None
    ntasks: int | None
    per_node: int | None
    names: tuple[str, ...] | None  # -w/--nodelist


def shape(values: dict[str, Value], prog: str, warn: bool = True) -> Shape:
    """srun's ``_opt_verify`` (sbatch's is the same for these options): defaults and warnings."""
    nnodes = node_count(values)
    ntasks = _positive(values, "ntasks")
    per_node = _positive(values, "ntasks_per_node")
    names = None
    if "nodelist" in values:
        names = list(dict.fromkeys(hosts.expand(str(values["nodelist"].value))))
        nnodes = max(len(names), nnodes or 0)
    if nnodes is not None and ntasks is None:
        ntasks = nnodes * (per_node or 1)  # one task per node (or --ntasks-per-node of them)
    elif nnodes is not None and ntasks is not None:
        if ntasks < nnodes:
            if warn:
                print(f"{prog}: Warning: can't run {ntasks} processes on {nnodes} nodes, setting nnodes to {ntasks}",
                      file=sys.stderr)
            nnodes = ntasks
            names = names[:ntasks] if names else None
        if per_node is not None and per_node != ntasks // nnodes and prog == "srun":  # sbatch leaves it to slurmctld
            if ntasks > per_node and warn:
                print(f"{prog}: Warning: can't honor --ntasks-per-node set to {per_node} which doesn't match the "
                      f"requested tasks {ntasks} with the number of requested nodes {nnodes}. Ignoring "
                      f"--ntasks-per-node.", file=sys.stderr)
            per_node = None
    if per_node is not None and ntasks is None:
        ntasks = (nnodes or 1) * per_node
    return Shape(nnodes, ntasks, per_node, tuple(names) if names else None)


def allocate(values: dict[str, Value], job_id: int, submit_dir: str, default_name: str,
             prog: str = "srun") -> Allocation:
    """Grant the allocation a request asks for, as slurmctld with cons_tres would, or refuse it (:class:`SlurmError`)."""
    s = shape(values, prog)
    unavailable = UNAVAILABLE[prog]
    cpt = _positive(values, "cpus_per_task") or 1
    gpn = gpu_count(values, "gpus_per_node") or gpu_count(values, "gres")
    gpt = gpu_count(values, "gpus_per_task")
    exclusive = bool(_v(values, "exclusive"))
    dist = Distribution.parse(str(_v(values, "distribution", "*")), os.environ.get("SLURM_DIST_PLANESIZE"))
    if cpt > hosts.CPUS_PER_NODE:
        raise SlurmError(f"CPU count per node can not be satisfied; {unavailable} (-c {cpt} > the "
                         f"{hosts.CPUS_PER_NODE} CPUs of a node; ask for fewer CPUs per task)")
    if (gpn or 0) > hosts.GPUS_PER_NODE or (gpt or 0) > hosts.GPUS_PER_NODE:
        raise SlurmError(f"{unavailable} (a node has {hosts.GPUS_PER_NODE} GPUs; ask for "
                         f"--gpus-per-node={hosts.GPUS_PER_NODE} or fewer)")
    # each node's room, in tasks: its CPUs / -c (and its GPUs / --gpus-per-task)
    room = hosts.CPUS_PER_NODE // cpt
    if gpt:
        room = min(room, hosts.GPUS_PER_NODE // gpt)
    ntasks = s.ntasks or 1
    nnodes = s.nnodes or (math.ceil(ntasks / s.per_node) if s.per_node else math.ceil(ntasks / room))
    if nnodes > ntasks and s.nnodes is None:
        nnodes = ntasks
    names = list(s.names or hosts.simulated_names(nnodes))
    if s.per_node is not None:
        if s.per_node > room or ntasks > nnodes * s.per_node:
            raise SlurmError(f"{unavailable} ({ntasks} tasks, {s.per_node} per node on {nnodes} nodes of "
                             f"{hosts.CPUS_PER_NODE} CPUs; ask for --nodes={math.ceil(ntasks / s.per_node)})")
        counts = [s.per_node] * nnodes
    elif exclusive:  # whole nodes: the tasks are spread as the step layout spreads them
        counts = count_tasks(ntasks, [room] * nnodes, dist.resolve(ntasks, nnodes))
    else:  # shared nodes: cons_tres packs the first node, leaving one task for each later node
        counts, left = [], ntasks
        for i in range(nnodes):
            take = min(room, left - (nnodes - i - 1))
            counts.append(max(take, 0))
            left -= counts[-1]
    if sum(counts) < ntasks or min(counts) < 1:
        raise SlurmError(f"{unavailable} ({ntasks} tasks x {cpt} CPUs do not fit on {nnodes} nodes of "
                         f"{hosts.CPUS_PER_NODE} CPUs; ask for more --nodes)")
    cpus = [hosts.CPUS_PER_NODE if exclusive else c * cpt for c in counts]
    asked = gpn is not None or gpt is not None
    gpus = [hosts.GPUS_PER_NODE if exclusive else gpn if gpn is not None else (gpt or 0) * c for c in counts]
    return Allocation(
        job_id=job_id, job_name=str(_v(values, "job_name", default_name)), nodes=tuple(names),
        tasks_per_node=tuple(counts), cpus_per_node=tuple(cpus), gpus_per_node=tuple(gpus),
        ntasks=ntasks if ("ntasks" in values or s.per_node) else None, ntasks_per_node=s.per_node,
        cpus_per_task=_v(values, "cpus_per_task"), gpus_per_task=gpt,
        gpus_per_node_opt=str(values["gpus_per_node"].value) if "gpus_per_node" in values else None,
        distribution=str(values["distribution"].value) if "distribution" in values else None,
        submit_dir=submit_dir, submit_host=hosts.submit_host(), exclusive=exclusive, gpus_asked=asked,
    )


@dataclass(frozen=True)
class Step:
    """One ``srun`` inside an allocation: its id, its task layout, and what it asked for."""

    alloc: Allocation
    step_id: int
    layout: TaskLayout
    cpus_per_task: int | None  # srun's own -c (command line or SRUN_CPUS_PER_TASK)
    ntasks_per_node: int | None
    gpus_per_task: int | None
    distribution_given: bool  # -m given (or SLURM_DISTRIBUTION read): exported as SLURM_DISTRIBUTION
    standalone: bool = False  # srun created the job itself (not a step of sbatch's job)
    exact: bool = False  # the step holds only tasks x -c CPUs on a node (-c or --exclusive given)
    gpus: tuple[int, ...] = ()  # GPUs of the step on each of its nodes

    def cpus_on_node(self, node: int) -> int:
        """``SLURM_CPUS_ON_NODE``: a standalone srun's (or an exact step's) tasks x -c, else the job's CPUs there."""
        if self.standalone or self.exact:
            return self.layout.counts[node] * (self.cpus_per_task or 1)
        return self.alloc.cpus_per_node[self.alloc.nodes.index(self.layout.nodes[node])]

    def gpus_on_node(self, node: int) -> int:
        return self.gpus[node] if self.gpus else 0


def plan_step(alloc: Allocation, values: dict[str, Value], step_id: int, *, standalone: bool = False) -> Step:
    """Lay a step out inside ``alloc``; ``values`` are srun's options (command line over inherited SLURM_*)."""
    s = shape(values, "srun", warn=not standalone)  # a standalone srun warned while allocating
    cpt = _positive(values, "cpus_per_task")
    gpt = gpu_count(values, "gpus_per_task")
    gpn = gpu_count(values, "gpus_per_node") or gpu_count(values, "gres")
    dist = Distribution.parse(str(_v(values, "distribution", "*")), os.environ.get("SLURM_DIST_PLANESIZE"))
    nnodes = s.nnodes or len(alloc.nodes)
    if nnodes > len(alloc.nodes):
        raise SlurmError(f"Only allocated {len(alloc.nodes)} nodes asked for {nnodes} (the job holds "
                         f"{alloc.nodelist}; ask sbatch for more nodes or use --nodes={len(alloc.nodes)})")
    names = list(s.names) if s.names else list(alloc.nodes[:nnodes])
    outside = [n for n in names if n not in alloc.nodes]
    if outside:
        raise SlurmError(f"Unable to create step for job {alloc.job_id}: Requested node configuration is not "
                         f"available ({','.join(outside)} is not in the job's {alloc.nodelist})")
    ntasks = s.ntasks or nnodes
    where = [alloc.nodes.index(n) for n in names]
    slots = [alloc.cpus_per_node[i] // (cpt or 1) for i in where]
    if s.per_node:
        slots = [min(x, s.per_node) for x in slots]
    if ntasks > sum(slots) or min(slots) < 1:
        raise SlurmError(f"Unable to create step for job {alloc.job_id}: More processors requested than permitted "
                         f"({ntasks} tasks x {cpt or 1} CPUs; the job holds SLURM_JOB_CPUS_PER_NODE="
                         f"{compress_counts(alloc.cpus_per_node)}: lower -n/-c or ask sbatch for more)")
    layout = step_layout(names, ntasks, slots, dist)
    if gpt:
        gpus = tuple(c * gpt for c in layout.counts)
    elif gpn is not None:
        gpus = tuple(gpn for _ in names)
    else:
        gpus = tuple(alloc.gpus_per_node[i] if alloc.gpus_asked else 0 for i in where)
    return Step(alloc, step_id, layout, cpt, s.per_node, gpt, "distribution" in values or not standalone,
                standalone=standalone, exact=cpt is not None or bool(_v(values, "exclusive")), gpus=gpus)


def default_job_name(command: list[str]) -> str:
    """srun names a job after its command (``python``); sbatch after the script file."""
    return os.path.basename(command[0]) if command else "sbatch"
