"""The master's view of the job: collective rounds, failures, restarts, the end.

Node 0's agent runs one :class:`Coordinator` beside its own workers. Every agent
(node 0's too, without a socket in between) reports to it, and it answers by
sending messages to nodes:

============  ==================================  ======================================
from a node   meaning                             the coordinator's answer
============  ==================================  ======================================
``arrive``    a node's ranks entered rounds        ``result`` to the nodes of the round
``exited``    a worker exited 0                   ``result`` errors for rounds it left open
``failed``    a worker exited non-zero / signal    ``restart`` to all, or ``stop`` + summary
``done``      all of a node's workers exited 0     ``finish`` to all, once every node is done
``stopped``   a node stopped for a restart         ``start`` to all, once every node stopped
``abort``     an agent was interrupted             ``stop`` to all
============  ==================================  ======================================

A lost agent (closed connection, missed heartbeats) is a failure like a crashed
worker. What a barrier round decides lives in :mod:`clusterlab.barrier`; how each
message is spelled, in :mod:`clusterlab.protocol`; this module only routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from . import protocol
from .barrier import GatherTable, Outcome
from .layout import ClusterLayout
from .output import log
from .procs import describe_exit
from .wire import MAX_FRAME, dumps


class Coordinator:
    """The job's state on the master.

    ``send(nodes, message)`` delivers a message to those nodes' agents, in the order given.
    Round deadlines are on the monotonic clock: a jump of the wall clock moves none of them.
    """

    def __init__(self, layout: ClusterLayout, max_restarts: int, send: Callable[[Iterable[int], dict], None]) -> None:
        self.layout, self.max_restarts, self.send = layout, max_restarts, send
        self.attempt = 0
        self.table = GatherTable(layout)
        self._ranks_on = [layout.ranks_on(node) for node in range(layout.nnodes)]
        self.ending = False  # a stop or finish was sent
        self._done: set[int] = set()
        self._stopped: set[int] = set()

    def broadcast(self, msg: dict) -> None:
        self.send(range(self.layout.nnodes), msg)

    def handle(self, node: int, msg: dict) -> None:
        """One message from ``node``'s agent; one with malformed fields stops the job."""
        try:
            kind = msg.get("t")
            if kind == "hb":
                return
            if kind == "abort":
                self.fail(str(msg.get("reason", f"node{node} aborted")), code=int(msg.get("code", 1)))
                return
            if msg.get("attempt") != self.attempt or self.ending:
                return  # stale news from an earlier attempt, or the job is already ending
            if kind == "arrive":
                now, arrivals = time.monotonic(), protocol.parse_arrive(msg, self._ranks_on[node])
                if isinstance(arrivals, tuple):  # the node's ranks entered the same barrier
                    ranks, (seq, name, timeout, _) = arrivals
                    outcomes = self.table.arrive_ranks(ranks, seq, name, timeout, now)
                else:
                    outcomes = [o for rank, r in arrivals if (o := self.table.arrive(rank, *r, now))]
                for outcome in outcomes:
                    self._dispatch(outcome)
            elif kind == "exited":
                rank = msg["rank"]
                if rank not in self.layout.ranks_on(node):
                    raise ValueError(f"rank {rank!r} does not run on node{node}")
                for outcome in self.table.leave(rank):
                    self._dispatch(outcome)
            elif kind == "failed":
                self._on_failure(msg)
            elif kind == "done":
                self._done.add(node)
                if len(self._done) == self.layout.nnodes:
                    self.ending = True
                    self.broadcast(protocol.FINISH)
            elif kind == "stopped":
                self._stopped.add(node)
                if len(self._stopped) == self.layout.nnodes:
                    self.broadcast(protocol.start(self.attempt))
        except protocol.MALFORMED as exc:  # a peer passed the hello, then sent nonsense: stop, do not crash
            self.fail(f"node{node} sent a malformed {str(msg.get('t'))[:20]!r} message "
                      f"({type(exc).__name__}: {str(exc)[:100]}); stopping the job")

    def next_deadline(self) -> float:
        """When the next collective round times out (monotonic seconds; ``inf`` if none is pending)."""
        return self.table.next_deadline()

    def expire(self, now: float) -> None:
        """Fail the collective rounds whose timeout has passed (``now``: monotonic)."""
        for outcome in self.table.expire(now):
            self._dispatch(outcome)

    def _dispatch(self, outcome: Outcome) -> None:
        if outcome.error is None and self.layout.nnodes > 1 and outcome.data.count(None) < len(outcome.data):
            size = len(dumps(outcome.data))
            if size > MAX_FRAME - 4096:  # the result frame could not be sent: fail the call, not the agent
                outcome = Outcome(outcome.seq, outcome.ranks, error=(
                    f"the result of collective call #{outcome.seq} is {size} bytes as JSON, over the "
                    f"{MAX_FRAME}-byte frame limit between agents; gather less data per call"))
        if outcome.error is not None:
            msg = protocol.result(self.attempt, outcome.seq, error=outcome.error, ranks=outcome.ranks)
            nodes: Iterable[int] = sorted({self.layout.locate(r)[0] for r in outcome.ranks}, reverse=True)
        else:
            msg = protocol.result(self.attempt, outcome.seq, data=outcome.data)
            nodes = range(self.layout.nnodes - 1, -1, -1)
        # the other nodes first: node 0 (this agent) answers its own workers once the messages to the
        # others are on their way, so its ranks do not take the CPUs ahead of them
        self.send(nodes, msg)

    def _on_failure(self, msg: dict) -> None:
        if self.attempt < self.max_restarts:
            self.attempt += 1
            log(f"rank {msg['rank']} on node{msg['node']} failed ({describe_exit(msg['returncode'])}); "
                f"restarting the whole world, attempt {self.attempt} of {self.max_restarts}")
            self.table = GatherTable(self.layout)
            self._done.clear()
            self._stopped.clear()
            self.broadcast(protocol.restart(self.attempt))
        else:
            self.fail(self.summary(msg))

    def fail(self, summary: str, code: int = 1) -> None:
        """Stop every node, once; each agent prints ``summary`` where it prints summaries."""
        if self.ending:
            return
        self.ending = True
        self.broadcast(protocol.stop(code, summary))

    def summary(self, f: dict) -> str:
        """torchrun's "root cause (first observed failure)" report, for the first failed worker."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["time"]))
        lines = [
            "=" * 64,
            f"job failed after {self.attempt + 1} attempt(s); root cause (first observed failure):",
            f"  time      : {when}",
            f"  node      : node{f['node']} ({f['host']})",
            f"  rank      : {f['rank']} (local_rank {f['local_rank']})",
            f"  pid       : {f['pid']}",
            f"  exit      : {describe_exit(f['returncode'])}",
        ]
        if f.get("tail"):
            lines.append(f"  stderr    : last {len(f['tail'])} line(s) of rank {f['rank']}:")
            lines += [f"    {line}" for line in f["tail"]]
        else:
            lines.append("  stderr    : (empty)")
        lines.append("every worker on every node was stopped")
        lines.append("=" * 64)
        return "\n".join(lines)
