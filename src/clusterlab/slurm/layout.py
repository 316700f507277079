"""Task layout: which Slurm task (``SLURM_PROCID``) runs on which node, with which ``SLURM_LOCALID``.

Slurm lays a step's tasks out in two moves (``src/common/slurm_step_layout.c``),
within the CPUs the *job* holds on each node (:mod:`clusterlab.slurm.job`):

1. **How many tasks per node.** Slurm walks the nodes round-robin, one task per
   node per round, skipping a node once its CPUs (divided by
   ``--cpus-per-task``) are used up; only when every node is full does it
   overcommit. So 10 tasks on 4 whole nodes (``--exclusive``) are counted 3, 3, 2, 2
   (``SLURM_TASKS_PER_NODE=3(x2),2(x2)``) whatever the distribution; on shared
   nodes the job itself holds 7, 1, 1, 1 CPUs, and so the step is 7, 1, 1, 1. The plane
   distribution counts in blocks instead: ``plane=4`` puts 4 tasks on a node
   before moving on (after one task on every node), so 21 tasks on 4 nodes are
   counted 8, 5, 4, 4.
2. **Which task ids go there** (``-m/--distribution``):

   * ``block`` - consecutive ids share a node: ``0 1 2 | 3 4 5 | 6 7 | 8 9``.
   * ``cyclic`` - ids go round-robin: ``0 4 8 | 1 5 9 | 2 6 | 3 7``.
   * ``plane=S`` - blocks of S ids round-robin: ``0-3,16-19 | 4-7,20 | 8-11 | 12-15``.

   The default (srun man page, ``-m``): block if there are more tasks than
   nodes, cyclic otherwise (with at most one task per node the two agree).

A task's ``SLURM_LOCALID`` is its position on its node: local ids are dense
(0, 1, 2, ... per node), in the order the ids were placed. Note what that means
for ``cyclic``: task 4 is local id 1 on node 0, so ``rank // tasks_per_node``
is *not* the node index, unlike torchrun's numbering.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

BLOCK, CYCLIC, PLANE = "block", "cyclic", "plane"


@dataclass(frozen=True)
class Distribution:
    """``-m/--distribution``: ``block``, ``cyclic`` or ``plane`` with its ``plane_size``."""

    kind: str
    plane_size: int = 0

    @classmethod
    def parse(cls, text: str, plane_size_env: str | None = None) -> "Distribution":
        """Read ``block``, ``cyclic``, ``plane=4`` (or ``plane`` with ``SLURM_DIST_PLANESIZE``).

        Only the first level (tasks to nodes) matters here: ``block:cyclic`` and
        ``cyclic:block,Pack`` are read as ``block`` and ``cyclic``; ``*`` is the default.
        """
        raw = text
        first = text.strip().split(":")[0].split(",")[0].strip().lower()
        if first in (BLOCK, CYCLIC):
            return cls(first)
        if first == "*":
            return cls("default")
        if first.startswith(PLANE):
            size = first[len(PLANE):].lstrip("=") or (plane_size_env or "")
            if not size.isdigit() or int(size) < 1:
                raise UsageError(
                    f"--distribution={raw!r}: the plane size must be a positive whole number, "
                    f"e.g. --distribution=plane=4"
                )
            return cls(PLANE, int(size))
        raise UsageError(
            f"--distribution={raw!r} is not simulated; use block, cyclic or plane=SIZE (e.g. -m cyclic)"
        )

    def resolve(self, ntasks: int, nnodes: int) -> "Distribution":
        """The distribution actually used: Slurm's default is block if tasks > nodes, else cyclic."""
        if self.kind != "default":
            return self
        return Distribution(BLOCK if ntasks > nnodes else CYCLIC)

    def __str__(self) -> str:
        return f"plane={self.plane_size}" if self.kind == PLANE else self.kind


DEFAULT = Distribution("default")


@dataclass(frozen=True)
class TaskLayout:
    """A step's tasks on its nodes: ``task_ids[i]`` are the ids on ``nodes[i]``, in local-id order."""

    nodes: tuple[str, ...]
    task_ids: tuple[tuple[int, ...], ...]
    distribution: Distribution

    @property
    def ntasks(self) -> int:
        return sum(len(ids) for ids in self.task_ids)

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    @property
    def counts(self) -> tuple[int, ...]:
        """Tasks on each node, in node order (what ``SLURM_TASKS_PER_NODE`` compresses)."""
        return tuple(len(ids) for ids in self.task_ids)

    def locate(self, task_id: int) -> tuple[int, int]:
        """``(node index, local id)`` of a task: its ``SLURM_NODEID`` and ``SLURM_LOCALID``."""
        for node, ids in enumerate(self.task_ids):
            if task_id in ids:
                return node, ids.index(task_id)
        raise UsageError(f"task {task_id!r} is not in this step (tasks 0..{self.ntasks - 1})")

    def table(self) -> list[tuple[int, str, int, int]]:
        """Every task as ``(task id, node name, node index, local id)``, in task order."""
        rows = [(t, self.nodes[n], n, local) for n, ids in enumerate(self.task_ids) for local, t in enumerate(ids)]
        return sorted(rows)

    def __str__(self) -> str:
        parts = [f"{name}: {_ranges(ids)}" for name, ids in zip(self.nodes, self.task_ids)]
        return f"{self.ntasks} tasks on {self.nnodes} nodes ({self.distribution}): " + "; ".join(parts)


def _ranges(ids) -> str:
    from ..layout import format_ranks

    return format_ranks(ids) if ids else "-"


def count_tasks(ntasks: int, slots: list[int], dist: Distribution) -> list[int]:
    """How many of ``ntasks`` tasks go on each node, given each node's task ``slots`` (CPUs / -c).

    Slurm's counting pass: round-robin one task per node per round while a node
    has free slots, overcommitting evenly only once every node is full. The plane
    distribution places one task on every node first, then fills each node in
    blocks of ``plane_size``.
    """
    counts = [0] * len(slots)
    placed, over = 0, False
    if dist.kind == PLANE:
        for i in range(len(slots)):  # one task on every node first
            if placed < ntasks:
                counts[i] += 1
                placed += 1
        first_round = True
        while placed < ntasks:
            room = False
            for i in range(len(slots)):
                for _ in range(1 if first_round else 0, dist.plane_size):
                    if placed >= ntasks:
                        break
                    if counts[i] < slots[i] or over:
                        counts[i] += 1
                        placed += 1
                        room = room or counts[i] < slots[i]
            first_round = False
            over = over or not room
        return counts
    order = _round_robin(ntasks, slots)
    return [order.count(i) for i in range(len(slots))]


def _round_robin(ntasks: int, slots: list[int]) -> list[int]:
    """The node index of each task, in placement order, for Slurm's block/cyclic counting pass.

    Round ``j`` gives a task to every node with more than ``j`` slots; once a round
    finds no node with room left, every node takes one per round (overcommit).
    """
    order: list[int] = []
    cycle, over = 0, False
    while len(order) < ntasks:
        room = False
        for i, s in enumerate(slots):
            if len(order) >= ntasks:
                break
            if cycle < s or over:
                order.append(i)
                room = room or cycle + 1 < s
        over = over or not room
        cycle += 1
    return order


def assign_ids(counts: list[int], dist: Distribution, slots: list[int] | None = None) -> list[list[int]]:
    """Give task ids to the per-node ``counts``: consecutive (block), round-robin (cyclic), or in planes.

    Cyclic ids follow the counting pass itself (``slots`` as given to :func:`count_tasks`),
    so on uneven nodes a full node is skipped exactly where Slurm skips it.
    """
    ids: list[list[int]] = [[] for _ in counts]
    total = sum(counts)
    if dist.kind == BLOCK:
        task = 0
        for i, c in enumerate(counts):
            ids[i] = list(range(task, task + c))
            task += c
        return ids
    if dist.kind == CYCLIC:
        for task, node in enumerate(_round_robin(total, slots or counts)):
            ids[node].append(task)
        return ids
    step = dist.plane_size
    task = 0
    while task < total:
        for i, c in enumerate(counts):
            take = min(step, c - len(ids[i]), total - task)
            if take > 0:
                ids[i] += range(task, task + take)
                task += take
    return ids


def step_layout(nodes: list[str], ntasks: int, slots: list[int] | None = None,
                distribution: Distribution = DEFAULT) -> TaskLayout:
    """Lay ``ntasks`` tasks out on ``nodes``, as Slurm's step layout does.

    ``slots`` is each node's room in tasks (its CPUs divided by ``--cpus-per-task``);
    by default every node has room for all tasks, so counts come out balanced.
    """
    if isinstance(ntasks, bool) or not isinstance(ntasks, int) or ntasks < 1:
        raise UsageError(f"--ntasks={ntasks!r} must be a whole number of at least 1")
    if not nodes:
        raise UsageError("a step needs at least one node; give --nodes=1 or more")
    if ntasks < len(nodes):
        raise UsageError(
            f"can't run {ntasks} tasks on {len(nodes)} nodes: every node of a step runs at least "
            f"one task; use --nodes={ntasks} or --ntasks={len(nodes)}"
        )
    slots = [max(1, s) for s in (slots or [ntasks] * len(nodes))]
    dist = distribution.resolve(ntasks, len(nodes))
    counts = count_tasks(ntasks, slots, dist)
    ids = assign_ids(counts, dist, slots)
    return TaskLayout(tuple(nodes), tuple(tuple(x) for x in ids), dist)


def compress_counts(counts) -> str:
    """``[3, 3, 2, 2]`` -> ``"3(x2),2(x2)"``, the format of ``SLURM_TASKS_PER_NODE``."""
    parts: list[str] = []
    counts = list(counts)
    i = 0
    while i < len(counts):
        j = i
        while j + 1 < len(counts) and counts[j + 1] == counts[i]:
            j += 1
        reps = j - i + 1
        parts.append(f"{counts[i]}(x{reps})" if reps > 1 else str(counts[i]))
        i = j + 1
    return ",".join(parts)


def expand_counts(text: str) -> list[int]:
    """``"3(x2),2"`` -> ``[3, 3, 2]``: read ``SLURM_TASKS_PER_NODE`` / ``SLURM_JOB_CPUS_PER_NODE``."""
    counts: list[int] = []
    for part in text.split(","):
        count, _, rep = part.strip().partition("(x")
        if not count.isdigit() or (rep and not (rep.endswith(")") and rep[:-1].isdigit())):
            raise UsageError(f"{text!r} is not in Slurm's compressed form, e.g. 3(x2),2(x2)")
        counts += [int(count)] * (int(rep[:-1]) if rep else 1)
    return counts
