"""The node agent: one per node, it starts that node's workers and keeps them in step.

What an agent does, in phases (the same phases as torchrun's elastic agent):

1. **Rendezvous** (:mod:`clusterlab.rendezvous`). Node 0's agent is the
   *master*: it listens on ``MASTER_ADDR:MASTER_PORT`` until every other agent
   has connected and said a hello that fits the job, then closes the listening
   socket so torch's own rank 0 can bind ``MASTER_PORT`` for its TCPStore.
2. **Run** (:mod:`clusterlab.workers`). Each agent starts ``nproc_per_node``
   workers with torchrun's environment, prefixes their output, and carries their
   collective calls: worker -> agent (pipe) -> master (TCP) and back
   (:mod:`clusterlab.channel`, :mod:`clusterlab.barrier`).
3. **Failure** (:mod:`clusterlab.coordinator`). A worker that exits non-zero or
   dies by a signal makes its agent stop the node's other workers and report to
   the master, which tells every agent to stop - or, with ``--max-restarts``, to
   restart the whole world with ``TORCHELASTIC_RESTART_COUNT`` incremented. A
   lost agent (closed connection or missed heartbeats) stops the job the same
   way. Unlike torchrun, the other nodes do not wait for a collective to time out.
4. **Exit.** When every worker of every node exited 0, the master says finish and
   every agent exits 0; otherwise 1, or 128 + the signal number when the agent
   itself was interrupted.

Everything runs in one thread around one :class:`~clusterlab.loop.Loop`; every
wait in it has a deadline. This module is the glue: it routes messages between
the workers, the link to the master and (on node 0) the coordinator.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections import deque, namedtuple
from functools import partial

from . import rendezvous
from .coordinator import Coordinator
from .loop import Loop
from .output import log
from .rendezvous import Peer
from .wire import ProtocolError, dumps, encode, frame
from .workers import MAX_ARRIVAL, Worker, WorkerGroup

HEARTBEAT_INTERVAL = 1.0
#: bytes asked of a peer's socket per read. Under glibc's mmap threshold (128 KiB): a 1 MiB
#: buffer cost an mmap, an mremap and a munmap on every message, six system calls per barrier.
RECV_SIZE = 1 << 16
#: the longest a node agent holds its workers' arrivals before sending an incomplete set
ARRIVAL_HOLD = 0.005
#: a peer silent for this long is declared lost (CLUSTERLAB_HEARTBEAT_TIMEOUT overrides)
HEARTBEAT_TIMEOUT = float(os.environ.get("CLUSTERLAB_HEARTBEAT_TIMEOUT", "15"))
#: a barrier's release between agents: every rank's data was None, so the world's result is null
_RELEASE = b'{"t":"result","attempt":%d,"seq":%d,"data":null}'
#: what a handler raises on a message with missing or mistyped fields (checked by the fault suite)
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)


class AgentConfig(namedtuple("AgentConfig", [
    "layout", "argv", "master_addr", "master_port", "run_id", "role", "max_restarts", "rdzv_timeout",
    "log_dir", "console_streams", "local_ranks_filter", "barrier_trace", "term_timeout",
], defaults=("127.0.0.1", 29500, "none", "default", 0, 300.0, None, frozenset({"stdout", "stderr"}), None, None, 5.0))):
    """Everything an agent needs to know; built by :mod:`clusterlab.run` from the flags.

    ``layout`` (a :class:`~clusterlab.layout.ClusterLayout`) and ``argv`` (the worker
    command) are required; the rest default as torchrun's flags do.
    """

    __slots__ = ()


class NodeAgent:
    """Runs one node: rendezvous, workers, collectives, failure handling."""

    def __init__(self, config: AgentConfig, node_rank: int, hostname: str | None = None,
                 listener: socket.socket | None = None, print_summary: bool = True, lifeline: int | None = None) -> None:
        config.layout.check_node_rank(node_rank)
        self.cfg, self.layout, self.node_rank = config, config.layout, node_rank
        self.hostname = hostname or socket.gethostname()
        self.is_master = node_rank == 0
        self.listener = listener
        self.print_summary = print_summary
        self.lifeline = lifeline  # a pipe whose EOF means the launcher that started this agent died
        self.loop = Loop()
        self.group: WorkerGroup | None = None
        self.coordinator = Coordinator(self.layout, config.max_restarts, self._to_nodes, self._release) if self.is_master else None
        self.peers: dict[int, Peer] = {}  # master: the other agents
        self.master: Peer | None = None  # others: the link to the master
        self.hosts = [""] * self.layout.nnodes
        self.attempt = 0
        self.exit_code: int | None = None
        self._arrivals: list = []
        self._arrival_bytes = 0
        # the barrier lane: workers that entered the same plain barrier, counted before the master hears
        self._lane: list[Worker] = []
        self._lane_seq = -1
        self._lane_key: tuple | None = None  # (name, timeout), the same object for every rank (WorkerGroup)
        self._lane_tails: dict[tuple, bytes] = {}
        self._awaited: tuple = (None, -1)  # (frame, seq): the release of the last barrier this node entered
        self._hold_until = float("inf")  # when held arrivals go to the master even if the node is incomplete
        #: a barrier's release line for the workers, %d for its number: the world's Nones, in rank order
        self._released = b'{"seq":%d,"data":[' + b",".join([b"null"] * self.layout.world_size) + b"]}\n"
        self._inbox_master: deque = deque()  # (node, message) for the coordinator on node 0
        self._inbox_agent: deque = deque()  # messages from the coordinator to this agent
        self._next_heartbeat = 0.0
        self._interrupt_handled = False
        self._final = False  # a stop or finish came from the master: its disconnect is expected

    # ------------------------------------------------------------------ entry point
    def run(self) -> int:
        """Run this node to the end; return the exit status for the process."""
        self.loop.catch_signals()
        if self.lifeline is not None:
            self.loop.on_read(self.lifeline, self._launcher_gone)
        self.group = WorkerGroup(self.loop, self.cfg, self.node_rank, self.hostname,
                                 self._on_request, self._on_worker_exit, self._on_barrier)
        try:
            if self._rendezvous():
                self.group.start(self.attempt, tick=self._tick)
                while self.exit_code is None:
                    self._step()
        finally:
            self._shutdown()
        # An agent that was interrupted says so in its status, even if the signal came while a
        # failure was being torn down or while this agent shut down (the job's own code would
        # otherwise win); once it has shut down, the signal's default action takes over.
        if self.loop.signal is not None:
            return 128 + self.loop.signal
        return self.exit_code if self.exit_code is not None else 1

    def _step(self) -> None:
        now = time.monotonic()
        deadline = min(self.group.kill_at, self._next_heartbeat, self._hold_until)
        expires = float("inf")
        if self.coordinator:  # the barrier table keeps wall-clock deadlines
            expires = self.coordinator.table.next_deadline()
            if expires < float("inf"):
                deadline = min(deadline, now + (expires - time.time()))
        self.loop.poll(min(deadline - now, self.group.poll()))
        if self._arrivals or self._lane:
            self._flush_arrivals(force=False)
        if self._inbox_master or self._inbox_agent:
            self._drain_inboxes()
        if self.loop.signal is not None and not self._interrupt_handled:
            self._interrupted(self.loop.signal)
        if expires < float("inf") and time.time() >= expires:  # a round that began during this poll is due later
            self.coordinator.expire(time.time())
        now = time.monotonic()
        # (each check is guarded here: this runs on every wake-up, twice or more per barrier)
        if now >= self.group.kill_at:
            self.group.check_deadline(now)
        if now >= self._next_heartbeat:
            self._heartbeats(now)
        if self.group.stopping:
            self.group.check_idle()
        if self._inbox_master or self._inbox_agent:
            self._drain_inboxes()

    def _rendezvous(self) -> bool:
        cfg = self.cfg
        self.hosts[self.node_rank] = self.hostname
        if self.is_master:
            listener = self.listener or rendezvous.listen(cfg.master_addr, cfg.master_port)
            self.listener = None  # serve() closes it
            result = rendezvous.serve(self.loop, cfg, listener, log, announce=self.print_summary)
            if isinstance(result, int):
                self.exit_code = result
                return False
            self.peers = result
            for node, peer in self.peers.items():
                self.hosts[node] = peer.host
            for peer in self.peers.values():
                self.loop.on_read(peer.sock.fileno(), partial(self._read_peer, peer))
                peer.send({"t": "welcome", "hosts": self.hosts})
                peer.last_seen = time.monotonic()  # no heartbeats flow during rendezvous: the clock starts now
            return True
        result = rendezvous.join(self.loop, cfg, self.node_rank, self.hostname, log, announce=self.print_summary)
        if isinstance(result, int):
            self.exit_code = result
            return False
        self.master, self.hosts, early = result
        self.loop.on_read(self.master.sock.fileno(), partial(self._read_peer, self.master))
        self._inbox_agent.extend(early)
        return True

    # ------------------------------------------------------------------ from the workers
    def _on_barrier(self, w: Worker, seq: int, key: tuple) -> None:
        """The barrier lane: ``w`` entered plain barrier ``seq`` (``key`` is its (name, timeout)).

        The common case by far is every worker of the node entering the same
        plain barrier - no data, the same name and timeout. The lane only counts
        them; when the last one is in, the node's share crosses to the master as
        one small message (``"node": [seq, name, timeout]``) instead of one record
        per rank. Anything else - another barrier, data, a rank missing for longer
        than :data:`ARRIVAL_HOLD` - turns the lane into ordinary arrivals.
        """
        lane = self._lane
        if lane:
            if seq != self._lane_seq or key is not self._lane_key:
                self._on_request(w, seq, key[0], key[1], None, 0)
                return
        elif self._arrivals:
            self._on_request(w, seq, key[0], key[1], None, 0)
            return
        else:
            self._lane_seq, self._lane_key = seq, key
            self._hold_until = time.monotonic() + ARRIVAL_HOLD
        lane.append(w)
        if len(lane) == len(self.group.workers):  # the whole node is in
            self._lane = []
            self._hold_until = float("inf")
            if self.group.stopping:
                return
            if self.is_master:
                self._inbox_master.append((0, {"t": "arrive", "attempt": self.attempt, "node": [seq, key[0], key[1]]}))
            elif self.master is not None:
                tail = self._lane_tails.get(key)
                if tail is None:  # the message's end for this barrier, spelled once
                    tail = self._lane_tails[key] = b",%s,%s]}" % (dumps(key[0]), dumps(key[1]))
                self.master.send_frame(frame(b'{"t":"arrive","attempt":%d,"node":[%d' % (self.attempt, seq) + tail))
                self._awaited = frame(_RELEASE % (self.attempt, seq)), seq  # what the master will answer

    def _unlane(self) -> None:
        """Turn the workers counted in the lane into ordinary arrivals."""
        lane, self._lane = self._lane, []
        name, timeout = self._lane_key
        for w in lane:
            self._arrivals.append([w.rank, self._lane_seq, name, timeout, None])

    def _on_request(self, w: Worker, seq: int, name: str, timeout: float, data, nbytes: int) -> None:
        if self._lane:
            self._unlane()
        if self._arrival_bytes + nbytes > MAX_ARRIVAL:
            self._flush_arrivals()  # keep every 'arrive' frame under MAX_FRAME
        if not self._arrivals:
            self._hold_until = time.monotonic() + ARRIVAL_HOLD
        self._arrival_bytes += nbytes
        self._arrivals.append([w.rank, seq, name, timeout, data])

    def _flush_arrivals(self, force: bool = True) -> None:
        """Send the held arrivals to the master as one message: the node's share of the round.

        The hierarchical part of the barrier: a node's agent waits until all its
        workers have arrived, then crosses the network once. Arrivals wait at most
        :data:`ARRIVAL_HOLD` for slow local ranks, so the master always knows who
        is in a round (its timeout errors name exactly the ranks that never came).
        Node 0's agent is the master: its arrivals need no network and go at once.
        """
        if self._lane and (force or time.monotonic() >= self._hold_until or self.group.all_waiting):
            self._unlane()  # (all waiting: the others came another way - e.g. with data - and wait too)
        if not self._arrivals:
            return
        if not (force or self.is_master or self.group.all_waiting or time.monotonic() >= self._hold_until):
            return
        if not self.group.stopping:
            self._to_master({"t": "arrive", "attempt": self.attempt, "items": self._arrivals})
        self._arrivals = []
        self._arrival_bytes = 0
        self._hold_until = float("inf")

    def _on_worker_exit(self, w: Worker) -> None:
        self._flush_arrivals()  # what the node's workers did before this exit reaches the master first
        if w.returncode != 0:
            self._to_master({
                "t": "failed", "attempt": self.attempt, "node": self.node_rank, "host": self.hostname,
                "rank": w.rank, "local_rank": w.local_rank, "pid": w.proc.pid, "returncode": w.returncode,
                "time": time.time(), "tail": list(w.pumps["stderr"].tail),
            })
            self.group.stop()
        elif self.group.all_done:
            self._to_master({"t": "done", "attempt": self.attempt, "node": self.node_rank})
        else:  # the others may be waiting for it in a barrier it will never call
            self._to_master({"t": "exited", "attempt": self.attempt, "rank": w.rank})

    # ------------------------------------------------------------------ between agents
    def _read_peer(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data == self._awaited[0] and not peer.decoder.pending and not self._inbox_agent:
            peer.last_seen = time.monotonic()  # the release of this node's barrier, byte for byte
            self.group.deliver(self._awaited[1], self._released % self._awaited[1])
            return
        try:
            messages = peer.decoder.feed(data) if data else None
        except ProtocolError as exc:
            messages = None
            who = "the master" if peer is self.master else f"node{peer.node_rank}"
            log(f"node{self.node_rank}: bad frame from {who}: {exc}")
        if messages is None:
            self._lost(peer)
            return
        peer.last_seen = time.monotonic()
        for msg in messages:
            if peer is self.master:
                self._inbox_agent.append(msg)
            else:
                self._inbox_master.append((peer.node_rank, msg))

    def _lost(self, peer: Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        self.loop.forget(peer.sock.fileno())
        peer.sock.close()
        if peer is self.master:
            if self.exit_code is None and not self._final:
                log(f"node{self.node_rank}: lost the master agent (node0 at {self.cfg.master_addr}:"
                    f"{self.cfg.master_port}); stopping this node's workers")
                self.group.after_stop(lambda: self._exit(1))
        else:
            self.coordinator.fail(f"the agent of node{peer.node_rank} ({self.hosts[peer.node_rank]}) was lost "
                                  "(connection closed or heartbeat missed)")

    def _to_master(self, msg: dict) -> None:
        if self.is_master:
            self._inbox_master.append((0, msg))
        elif self.master is not None:
            self.master.send(msg)

    def _to_nodes(self, nodes, msg: dict) -> None:
        framed = None  # encoded once, however many nodes it goes to
        for node in nodes:
            if node == self.node_rank:
                self._inbox_agent.append(msg)
            elif node in self.peers:
                framed = framed or encode(msg)
                self.peers[node].send_frame(framed)

    def _release(self, nodes, seq: int) -> None:
        """Let every rank of ``nodes`` out of plain barrier ``seq``: the result is a world of nulls,
        so the message (``{"t": "result", ..., "data": null}``) and the workers' line are spelled here."""
        framed = None
        for node in nodes:
            if node == self.node_rank:
                self.group.deliver(seq, self._released % seq)
            elif node in self.peers:
                framed = framed or frame(_RELEASE % (self.coordinator.attempt, seq))
                self.peers[node].send_frame(framed)

    def _drain_inboxes(self) -> None:
        while self._inbox_master or self._inbox_agent:
            while self._inbox_master:
                node, msg = self._inbox_master.popleft()
                try:
                    self.coordinator.handle(node, msg)
                except _MALFORMED as exc:  # a peer passed the hello, then sent nonsense: stop, do not crash
                    self.coordinator.fail(f"node{node} sent a malformed {str(msg.get('t'))[:20]!r} message "
                                          f"({type(exc).__name__}: {str(exc)[:100]}); stopping the job")
            while self._inbox_agent:
                msg = self._inbox_agent.popleft()
                try:
                    self._handle(msg)
                except _MALFORMED as exc:
                    if not self._final:
                        self._final = True
                        log(f"node{self.node_rank}: the master sent a malformed {str(msg.get('t'))[:20]!r} "
                            f"message ({type(exc).__name__}: {str(exc)[:100]}); stopping this node's workers")
                        self.group.after_stop(lambda: self._exit(1))

    def _handle(self, msg: dict) -> None:
        """One message from the coordinator to this agent."""
        kind = msg.get("t")
        if kind == "result":
            if msg.get("attempt") != self.attempt:
                return
            seq = msg["seq"]
            if "error" in msg:
                reply, ranks = {"seq": seq, "error": msg["error"]}, set(msg.get("ranks", ()))
                self.group.deliver(seq, dumps(reply) + b"\n", ranks)
            elif msg["data"] is None:  # a barrier's release: every rank's data was None
                self.group.deliver(seq, self._released % int(seq))
            else:
                self.group.deliver(seq, dumps({"seq": seq, "data": msg["data"]}) + b"\n")
        elif kind == "restart":
            self.attempt = msg["attempt"]
            self.group.after_stop(self._restarted)
        elif kind == "start":
            if msg["attempt"] == self.attempt:
                self._lane, self._arrivals, self._arrival_bytes = [], [], 0  # nothing of the last attempt
                self._hold_until = float("inf")
                self.group.start(self.attempt, tick=self._tick)
        elif kind == "stop":
            self._final = True
            if self.print_summary:
                for line in str(msg.get("summary", "")).splitlines():
                    log(line)
            code = int(msg.get("code", 1))
            self.group.after_stop(lambda: self._exit(code))
        elif kind == "finish":
            self._final = True
            self._exit(0)

    def _restarted(self) -> None:
        self.group.close_streams()
        self._to_master({"t": "stopped", "attempt": self.attempt})

    def _interrupted(self, signum: int) -> None:
        self._interrupt_handled = True
        reason = f"interrupted by {signal.Signals(signum).name} on node{self.node_rank}"
        if self.is_master:
            self.coordinator.fail(reason, code=128 + signum)
        else:
            self._to_master({"t": "abort", "reason": reason, "code": 128 + signum})
            self.group.after_stop(lambda: self._exit(128 + signum))

    def _launcher_gone(self) -> None:
        """The launcher died (its end of the lifeline closed): stop this node as on SIGHUP."""
        self.loop.forget(self.lifeline)
        os.close(self.lifeline)
        self.lifeline = None
        log(f"node{self.node_rank}: the launcher is gone; stopping this node's workers")
        if self.loop.signal is None:
            self.loop.signal = signal.SIGHUP

    def _exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code

    # ------------------------------------------------------------------ heartbeats and shutdown
    def _tick(self) -> None:
        # Starting hundreds of workers on 2 cores can keep the agent busy for longer than
        # HEARTBEAT_TIMEOUT (64 x 8 ranks: 10-40 s): keep telling the other agents we are alive.
        self._heartbeats(time.monotonic(), check=False)

    def _heartbeats(self, now: float, check: bool = True) -> None:
        """Send a heartbeat on every link when one is due; with ``check``, declare silent peers lost."""
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_INTERVAL
        links = list(self.peers.values()) if self.is_master else ([self.master] if self.master else [])
        for peer in links:
            if peer.closed:
                continue
            if check and now - peer.last_seen > HEARTBEAT_TIMEOUT:
                self._lost(peer)
            else:
                peer.send({"t": "hb"})

    def _shutdown(self) -> None:
        """Leave nothing behind: workers killed, messages flushed, sockets closed."""
        if self.group is not None:
            self.group.shutdown()
        links = list(self.peers.values()) + ([self.master] if self.master else [])
        deadline = time.monotonic() + 2.0
        for peer in links:
            while peer.out.buf and not peer.out.broken and time.monotonic() < deadline:
                select.select([], [peer.sock], [], max(0.0, deadline - time.monotonic()))
                peer.out.flush()
            if not peer.closed:
                peer.sock.close()
                peer.closed = True
        if self.listener is not None:
            self.listener.close()
        self.loop.close()
