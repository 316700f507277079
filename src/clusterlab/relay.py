"""A node's share of every collective call: hold its workers' arrivals, send them up, deliver results down.

This is the hierarchical part of clusterlab's barrier. Each agent runs one
:class:`NodeRelay` for its node's workers:

1. **Hold.** A worker's request line (:func:`clusterlab.protocol.parse_request`)
   is held until every local worker has arrived - or :data:`ARRIVAL_HOLD` has
   passed, so a slow local rank never hides who did arrive: the master's timeout
   errors name exactly the ranks that never came.
2. **Send up.** The node's share crosses to the master as ONE ``arrive`` message,
   however many workers the node has (on node 0 it goes straight to the
   coordinator, without a socket).
3. **Deliver.** When the master's ``result`` comes back, the reply line is spelled
   once and written to each worker of the node waiting in that round. After
   sending a barrier's arrivals, a node spells the release it awaits
   (:attr:`awaited`), so that the agent can recognise it without decoding it.

Requests are checked here, so that a broken worker gets an answer at once
instead of waiting out its timeout: a request line that is not one, a second
request from a rank still waiting, or one over :data:`MAX_REQUEST` bytes (the
part of a frame one rank's data may take) is answered with an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import protocol
from .wire import MAX_FRAME

TYPE_CHECKING = False  # mypy's spelling without importing typing, which costs every agent ~10 ms
if TYPE_CHECKING:
    from .workers import Worker, WorkerGroup

#: the longest a node agent holds its workers' arrivals before sending an incomplete set
ARRIVAL_HOLD = 0.005
#: the largest collective request one rank may send: an ``arrive`` frame carries at most two
MAX_REQUEST = MAX_FRAME // 2 - 4096


class NodeRelay:
    """One node's collective calls, between its workers' pipes and the master.

    ``group`` is the node's :class:`~clusterlab.workers.WorkerGroup`; ``send_up(message)``
    delivers a message to the coordinator on the master.
    """

    def __init__(self, group: WorkerGroup, send_up: Callable[[dict], None], master: bool) -> None:
        self.group, self.send_up, self.master = group, send_up, master
        self.world = group.cfg.layout.world_size
        self.attempt = 0
        self.hold_until = float("inf")  # when held arrivals go up even if the node is incomplete
        self._held: list[tuple[int, protocol.Request]] = []
        self._held_bytes = 0
        self._reader = protocol.RequestReader()
        self._in_round = 0  # local workers blocked in a collective call (their ``waiting`` is set)
        #: the frame of the release this node awaits after sending the master a barrier's arrivals,
        #: and the round's number and reply line
        self.awaited, self._release = b"", (-1, b"")

    def restart(self, attempt: int) -> None:
        """A new attempt: nothing of the last one is held any more."""
        self.attempt, self._held, self._held_bytes, self.hold_until = attempt, [], 0, float("inf")
        self._in_round = 0

    # ------------------------------------------------------------------ up: worker -> master
    def on_data(self, w: Worker, data: bytes) -> None:
        """Bytes from ``w``'s request pipe: whole lines are requests; an oversized one is refused whole."""
        buf = w.requests
        if not buf and data.find(b"\n") == len(data) - 1:  # the usual case: one whole line
            if not w.discarding:
                self._request(w, data)
            w.discarding = False
            return
        buf += data
        while True:
            end = buf.find(b"\n") + 1
            if not end:
                if len(buf) > MAX_REQUEST and not w.discarding:
                    w.discarding = True  # answer now, then skip the rest of that line
                    self._refuse(w, -1, f"the data of this collective call is over the {MAX_REQUEST}-byte "
                                        "limit of one rank's share; gather less data per call")
                if w.discarding:
                    del buf[:]
                return
            line = bytes(buf[:end])
            del buf[:end]
            if w.discarding:
                w.discarding = False
                continue
            self._request(w, line)

    def _request(self, w: Worker, line: bytes) -> None:
        if w.waiting is not None:  # not from clusterlab.channel, which waits for each answer
            self._refuse(w, -1, f"rank {w.rank} sent a collective request while still in call #{w.waiting}; "
                                "a rank makes one collective call at a time", keep_waiting=True)
            return
        try:
            req = self._reader.parse(line)
        except ValueError:
            self._refuse(w, -1, f"rank {w.rank} sent a malformed collective request on CLUSTERLAB_CHANNEL")
            return
        size = len(line)
        if size > MAX_REQUEST:
            self._refuse(w, req[0], f"the data of collective call #{req[0]} is {size} bytes as JSON, over "
                                     f"the {MAX_REQUEST}-byte limit of one rank's share; gather less data per call")
            return
        w.waiting = req[0]
        self._in_round += 1
        if self._held_bytes + size > MAX_REQUEST:
            self.flush()  # keep every 'arrive' frame under MAX_FRAME
        if not self._held:
            self.hold_until = time.monotonic() + ARRIVAL_HOLD
        self._held.append((w.rank, req))
        self._held_bytes += size
        if self._in_round + self.group.exited >= len(self.group.workers):  # the whole node is in
            self.flush()

    def exited(self, w: Worker) -> None:
        """``w`` has exited: it waits for nothing any more, and what the node holds goes up now
        (ahead of the news of the exit)."""
        if w.waiting is not None:
            w.waiting = None
            self._in_round -= 1
        self.flush()

    def tick(self, now: float) -> None:
        """Send what is held once the hold has passed (the agent calls this at :attr:`hold_until`)."""
        if now >= self.hold_until and self._held:
            self.flush()

    def flush(self) -> None:
        """Send every held arrival to the master, as one message: the node's share of the round."""
        if self._held and not self.group.stopping:
            ranks, items = zip(*self._held)
            message = protocol.arrive(self.attempt, list(items), list(ranks))
            self.send_up(message)
            if "barrier" in message and not self.master:  # spelled while the other nodes are still coming
                seq = items[0][0]
                self.awaited = protocol.released_frame(self.attempt, seq, self.world)
                self._release = seq, protocol.reply_line(seq, [None] * self.world)
        self._held, self._held_bytes, self.hold_until = [], 0, float("inf")

    # ------------------------------------------------------------------ down: master -> worker
    def released(self, frame: bytes) -> bool:
        """Deliver ``frame`` if it is the release this node awaits; False if it is anything else."""
        if frame != self.awaited or not frame:  # (b"": the end of the connection, never a release)
            return False
        self.awaited = b""
        self._deliver(*self._release)
        return True

    def deliver(self, msg: dict) -> None:
        """A ``result`` from the master: the reply, spelled once, to every local worker in that round."""
        seq, data, error, ranks = protocol.parse_result(msg)
        self._deliver(seq, protocol.reply_line(seq, data, error), ranks)

    def _deliver(self, seq: int, line: bytes, ranks: frozenset[int] | None = None) -> None:
        for w in self.group.workers:
            if w.waiting == seq and w.returncode is None and (ranks is None or w.rank in ranks):
                w.waiting = None
                self._in_round -= 1
                w.reply.send(line)

    def _refuse(self, w: Worker, seq: int, error: str, keep_waiting: bool = False) -> None:
        if not keep_waiting:
            w.waiting = None
        w.reply.send(protocol.reply_line(seq, error=error))
