"""Rank mapping: where every rank of a multi-node job lives.

A job has ``nnodes`` machines and starts ``nproc_per_node`` worker processes on
each (one per GPU on a real cluster). Every worker has three numbers:

* ``node_rank`` - which machine it runs on (torchrun's ``GROUP_RANK``),
* ``local_rank`` - its index among the workers of that machine (``LOCAL_RANK``),
* ``global_rank`` - its index in the whole job (``RANK``).

torchrun numbers the workers node by node, so::

    global_rank = node_rank * nproc_per_node + local_rank
    node_rank, local_rank = divmod(global_rank, nproc_per_node)

For 2 nodes x 4 processes: node 0 holds ranks 0-3, node 1 holds ranks 4-7.
:class:`ClusterLayout` is that whole picture as one immutable value (a named
tuple: every launcher process builds one, and a dataclass would cost each of
them ~15 ms of imports).
"""

from __future__ import annotations

from collections import namedtuple

from .errors import UsageError


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name}={value!r} is not a whole number; use a positive integer such as 2")
    if value < 1:
        raise UsageError(f"{name}={value} must be at least 1")


class ClusterLayout(namedtuple("ClusterLayout", "nnodes nproc_per_node")):
    """``nnodes`` machines with ``nproc_per_node`` workers each, ranked node by node."""

    __slots__ = ()

    def __new__(cls, nnodes: int, nproc_per_node: int) -> "ClusterLayout":
        _check_count("nnodes", nnodes)
        _check_count("nproc_per_node", nproc_per_node)
        return super().__new__(cls, nnodes, nproc_per_node)

    @classmethod
    def from_world_size(cls, world_size: int, nproc_per_node: int) -> "ClusterLayout":
        """The layout that fits ``world_size`` ranks, ``nproc_per_node`` to a node."""
        _check_count("world_size", world_size)
        _check_count("nproc_per_node", nproc_per_node)
        if world_size % nproc_per_node:
            raise UsageError(
                f"world_size={world_size} is not divisible by nproc_per_node={nproc_per_node}; "
                f"every node runs the same number of workers, so use a multiple of {nproc_per_node}"
            )
        return cls(world_size // nproc_per_node, nproc_per_node)

    @property
    def world_size(self) -> int:
        """Total number of workers in the job (torchrun's ``WORLD_SIZE``)."""
        return self.nnodes * self.nproc_per_node

    def check_node_rank(self, node_rank: int) -> None:
        if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < self.nnodes:
            raise UsageError(
                f"node_rank={node_rank!r} is outside 0..{self.nnodes - 1} for nnodes={self.nnodes}"
            )

    def check_local_rank(self, local_rank: int) -> None:
        if (
            isinstance(local_rank, bool)
            or not isinstance(local_rank, int)
            or not 0 <= local_rank < self.nproc_per_node
        ):
            raise UsageError(
                f"local_rank={local_rank!r} is outside 0..{self.nproc_per_node - 1} "
                f"for nproc_per_node={self.nproc_per_node}"
            )

    def global_rank(self, node_rank: int, local_rank: int) -> int:
        """``node_rank * nproc_per_node + local_rank``."""
        self.check_node_rank(node_rank)
        self.check_local_rank(local_rank)
        return node_rank * self.nproc_per_node + local_rank

    def locate(self, global_rank: int) -> tuple[int, int]:
        """The inverse: ``(node_rank, local_rank)`` of a global rank."""
        if (
            isinstance(global_rank, bool)
            or not isinstance(global_rank, int)
            or not 0 <= global_rank < self.world_size
        ):
            raise UsageError(
                f"global_rank={global_rank!r} is outside 0..{self.world_size - 1} "
                f"for world_size={self.world_size}"
            )
        return divmod(global_rank, self.nproc_per_node)

    def ranks_on(self, node_rank: int) -> range:
        """The global ranks that run on ``node_rank``."""
        self.check_node_rank(node_rank)
        start = node_rank * self.nproc_per_node
        return range(start, start + self.nproc_per_node)

    def table(self) -> list[tuple[int, int, int]]:
        """Every worker as ``(node_rank, local_rank, global_rank)``, in rank order."""
        return [(*self.locate(g), g) for g in range(self.world_size)]

    def __str__(self) -> str:
        return f"{self.nnodes} node(s) x {self.nproc_per_node} process(es) = world size {self.world_size}"


def format_ranks(ranks) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: compact lists of ranks for messages."""
    ranks = sorted(set(ranks))
    parts: list[str] = []
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        parts.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(parts)
