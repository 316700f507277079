"""What a barrier *does*, apart from how the bytes travel.

A barrier is the simplest collective: every rank announces "I am here", and
nobody leaves until all ``world_size`` ranks have arrived. clusterlab treats it
as a gather of nothing: :func:`clusterlab.all_gather_object` and
:func:`clusterlab.barrier` are the same round, one carrying data and one not.

Rounds are numbered: a rank's k-th collective call belongs to round k. The
master agent keeps one :class:`GatherTable` and feeds it every arrival; the
table answers with an :class:`Outcome` when a round completes or fails:

* **release** - all ranks arrived with the same name: everyone leaves, carrying
  the gathered data in rank order;
* **mismatch** - two ranks reached round k under different names (say rank 0 is
  in ``barrier("epoch")`` while rank 5 is in ``barrier("eval")``). On a real
  cluster this is a silent hang or corrupted data; here it is an error naming
  both names and their ranks, raised at once;
* **timeout** - some ranks did not arrive within the timeout of the first rank
  that did: an error naming the ranks (and their nodes) that never came.

The table is pure logic: no sockets, no clocks of its own (``now`` is passed in:
the coordinator passes the monotonic clock).
"""

from __future__ import annotations

from collections import namedtuple

from .layout import ClusterLayout, format_ranks


class Outcome(namedtuple("Outcome", "seq ranks data error", defaults=(None, None))):
    """The result of one round, to deliver to ``ranks``: ``data`` (gathered, in rank
    order) on release, or ``error`` (the message every rank raises) on failure."""

    __slots__ = ()


class _Round:
    """One collective round in progress: who arrived, under which name, with what data."""

    __slots__ = ("data", "deadline", "error", "name", "names", "seq", "timeout")

    def __init__(self, seq: int, name: str, names: dict | None = None, data: dict | None = None) -> None:
        self.seq = seq
        self.name = name  # the first arrival's name: every other arrival must match it
        self.names: dict[int, str] = names if names is not None else {}
        self.data: dict[int, object] = data if data is not None else {}
        self.deadline = float("inf")
        self.timeout = 0.0
        self.error: str | None = None


def _label(name: str) -> str:
    return repr(name) if name else "<unnamed>"


class GatherTable:
    """Collects arrivals per round for one world and decides when rounds end."""

    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout
        self.world = layout.world_size
        self._everyone = tuple(range(self.world))
        self._rounds: dict[int, _Round] = {}
        self._gone: set[int] = set()  # ranks whose process ended: they will never arrive again

    def _where(self, ranks) -> str:
        by_node: dict[int, list[int]] = {}
        for r in sorted(ranks):
            by_node.setdefault(self.layout.locate(r)[0], []).append(r)
        return "; ".join(f"rank {format_ranks(rs)} on node{n}" for n, rs in by_node.items())

    def arrive(self, rank: int, seq: int, name: str, timeout: float, data: object, now: float) -> Outcome | None:
        """Record that ``rank`` entered round ``seq``; return the outcome if the round ends now."""
        rnd = self._rounds.get(seq)
        if rnd is None:
            rnd = self._rounds[seq] = _Round(seq, name)
        if rank in rnd.names:
            return Outcome(seq, (rank,), error=f"rank {rank} entered collective call #{seq} twice")
        rnd.names[rank] = name
        rnd.data[rank] = data
        if now + timeout < rnd.deadline:
            rnd.deadline, rnd.timeout = now + timeout, timeout
        if rnd.error is None:
            if name != rnd.name:
                groups: dict[str, list[int]] = {}
                for r, n in rnd.names.items():
                    groups.setdefault(n, []).append(r)
                parts = " but ".join(f"{self._where(rs)} reached {_label(n)}" for n, rs in groups.items())
                rnd.error = (
                    f"barrier name mismatch at collective call #{seq}: {parts}; "
                    "every rank must call the same barriers in the same order"
                )
                return self._finish(rnd, tuple(rnd.names))
        elif rnd.error is not None:
            return self._finish(rnd, (rank,))
        if len(rnd.names) == self.world:
            del self._rounds[seq]
            data = rnd.data
            return Outcome(seq, self._everyone, data=[data[r] for r in self._everyone])
        if self._gone and self._gone - rnd.names.keys():
            return self._abandon(rnd)
        return None

    def arrive_ranks(self, ranks: list[int], seq: int, name: str, timeout: float, now: float) -> list[Outcome]:
        """Every rank in ``ranks`` entered round ``seq`` as the same barrier (no data): :meth:`arrive`
        for each, as one block. The usual case - a round open under the same name, none of these
        ranks in it yet - is a few dictionary updates (the property test checks it against arrive)."""
        rnd = self._rounds.get(seq)
        if rnd is None and not self._gone:
            rnd = self._rounds[seq] = _Round(seq, name, dict.fromkeys(ranks, name), dict.fromkeys(ranks))
        elif rnd is not None and rnd.error is None and rnd.name == name and not self._gone \
                and rnd.names.keys().isdisjoint(ranks):
            rnd.names.update(dict.fromkeys(ranks, name))
            rnd.data.update(dict.fromkeys(ranks))
        else:
            return [o for o in (self.arrive(r, seq, name, timeout, None, now) for r in ranks) if o]
        if now + timeout < rnd.deadline:
            rnd.deadline, rnd.timeout = now + timeout, timeout
        if len(rnd.names) < self.world:
            return []
        del self._rounds[seq]
        return [Outcome(seq, self._everyone, data=[None] * self.world)]

    def leave(self, rank: int) -> list[Outcome]:
        """``rank``'s process ended normally: rounds it has not entered can never complete.

        Without this, the other ranks would wait for the full timeout (on a real
        cluster, NCCL's 10 minutes) for a rank that made one barrier call fewer.
        """
        self._gone.add(rank)
        return [self._abandon(rnd) for rnd in list(self._rounds.values())
                if rnd.error is None and rank not in rnd.names]

    def _abandon(self, rnd: _Round) -> Outcome:
        gone = sorted(self._gone - rnd.names.keys())
        names = sorted(set(rnd.names.values()))
        rnd.error = (
            f"barrier {', '.join(_label(n) for n in names)} (collective call #{rnd.seq}) can never complete: "
            f"{self._where(gone)} already exited without calling it; every rank must make the same collective calls"
        )
        return Outcome(rnd.seq, tuple(rnd.names), error=rnd.error)

    def _finish(self, rnd: _Round, ranks: tuple[int, ...]) -> Outcome:
        if len(rnd.names) == self.layout.world_size:
            self._rounds.pop(rnd.seq, None)
        return Outcome(rnd.seq, ranks, error=rnd.error)

    def next_deadline(self) -> float:
        """The earliest moment a pending round times out (``inf`` if none)."""
        if not self._rounds:  # (between barriers: the agents ask on every wake-up)
            return float("inf")
        return min((r.deadline for r in self._rounds.values() if r.error is None), default=float("inf"))

    def expire(self, now: float) -> list[Outcome]:
        """Fail every round whose deadline has passed; the error names who never arrived."""
        out = []
        for rnd in list(self._rounds.values()):
            if rnd.error is None and rnd.deadline <= now:
                missing = [r for r in range(self.layout.world_size) if r not in rnd.names]
                names = sorted(set(rnd.names.values()))
                rnd.error = (
                    f"barrier {', '.join(_label(n) for n in names)} (collective call #{rnd.seq}) timed out "
                    f"after {rnd.timeout:g}s: {self._where(missing)} never arrived "
                    f"({len(rnd.names)} of {self.layout.world_size} ranks did)"
                )
                out.append(Outcome(rnd.seq, tuple(rnd.names), error=rnd.error))
        return out
