"""Ring collectives as algorithms: what each rank sends to its neighbour, step by step.

The ranks stand in a ring: rank r sends only to ``next = (r + 1) % p`` and
receives only from ``prev = (r - 1) % p``. That one pattern gives every
collective ZeRO needs (Patarasuk & Yuan, "Bandwidth optimal all-reduce
algorithms for clusters of workstations", 2009; NCCL's ring algorithm):

* **reduce-scatter** - the data is cut into p chunks. In step s (0..p-2) rank r
  sends its running sum of chunk ``(r - s - 1) % p`` and adds what it receives
  to chunk ``(r - s - 2) % p``. After p-1 steps rank r holds the full sum of
  chunk r. Each rank sent (p-1)/p of the data.
* **all-gather** - rank r starts with chunk r; in step s it forwards chunk
  ``(r - s) % p`` and receives chunk ``(r - s - 1) % p``. After p-1 steps every
  rank has every chunk. Again (p-1)/p of the data per rank.
* **all-reduce** = reduce-scatter + all-gather: 2 (p-1)/p of the data per rank,
  which is why the ZeRO paper counts a data-parallel step as 2 psi.
* **broadcast** - the root's data travels once round the ring (p-1 hops).

The algorithm never touches a socket. It talks to a :class:`Channel` (anything
with ``send(bytes)`` to the next rank and ``recv() -> bytes`` from the previous
one; :mod:`clusterlab.zero.transport` supplies the TCP one), and a :class:`Ring`
counts every byte it sends as *intra-node* (the next rank is on the same node)
or *inter-node* (it is not) - the split that decides cross-node cost.

Sums are done in the dtype of the data (fp16 for gradients, as on the wire).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Channel(Protocol):
    """The wire seen from one rank: bytes to the next rank, bytes from the previous one."""

    def send(self, payload: bytes) -> None: ...

    def recv(self) -> bytes: ...


@dataclass
class Traffic:
    """Payload bytes this rank has sent, split by where the next rank lives."""

    intra: int = 0
    inter: int = 0

    @property
    def total(self) -> int:
        return self.intra + self.inter

    def minus(self, earlier: "Traffic") -> "Traffic":
        return Traffic(self.intra - earlier.intra, self.inter - earlier.inter)

    def copy(self) -> "Traffic":
        return Traffic(self.intra, self.inter)


class Ring:
    """One rank's place on the ring: its rank, the world size, its channel and its byte counters."""

    def __init__(self, rank: int, world_size: int, channel: Channel, next_on_same_node: bool) -> None:
        self.rank = rank
        self.world_size = world_size
        self.channel = channel
        self.next_on_same_node = next_on_same_node
        self.traffic = Traffic()

    def send(self, array: np.ndarray) -> None:
        payload = np.ascontiguousarray(array).tobytes()
        if self.next_on_same_node:
            self.traffic.intra += len(payload)
        else:
            self.traffic.inter += len(payload)
        self.channel.send(payload)

    def recv(self, like: np.ndarray) -> np.ndarray:
        """Receive an array with the dtype and size of ``like``; a size mismatch is a protocol bug."""
        payload = self.channel.recv()
        if len(payload) != like.nbytes:
            raise RuntimeError(
                f"rank {self.rank}: expected {like.nbytes} bytes from rank {(self.rank - 1) % self.world_size}, "
                f"got {len(payload)}: the ranks disagree on the collective or its size"
            )
        return np.frombuffer(payload, dtype=like.dtype).reshape(like.shape)


def _check_chunks(ring: Ring, chunks: Sequence[np.ndarray]) -> None:
    if len(chunks) != ring.world_size:
        raise ValueError(f"need one chunk per rank: got {len(chunks)} chunks for world size {ring.world_size}")


def reduce_scatter(ring: Ring, chunks: Sequence[np.ndarray]) -> np.ndarray:
    """Sum chunk i over all ranks and leave the result on rank i; returns this rank's summed chunk."""
    _check_chunks(ring, chunks)
    p, r = ring.world_size, ring.rank
    acc = [np.array(c, copy=True) for c in chunks]  # running partial sums; inputs stay untouched
    for s in range(p - 1):
        ring.send(acc[(r - s - 1) % p])
        i = (r - s - 2) % p
        acc[i] = acc[i] + ring.recv(acc[i])  # the sum stays in the data's dtype (fp16 on the wire)
    return acc[r]


def all_gather(ring: Ring, chunk: np.ndarray) -> list[np.ndarray]:
    """Every rank contributes ``chunk``; every rank gets the list of all chunks in rank order.

    All chunks must have the same size and dtype (ZeRO pads partitions so they do).
    """
    p, r = ring.world_size, ring.rank
    out: list[np.ndarray | None] = [None] * p
    out[r] = np.array(chunk, copy=True)
    for s in range(p - 1):
        ring.send(out[(r - s) % p])  # type: ignore[arg-type]  # (filled: the ring has just sent it round)
        out[(r - s - 1) % p] = ring.recv(chunk).copy()
    return out  # type: ignore[return-value]


def all_reduce(ring: Ring, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Every rank gets the sum of every chunk: reduce-scatter, then all-gather."""
    return all_gather(ring, reduce_scatter(ring, chunks))


def broadcast(ring: Ring, array: np.ndarray, root: int = 0) -> np.ndarray:
    """Send ``root``'s ``array`` round the ring; every rank passes ``array`` of the right shape/dtype."""
    p, r = ring.world_size, ring.rank
    if not 0 <= root < p:
        raise ValueError(f"root={root} is outside 0..{p - 1}")
    if r == root:
        data = np.array(array, copy=True)
    else:
        data = ring.recv(array).copy()
    if (r + 1) % p != root:  # the rank before the root ends the chain
        ring.send(data)
    return data
