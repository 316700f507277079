"""The node agent: one per node, it starts that node's workers and keeps them in step.

What an agent does, in phases (the same phases as torchrun's elastic agent):

1. **Rendezvous** (:mod:`clusterlab.rendezvous`). Node 0's agent is the
   *master*: it listens on ``MASTER_ADDR:MASTER_PORT`` until every other agent
   has connected and said a hello that fits the job, then closes the listening
   socket so torch's own rank 0 can bind ``MASTER_PORT`` for its TCPStore.
2. **Run** (:mod:`clusterlab.workers`). Each agent starts ``nproc_per_node``
   workers with torchrun's environment and prefixes their output; its
   :class:`~clusterlab.relay.NodeRelay` carries their collective calls to the
   master and the results back (:mod:`clusterlab.protocol` spells every hop).
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
the relay, the link to the master and (on node 0) the coordinator, sends
heartbeats, and leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import deque
from collections.abc import Iterable
from functools import partial

from . import protocol, rendezvous
from .config import AgentConfig
from .coordinator import Coordinator
from .loop import Loop
from .output import log
from .relay import NodeRelay
from .rendezvous import Peer
from .wire import ProtocolError, encode
from .workers import Worker, WorkerGroup

HEARTBEAT_INTERVAL = 1.0
#: bytes asked of a peer's socket per read. Under glibc's mmap threshold (128 KiB): a 1 MiB
#: buffer cost an mmap, an mremap and a munmap on every message, six system calls per barrier.
RECV_SIZE = 1 << 16


class NodeAgent:
    """Runs one node: rendezvous, workers, collectives, failure handling."""

    def __init__(self, config: AgentConfig, node_rank: int, hostname: str | None = None,
                 listener: socket.socket | None = None, print_summary: bool = True, lifeline: int | None = None) -> None:
        config.layout.check_node_rank(node_rank)
        self.cfg, self.layout, self.node_rank = config, config.layout, node_rank
        self.hostname = hostname or socket.gethostname()
        self.is_master = node_rank == 0
        self.listener, self.print_summary = listener, print_summary
        self.lifeline = lifeline  # a pipe whose EOF means the launcher that started this agent died
        self.loop = Loop()
        self.group = WorkerGroup(self.loop, config, node_rank, self.hostname, self._on_worker_exit)
        self.relay = NodeRelay(self.group, self._to_master, self.is_master)
        self.group.on_request = self.relay.on_data
        self.coordinator = Coordinator(self.layout, config.max_restarts, self._to_nodes) if self.is_master else None
        #: links to other agents by node rank: on the master every other node's, elsewhere the master's (0)
        self.peers: dict[int, Peer] = {}
        self.master: Peer | None = None  # (not on the master) the link to node 0
        self.hosts = [""] * self.layout.nnodes
        self.attempt = 0
        self.exit_code: int | None = None
        self._inbox_master: deque[tuple[int, dict]] = deque()  # (node, message) for the coordinator on node 0
        self._inbox_agent: deque[dict] = deque()  # messages from the coordinator to this agent
        self._next_heartbeat, self._interrupt_handled = 0.0, False
        self._final = False  # a stop or finish came from the master: its disconnect is expected

    # ------------------------------------------------------------------ entry point
    def run(self) -> int:
        """Run this node to the end; return the exit status for the process."""
        self.loop.catch_signals()
        if self.lifeline is not None:
            self.loop.on_read(self.lifeline, self._launcher_gone)
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
        """One turn of the loop: wait for the next event or deadline, then act on what is due."""
        now = time.monotonic()
        expires = self.coordinator.next_deadline() if self.coordinator else float("inf")
        due = min(self.group.kill_at, self._next_heartbeat, self.relay.hold_until, expires)
        self.loop.poll(min(due - now, self.group.poll()))
        now = time.monotonic()
        if now >= self.relay.hold_until:
            self.relay.tick(now)
        if self.loop.signal is not None and not self._interrupt_handled:
            self._interrupted(self.loop.signal)
        if now >= expires:  # (a round that began during this poll is due later: the next turn sees it)
            self.coordinator.expire(now)  # type: ignore[union-attr]
        if now >= self.group.kill_at:
            self.group.check_deadline(now)
        if now >= self._next_heartbeat:
            self._heartbeats(now)
        if self.group.stopping:
            self.group.check_idle()
        if self._inbox_master or self._inbox_agent:
            self._drain_inboxes()

    def _rendezvous(self) -> bool:
        """Phase 1: meet the other agents; False (with :attr:`exit_code` set) if the job cannot start."""
        cfg, loop = self.cfg, self.loop
        if self.is_master:
            listener, self.listener = self.listener or rendezvous.listen(cfg.master_addr, cfg.master_port), None
            served = rendezvous.serve(loop, cfg, listener, self.hostname, log, announce=self.print_summary)
            if isinstance(served, int):
                self.exit_code = served
                return False
            self.peers, self.hosts = served
        else:
            joined = rendezvous.join(loop, cfg, self.node_rank, self.hostname, log, announce=self.print_summary)
            if isinstance(joined, int):
                self.exit_code = joined
                return False
            self.master, self.hosts, early = joined
            self.peers = {0: self.master}
            self._inbox_agent.extend(early)
        for peer in self.peers.values():
            loop.on_read(peer.sock.fileno(), partial(self._read_peer, peer))
        return True

    # ------------------------------------------------------------------ from the workers
    def _on_worker_exit(self, w: Worker) -> None:
        self.relay.exited(w)  # what the node's workers did before this exit reaches the master first
        if w.returncode != 0:
            self._to_master(protocol.failed(self.attempt, self.node_rank, self.hostname, w.rank, w.local_rank,
                                            w.proc.pid, w.returncode or 0, time.time(), list(w.pumps["stderr"].tail)))
            self.group.stop()
        elif self.group.all_done:
            self._to_master(protocol.done(self.attempt, self.node_rank))
        else:  # the others may be waiting for it in a barrier it will never call
            self._to_master(protocol.exited(self.attempt, w.rank))

    # ------------------------------------------------------------------ between agents
    def _to_master(self, msg: dict) -> None:
        if self.is_master:
            self._inbox_master.append((0, msg))
        elif self.master is not None:
            self.master.send(msg)

    def _to_nodes(self, nodes: Iterable[int], msg: dict) -> None:
        framed = None  # encoded once, however many nodes it goes to
        for node in nodes:
            if node == self.node_rank:
                self._inbox_agent.append(msg)
            elif node in self.peers:
                framed = framed or encode(msg)
                self.peers[node].send_frame(framed)

    def _read_peer(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if peer is self.master and peer.between_frames and not self._inbox_agent and self.relay.released(data):
            peer.last_seen = time.monotonic()  # the release this node awaited, recognised without decoding
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
        if peer is self.master:
            self._inbox_agent.extend(messages)
        else:
            self._inbox_master.extend((peer.node_rank, msg) for msg in messages)  # type: ignore[misc]

    def _lost(self, peer: Peer) -> None:
        if peer.closed:
            return
        self.loop.forget(peer.sock.fileno())
        peer.close()
        if peer is self.master:
            if self.exit_code is None and not self._final:
                log(f"node{self.node_rank}: lost the master agent (node0 at {self.cfg.master_addr}:"
                    f"{self.cfg.master_port}); stopping this node's workers")
                self.group.after_stop(lambda: self._exit(1))
        elif self.coordinator:
            self.coordinator.fail(f"the agent of node{peer.node_rank} ({self.hosts[peer.node_rank or 0]}) was lost "
                                  "(connection closed or heartbeat missed)")

    def _drain_inboxes(self) -> None:
        while self._inbox_master or self._inbox_agent:
            while self._inbox_master and self.coordinator:
                self.coordinator.handle(*self._inbox_master.popleft())
            while self._inbox_agent:
                msg = self._inbox_agent.popleft()
                try:
                    self._handle(msg)
                except protocol.MALFORMED as exc:
                    if not self._final:
                        self._final = True
                        log(f"node{self.node_rank}: the master sent a malformed {str(msg.get('t'))[:20]!r} "
                            f"message ({type(exc).__name__}: {str(exc)[:100]}); stopping this node's workers")
                        self.group.after_stop(lambda: self._exit(1))

    def _handle(self, msg: dict) -> None:
        """One message from the coordinator to this agent."""
        kind = msg.get("t")
        if kind == "result":
            if msg.get("attempt") == self.attempt:
                self.relay.deliver(msg)
        elif kind == "restart":
            self.attempt = int(msg["attempt"])
            self.group.after_stop(self._restarted)
        elif kind == "start":
            if msg["attempt"] == self.attempt:
                self.relay.restart(self.attempt)
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
        self._to_master(protocol.stopped(self.attempt))

    # ------------------------------------------------------------------ signals, heartbeats, shutdown
    def _interrupted(self, signum: int) -> None:
        self._interrupt_handled = True
        reason = f"interrupted by {signal.Signals(signum).name} on node{self.node_rank}"
        if self.coordinator:
            self.coordinator.fail(reason, code=128 + signum)
        else:
            self._to_master(protocol.abort(reason, 128 + signum))
            self.group.after_stop(lambda: self._exit(128 + signum))

    def _launcher_gone(self) -> None:
        """The launcher died (its end of the lifeline closed): stop this node as on SIGHUP."""
        if self.lifeline is None:
            return
        self.loop.forget(self.lifeline)
        os.close(self.lifeline)
        self.lifeline = None
        log(f"node{self.node_rank}: the launcher is gone; stopping this node's workers")
        if self.loop.signal is None:
            self.loop.signal = signal.SIGHUP

    def _exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code

    def _tick(self) -> None:
        # Starting hundreds of workers on 2 cores can keep the agent busy for longer than the
        # heartbeat timeout (64 x 8 ranks: 10-40 s): keep telling the other agents we are alive.
        self._heartbeats(time.monotonic(), check=False)

    def _heartbeats(self, now: float, check: bool = True) -> None:
        """Send a heartbeat on every link when one is due; with ``check``, declare silent peers lost."""
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT_INTERVAL
            for peer in list(self.peers.values()):
                if not peer.heartbeat(now, self.cfg.heartbeat_timeout if check else float("inf")):
                    self._lost(peer)

    def _shutdown(self) -> None:
        """Leave nothing behind: workers killed, messages flushed, sockets closed."""
        self.group.shutdown()
        rendezvous.close_links(self.peers.values(), grace=2.0)
        if self.listener is not None:
            self.listener.close()
        self.loop.close()
