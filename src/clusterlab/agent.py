"""The node agent: one per node, it starts that node's workers and keeps them in step.

What an agent does, in phases (the same phases as torchrun's elastic agent):

1. **Rendezvous.** Node 0's agent is the *master*: it listens on
   ``MASTER_ADDR:MASTER_PORT`` (and only there). Every other agent connects,
   says hello (protocol version, run id, its node rank, the job's shape), and
   waits. A hello that does not fit - another job's run id, a node rank taken
   twice, a different ``--nproc-per-node`` - is refused with a message. When all
   ``nnodes`` agents are in, the master closes its listening socket (the
   connections stay up) so torch's own rank 0 can bind ``MASTER_PORT`` for its
   TCPStore: clusterlab and ``init_process_group`` never fight over the port.
2. **Run.** Each agent starts ``nproc_per_node`` workers, each in its own process
   group, with torchrun's environment, two pipes for collectives, and its
   stdout/stderr piped back for line prefixing and log files. Collective calls
   flow worker -> agent (pipe) -> master (TCP) and back; see
   :mod:`clusterlab.channel` and :mod:`clusterlab.barrier`.
3. **Failure.** A worker that exits non-zero or dies by a signal makes its agent
   stop the node's other workers (SIGTERM to their groups, a grace period, then
   SIGKILL) and report to the master, which tells every agent to stop - or, with
   ``--max-restarts``, to restart the whole world with
   ``TORCHELASTIC_RESTART_COUNT`` incremented. A lost agent (closed connection or
   no heartbeat) stops the job the same way. Unlike torchrun, the other nodes do
   not wait for a collective to time out.
4. **Exit.** When every worker of every node exited 0, the master says finish and
   every agent exits 0; otherwise 1, or 128 + the signal number when the agent
   itself was interrupted.

Everything runs in one thread around one ``selectors`` loop; every wait in it has
a deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from . import procs
from .barrier import GatherTable, Outcome
from .env import worker_env
from .errors import UsageError
from .layout import ClusterLayout
from .output import LineBuffer, StreamPump, prefix
from .wire import MAX_FRAME, PROTOCOL_VERSION, FrameDecoder, ProtocolError, encode

HEARTBEAT_INTERVAL = 1.0
#: a peer silent for this long is declared lost (CLUSTERLAB_HEARTBEAT_TIMEOUT overrides)
HEARTBEAT_TIMEOUT = float(os.environ.get("CLUSTERLAB_HEARTBEAT_TIMEOUT", "15"))
HELLO_TIMEOUT = 5.0
#: what a handler raises on a message with missing or mistyped fields (checked by the fault suite)
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)
TAIL_LINES = 10
#: the largest collective request one rank may send (an 'arrive' frame carries at most two)
_MAX_ARRIVAL = MAX_FRAME // 2 - 4096


@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs to know; built by :mod:`clusterlab.run` from the flags."""

    layout: ClusterLayout
    argv: tuple[str, ...]
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    run_id: str = "none"
    role: str = "default"
    max_restarts: int = 0
    rdzv_timeout: float = 300.0
    log_dir: str | None = None
    console_streams: frozenset = frozenset({"stdout", "stderr"})
    local_ranks_filter: frozenset | None = None
    barrier_trace: str | None = None
    term_timeout: float = 5.0


def log(message: str) -> None:
    """The launcher's own voice: one ``[clusterlab]`` line on stderr."""
    try:
        with _console_lock(2):
            os.write(2, f"[clusterlab] {message}\n".encode())
    except OSError:
        pass


@contextlib.contextmanager
def _console_lock(fd: int):
    """Hold a POSIX lock on the console (a pipe, tty or file) while writing whole lines to it.

    A write of at most PIPE_BUF (4096) bytes to a pipe is atomic, a longer one is
    not: when the agents of a simulated cluster share one terminal or pipe, a 20 KB
    line from node0 could be cut in half by node1's lines. ``lockf`` works on pipes
    and ttys and is per process, so agents that share the console take turns. If
    the console cannot be locked, write anyway.
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError:
            pass


class _ConsolePump(StreamPump):
    """A :class:`StreamPump` whose console writes hold :func:`_console_lock`."""

    def _emit(self, lines: list[bytes]) -> None:
        if self.console_fd is None or not lines:
            return super()._emit(lines)
        with _console_lock(self.console_fd):
            super()._emit(lines)


class _Outbox:
    """A non-blocking writer with a buffer: the loop never blocks on a slow reader."""

    def __init__(self, agent: "NodeAgent", fd: int) -> None:
        self.agent, self.fd, self.buf, self.broken = agent, fd, bytearray(), False

    def send(self, data: bytes) -> None:
        if self.broken:
            return
        had = bool(self.buf)
        self.buf += data
        if not had:
            self.flush()
            if self.buf:
                self.agent._watch(self.fd, selectors.EVENT_WRITE, True)

    def flush(self) -> None:
        while self.buf and not self.broken:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                return
            except OSError:
                self.broken = True
                self.buf.clear()
                break
            del self.buf[:n]
        if not self.buf:
            self.agent._watch(self.fd, selectors.EVENT_WRITE, False)


class _Peer:
    """A TCP connection to another agent, framed by :mod:`clusterlab.wire`."""

    def __init__(self, agent: "NodeAgent", sock: socket.socket, node_rank: int | None = None) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.node_rank, self.host = sock, node_rank, "?"
        self.decoder = FrameDecoder()
        self.out = _Outbox(agent, sock.fileno())
        self.last_seen = time.monotonic()
        self.closed = False

    def send(self, message: dict) -> None:
        self.out.send(encode(message))


@dataclass
class _Worker:
    local_rank: int
    rank: int
    proc: subprocess.Popen
    req_fd: int
    reply: _Outbox
    pumps: dict
    pidfd: int | None
    requests: LineBuffer = field(default_factory=LineBuffer)
    waiting: int | None = None  # the collective round it is blocked in
    returncode: int | None = None


class NodeAgent:
    """Runs one node: rendezvous, workers, collectives, failure handling."""

    def __init__(
        self,
        config: AgentConfig,
        node_rank: int,
        hostname: str | None = None,
        listener: socket.socket | None = None,
        print_summary: bool = True,
    ) -> None:
        config.layout.check_node_rank(node_rank)
        self.cfg = config
        self.layout = config.layout
        self.node_rank = node_rank
        self.hostname = hostname or socket.gethostname()
        self.is_master = node_rank == 0
        self.listener = listener
        self.print_summary = print_summary
        self.sel = selectors.DefaultSelector()
        self._masks: dict[int, int] = {}
        self._handlers: dict[int, tuple] = {}
        self.workers: list[_Worker] = []
        self.attempt = 0
        self.exit_code: int | None = None
        self._arrivals: list = []
        self._arrival_bytes = 0
        self._stopping = False
        self._kill_at = float("inf")
        self._family: list = []
        self._when_idle: list = []
        self._inbox_master: deque = deque()  # (node, message) for the master part of node 0
        self._inbox_agent: deque = deque()  # messages from the master to this agent
        self._signal: int | None = None
        self._next_heartbeat = 0.0
        # master state
        self.peers: dict[int, _Peer] = {}
        self.master: _Peer | None = None
        self.hosts: list[str] = [""] * self.layout.nnodes
        self.table = GatherTable(self.layout)
        self._done_nodes: set[int] = set()
        self._stopped_nodes: set[int] = set()
        self._ending = False  # master: a stop or finish was broadcast
        self._root_cause: dict | None = None
        self._foreign: set[int] = set()

    # ------------------------------------------------------------------ loop plumbing
    def _watch(self, fd: int, event: int, on: bool, handler=None) -> None:
        if handler is not None:
            readers, writers = self._handlers.get(fd, (None, None))
            self._handlers[fd] = (handler, writers) if event == selectors.EVENT_READ else (readers, handler)
        old = self._masks.get(fd, 0)
        new = (old | event) if on else (old & ~event)
        if new == old:
            return
        if old == 0:
            self.sel.register(fd, new)
        elif new == 0:
            self.sel.unregister(fd)
        else:
            self.sel.modify(fd, new)
        if new:
            self._masks[fd] = new
        else:
            self._masks.pop(fd, None)

    def _unwatch(self, fd: int) -> None:
        if self._masks.pop(fd, 0):
            self.sel.unregister(fd)
        self._handlers.pop(fd, None)

    def _poll(self, timeout: float) -> None:
        for key, events in self.sel.select(max(0.0, timeout)):
            readers, writers = self._handlers.get(key.fd, (None, None))
            if events & selectors.EVENT_READ and readers:
                readers()
            if events & selectors.EVENT_WRITE and key.fd in self._handlers:
                writers = self._handlers[key.fd][1]
                if writers:
                    writers()

    def _install_signals(self) -> None:
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        self._watch(rfd, selectors.EVENT_READ, True, lambda: os.read(rfd, 512))
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if self._signal is None:
            self._signal = signum

    # ------------------------------------------------------------------ entry point
    def run(self) -> int:
        """Run this node to the end; return the exit status for the process."""
        self._install_signals()
        # Orphans of our workers (a grandchild that called setsid()) come back to us, so the sweeps in
        # _check_idle/_shutdown find them; children this process had before (an in-process launch) are spared.
        self._foreign = {p.pid for p in procs.descendants([os.getpid()])}
        procs.set_subreaper(True)
        try:
            if not self._rendezvous():
                return self.exit_code if self.exit_code is not None else 1
            self._start_workers()
            while self.exit_code is None:
                self._step()
            # An agent that was interrupted says so in its status, even if the signal came while a
            # failure was already being torn down (the job's own code would otherwise win).
            return 128 + self._signal if self._signal is not None else self.exit_code
        finally:
            self._shutdown()

    def _step(self) -> None:
        now = time.monotonic()
        deadline = min(self._kill_at, self._next_heartbeat)
        if self.is_master:  # the barrier table keeps wall-clock deadlines
            deadline = min(deadline, now + (self.table.next_deadline() - time.time()))
        self._poll(min(deadline - now, 0.5 if any(w.pidfd is None for w in self.workers) else 5.0))
        self._flush_arrivals()
        self._drain_inboxes()
        now = time.monotonic()
        if self._signal is not None and not self._interrupt_handled:
            self._interrupted(self._signal)
        if self.is_master:
            for outcome in self.table.expire(time.time()):
                self._dispatch(outcome)
        if now >= self._kill_at:
            self._kill_now()
        if any(w.pidfd is None for w in self.workers):
            for w in self.workers:
                if w.returncode is None and w.proc.poll() is not None:
                    self._on_exit(w)
        self._heartbeats(now)
        self._check_idle()
        self._drain_inboxes()

    _interrupt_handled = False

    # ------------------------------------------------------------------ rendezvous
    def _rendezvous(self) -> bool:
        deadline = time.monotonic() + self.cfg.rdzv_timeout
        self.hosts[self.node_rank] = self.hostname
        if self.is_master:
            return self._rendezvous_master(deadline)
        return self._rendezvous_worker(deadline)

    def _listen(self) -> socket.socket:
        addr, port = self.cfg.master_addr, self.cfg.master_port
        try:
            infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UsageError(f"--master-addr {addr!r} does not resolve ({exc.strerror}); use an address of node 0, e.g. 127.0.0.1") from None
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        # SO_REUSEADDR is inherited by the accepted connections, which lets torch's TCPStore
        # bind MASTER_PORT again once this listener is closed.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"cannot listen on {addr}:{port}: the port is already in use (another job?); "
                    "pick a free --master-port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"cannot listen on {addr}:{port}: {addr} is not an address of this machine; "
                    "node 0 must run on the host named by --master-addr"
                ) from None
            raise UsageError(f"cannot listen on {addr}:{port}: {exc.strerror}") from None
        sock.listen(128)
        return sock

    def _rendezvous_master(self, deadline: float) -> bool:
        if self.listener is None:
            self.listener = self._listen()
        self.listener.setblocking(False)
        pending: dict[int, tuple[_Peer, float]] = {}
        refused: list[str] = []

        def accept() -> None:
            try:
                conn, peer_addr = self.listener.accept()
            except (BlockingIOError, ConnectionAbortedError):
                return
            peer = _Peer(self, conn)
            peer.host = f"{peer_addr[0]}:{peer_addr[1]}"
            pending[conn.fileno()] = (peer, time.monotonic() + HELLO_TIMEOUT)
            self._watch(conn.fileno(), selectors.EVENT_READ, True, lambda: hello(peer))
            self._watch(conn.fileno(), selectors.EVENT_WRITE, False, peer.out.flush)

        def drop(peer: _Peer, reason: str | None) -> None:
            fd = peer.sock.fileno()
            pending.pop(fd, None)
            if reason:
                refused.append(reason)
                log(f"refused a connection from {peer.host}: {reason}")
                try:
                    peer.sock.setblocking(True)
                    peer.sock.settimeout(1.0)
                    peer.sock.sendall(encode({"t": "refuse", "reason": reason}))
                except OSError:
                    pass
            self._unwatch(fd)
            peer.sock.close()

        def hello(peer: _Peer) -> None:
            try:
                data = peer.sock.recv(65536)
                if not data:
                    return drop(peer, None)
                messages = peer.decoder.feed(data)
            except ProtocolError as exc:
                return drop(peer, f"not a clusterlab agent ({exc})")
            except OSError:
                return drop(peer, None)
            if not messages:
                if peer.decoder.pending > 65536:
                    drop(peer, "hello frame too large")
                return
            reason = self._check_hello(messages[0])
            if reason:
                return drop(peer, reason)
            node = messages[0]["node_rank"]
            pending.pop(peer.sock.fileno(), None)
            peer.node_rank, peer.host = node, str(messages[0].get("host", "?"))[:200]
            self.hosts[node] = peer.host
            self.peers[node] = peer
            self._watch(peer.sock.fileno(), selectors.EVENT_READ, True, lambda: self._read_peer(peer))

        self._watch(self.listener.fileno(), selectors.EVENT_READ, True, accept)
        if self.layout.nnodes > 1 and self.print_summary:
            log(f"node0 is the master: waiting for {self.layout.nnodes - 1} more node(s) on "
                f"{self.cfg.master_addr}:{self.cfg.master_port} (run id {self.cfg.run_id!r})")
        while len(self.peers) < self.layout.nnodes - 1:
            now = time.monotonic()
            if self._signal is not None:
                self.exit_code = 128 + self._signal
                log(f"interrupted by {signal.Signals(self._signal).name} during rendezvous")
                return False
            if now >= deadline:
                missing = [n for n in range(1, self.layout.nnodes) if n not in self.peers]
                log(
                    f"rendezvous timed out after {self.cfg.rdzv_timeout:g}s: node rank(s) "
                    f"{', '.join(map(str, missing))} never joined {self.cfg.master_addr}:{self.cfg.master_port}"
                    + (f" (refused: {'; '.join(refused[-3:])})" if refused else "")
                    + "; start them with the same --master-addr/--master-port/--nnodes, or raise --rdzv-timeout"
                )
                for peer in list(self.peers.values()):
                    peer.send({"t": "stop", "code": 1, "summary": "rendezvous timed out on the master"})
                self.exit_code = 1
                return False
            for peer, hello_deadline in list(pending.values()):
                if now >= hello_deadline:
                    drop(peer, f"no hello within {HELLO_TIMEOUT:g}s")
            self._poll(min(deadline - now, 0.5))
        self._unwatch(self.listener.fileno())
        self.listener.close()
        self.listener = None
        for fd in list(pending):
            drop(pending[fd][0], None)
        for peer in self.peers.values():
            peer.send({"t": "welcome", "hosts": self.hosts})
            peer.last_seen = time.monotonic()  # no heartbeats flow during rendezvous: the clock starts now
        return True

    def _check_hello(self, msg: dict) -> str | None:
        if msg.get("t") != "hello":
            return "the first frame must be a hello"
        if msg.get("version") != PROTOCOL_VERSION:
            return f"protocol version {msg.get('version')!r}, this master speaks {PROTOCOL_VERSION}"
        if msg.get("run_id") != self.cfg.run_id:
            return (f"run id {str(msg.get('run_id'))[:80]!r} does not match this job's {self.cfg.run_id!r} "
                    "(another job on the same port? use a different --master-port)")
        shape = (msg.get("nnodes"), msg.get("nproc_per_node"))
        if shape != (self.layout.nnodes, self.layout.nproc_per_node):
            return (f"--nnodes/--nproc-per-node {shape[0]}/{shape[1]} differ from the master's "
                    f"{self.layout.nnodes}/{self.layout.nproc_per_node}")
        node = msg.get("node_rank")
        if not isinstance(node, int) or isinstance(node, bool) or not 1 <= node < self.layout.nnodes:
            return f"--node-rank {node!r} is not in 1..{self.layout.nnodes - 1}"
        if node in self.peers:
            return f"--node-rank {node} has already joined (two agents with the same node rank?)"
        return None

    def _rendezvous_worker(self, deadline: float) -> bool:
        addr, port = self.cfg.master_addr, self.cfg.master_port
        announced = False
        while True:
            if self._signal is not None:
                self.exit_code = 128 + self._signal
                log(f"interrupted by {signal.Signals(self._signal).name} during rendezvous")
                return False
            if time.monotonic() >= deadline:
                log(f"rendezvous timed out after {self.cfg.rdzv_timeout:g}s: the master agent (node 0) never "
                    f"answered at {addr}:{port}; start node 0 with the same --master-addr/--master-port, "
                    "or raise --rdzv-timeout")
                self.exit_code = 1
                return False
            try:
                sock = socket.create_connection((addr, port), timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                break
            except socket.gaierror as exc:
                raise UsageError(f"--master-addr {addr!r} does not resolve ({exc.strerror})") from None
            except OSError:
                if not announced and self.print_summary:
                    log(f"node{self.node_rank}: waiting for the master agent at {addr}:{port}")
                    announced = True
                self._poll(0.1)
        self.master = _Peer(self, sock, 0)
        self.master.send({
            "t": "hello", "version": PROTOCOL_VERSION, "run_id": self.cfg.run_id, "node_rank": self.node_rank,
            "nnodes": self.layout.nnodes, "nproc_per_node": self.layout.nproc_per_node, "host": self.hostname,
        })
        fd = sock.fileno()
        self._watch(fd, selectors.EVENT_WRITE, False, self.master.out.flush)
        welcome: list = []

        def read() -> None:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                welcome.append({"t": "refuse", "reason": "the master closed the connection"})
                return
            try:
                welcome.extend(self.master.decoder.feed(data))
            except ProtocolError as exc:
                welcome.append({"t": "refuse", "reason": f"the master sent garbage ({exc})"})

        self._watch(fd, selectors.EVENT_READ, True, read)
        while not welcome:
            if self._signal is not None or time.monotonic() >= deadline:
                self.exit_code = 128 + self._signal if self._signal else 1
                log(f"node{self.node_rank}: interrupted by {signal.Signals(self._signal).name} during rendezvous"
                    if self._signal else
                    f"node{self.node_rank}: gave up waiting for the other nodes to join at {addr}:{port}")
                return False
            self._poll(min(deadline - time.monotonic(), 0.5))
        first = welcome.pop(0)
        if first.get("t") != "welcome":
            log(f"node{self.node_rank}: the master at {addr}:{port} refused this agent: {first.get('reason', first)}")
            self.exit_code = 1
            return False
        self.hosts = list(first["hosts"])
        self.master.last_seen = time.monotonic()  # the wait for the last node to join is not silence
        self._watch(fd, selectors.EVENT_READ, True, lambda: self._read_peer(self.master))
        for msg in welcome:
            self._inbox_agent.append(msg)
        return True

    # ------------------------------------------------------------------ workers
    def _start_workers(self) -> None:
        cfg = self.cfg
        base = dict(os.environ)
        omp = base.get("OMP_NUM_THREADS")
        if cfg.barrier_trace:
            base["CLUSTERLAB_TRACE"] = os.path.abspath(cfg.barrier_trace)
        base["CLUSTERLAB_NODE_NAME"] = self.hostname
        for local_rank in range(self.layout.nproc_per_node):
            # Starting hundreds of workers on 2 cores can keep this loop busy for longer than
            # HEARTBEAT_TIMEOUT (64 x 8 ranks: 10-40 s): keep telling the other agents we are alive.
            self._heartbeats(time.monotonic(), check=False)
            rank = self.layout.global_rank(self.node_rank, local_rank)
            env = dict(base)
            env.update(worker_env(
                self.layout, self.node_rank, local_rank, master_addr=cfg.master_addr, master_port=cfg.master_port,
                role=cfg.role, restart_count=self.attempt, max_restarts=cfg.max_restarts, run_id=cfg.run_id,
                omp_num_threads=omp,
            ))
            req_r, req_w = os.pipe()
            rep_r, rep_w = os.pipe()
            env["CLUSTERLAB_CHANNEL"] = f"{req_w},{rep_r}"
            try:
                proc = procs.spawn(list(cfg.argv), env, pass_fds=(req_w, rep_r))
            except OSError as exc:
                for fd in (req_r, req_w, rep_r, rep_w):
                    os.close(fd)
                raise UsageError(f"cannot start {cfg.argv[0]!r}: {exc.strerror}") from None
            os.close(req_w)
            os.close(rep_r)
            os.set_blocking(rep_w, False)
            os.set_blocking(req_r, False)
            pumps = {}
            for stream, pipe, console in (("stdout", proc.stdout, 1), ("stderr", proc.stderr, 2)):
                shown = stream in cfg.console_streams and (
                    cfg.local_ranks_filter is None or local_rank in cfg.local_ranks_filter)
                log_path = None
                if cfg.log_dir:
                    d = os.path.join(cfg.log_dir, f"attempt_{self.attempt}", f"node{self.node_rank}", str(local_rank))
                    os.makedirs(d, exist_ok=True)
                    log_path = os.path.join(d, f"{stream}.log")
                pumps[stream] = _ConsolePump(prefix(self.node_rank, rank, local_rank), console if shown else None,
                                           log_path, tail=TAIL_LINES if stream == "stderr" else 0)
                os.set_blocking(pipe.fileno(), False)
            try:
                pidfd = os.pidfd_open(proc.pid)
            except (AttributeError, OSError):
                pidfd = None
            w = _Worker(local_rank, rank, proc, req_r, _Outbox(self, rep_w), pumps, pidfd)
            self.workers.append(w)
            for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
                fd = pipe.fileno()
                self._watch(fd, selectors.EVENT_READ, True, lambda w=w, s=stream, fd=fd: self._read_output(w, s, fd))
            self._watch(req_r, selectors.EVENT_READ, True, lambda w=w: self._read_request(w))
            self._watch(rep_w, selectors.EVENT_WRITE, False, w.reply.flush)
            if pidfd is not None:
                self._watch(pidfd, selectors.EVENT_READ, True, lambda w=w: self._on_exit(w))

    def _read_output(self, w: _Worker, stream: str, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            w.pumps[stream].feed(data)
        else:
            self._close_stream(w, stream)

    def _close_stream(self, w: _Worker, stream: str) -> None:
        pipe = getattr(w.proc, stream)
        if pipe is None or pipe.closed:
            return
        self._unwatch(pipe.fileno())
        w.pumps[stream].close()
        pipe.close()

    def _drain_output(self, w: _Worker) -> None:
        """After a worker exited: take what is left in its pipes, then close them."""
        for stream in ("stdout", "stderr"):
            pipe = getattr(w.proc, stream)
            while pipe is not None and not pipe.closed:
                try:
                    data = os.read(pipe.fileno(), 65536)
                except BlockingIOError:
                    break  # a grandchild still holds the pipe open: what the worker wrote is in
                except OSError:
                    data = b""
                if not data:
                    break
                w.pumps[stream].feed(data)
            self._close_stream(w, stream)

    def _read_request(self, w: _Worker) -> None:
        try:
            data = os.read(w.req_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._unwatch(w.req_fd)
            return
        for line in w.requests.feed(data):
            try:
                req = json.loads(line)
                seq, name, timeout = int(req["seq"]), str(req["name"]), float(req["timeout"])
            except (ValueError, KeyError, TypeError, RecursionError):
                log(f"node{self.node_rank}: rank {w.rank} sent a malformed collective request; ignoring it")
                continue
            w.waiting = seq
            if len(line) > _MAX_ARRIVAL:  # it could never cross to the master in one frame: refuse it here
                w.waiting = None
                w.reply.send(json.dumps({"seq": seq, "error": (
                    f"the data of collective call #{seq} is {len(line)} bytes as JSON, over the "
                    f"{_MAX_ARRIVAL}-byte limit of one rank's share; gather less data per call")}).encode() + b"\n")
                continue
            if self._arrival_bytes + len(line) > _MAX_ARRIVAL:
                self._flush_arrivals()  # keep every 'arrive' frame under MAX_FRAME
            self._arrival_bytes += len(line)
            self._arrivals.append([w.rank, seq, name, timeout, req.get("data")])

    def _flush_arrivals(self) -> None:
        if self._arrivals and not self._stopping:
            self._to_master({"t": "arrive", "attempt": self.attempt, "items": self._arrivals})
        self._arrivals = []
        self._arrival_bytes = 0

    def _on_exit(self, w: _Worker) -> None:
        if w.returncode is not None:
            return
        try:
            w.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return
        w.returncode = w.proc.returncode
        if w.pidfd is not None:
            self._unwatch(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None
        self._drain_output(w)
        self._unwatch(w.req_fd)
        os.close(w.req_fd)
        self._unwatch(w.reply.fd)
        os.close(w.reply.fd)
        w.reply.broken = True
        if self._stopping:
            return
        if w.returncode != 0:
            self._to_master({
                "t": "failed", "attempt": self.attempt, "node": self.node_rank, "host": self.hostname,
                "rank": w.rank, "local_rank": w.local_rank, "pid": w.proc.pid, "returncode": w.returncode,
                "time": time.time(), "tail": list(w.pumps["stderr"].tail),
            })
            self._stop_workers()
        elif all(x.returncode == 0 for x in self.workers):
            self._to_master({"t": "done", "attempt": self.attempt, "node": self.node_rank})

    def _stop_workers(self) -> None:
        """Begin stopping every live worker: SIGTERM now, SIGKILL after the grace period."""
        if self._stopping:
            return
        self._stopping = True
        live = [w for w in self.workers if w.returncode is None]
        if live:
            self._family = procs.descendants([w.proc.pid for w in live])
            for w in live:
                procs.signal_group(w.proc, signal.SIGTERM)
            self._kill_at = time.monotonic() + self.cfg.term_timeout

    def _kill_now(self) -> None:
        self._kill_at = float("inf")
        for w in self.workers:
            if w.returncode is None:
                procs.signal_group(w.proc, signal.SIGKILL)

    def _check_idle(self) -> None:
        if not self._stopping or any(w.returncode is None for w in self.workers):
            return
        if self._family:
            procs.kill_all(self._family)
            self._family = []
        procs.sweep(self._foreign)
        self._kill_at = float("inf")
        callbacks, self._when_idle = self._when_idle, []
        for cb in callbacks:
            cb()

    def _after_stop(self, callback) -> None:
        self._stop_workers()
        self._when_idle.append(callback)
        self._check_idle()

    # ------------------------------------------------------------------ messages
    def _read_peer(self, peer: _Peer) -> None:
        try:
            data = peer.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            messages = peer.decoder.feed(data) if data else None
        except ProtocolError as exc:
            messages = None
            log(f"node{self.node_rank}: bad frame from {'the master' if peer is self.master else f'node{peer.node_rank}'}: {exc}")
        if messages is None:
            self._lost(peer)
            return
        peer.last_seen = time.monotonic()
        for msg in messages:
            if peer is self.master:
                self._inbox_agent.append(msg)
            else:
                self._inbox_master.append((peer.node_rank, msg))

    def _lost(self, peer: _Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        self._unwatch(peer.sock.fileno())
        peer.sock.close()
        if peer is self.master:
            if self.exit_code is None and not self._final:
                log(f"node{self.node_rank}: lost the master agent (node0 at {self.cfg.master_addr}:"
                    f"{self.cfg.master_port}); stopping this node's workers")
                self._after_stop(lambda: self._exit(1))
        elif not self._ending:
            self._fail_job(f"the agent of node{peer.node_rank} ({self.hosts[peer.node_rank]}) was lost "
                           "(connection closed or heartbeat missed)")

    _final = False

    def _to_master(self, msg: dict) -> None:
        if self.is_master:
            self._inbox_master.append((0, msg))
        elif self.master is not None and not self.master.closed:
            self.master.send(msg)

    def _to_node(self, node: int, msg: dict) -> None:
        if node == self.node_rank:
            self._inbox_agent.append(msg)
        else:
            peer = self.peers.get(node)
            if peer is not None and not peer.closed:
                peer.send(msg)

    def _broadcast(self, msg: dict) -> None:
        for node in range(self.layout.nnodes):
            self._to_node(node, msg)

    def _drain_inboxes(self) -> None:
        while self._inbox_master or self._inbox_agent:
            while self._inbox_master:
                node, msg = self._inbox_master.popleft()
                try:
                    self._master_handle(node, msg)
                except _MALFORMED as exc:  # a peer passed the hello, then sent nonsense: stop, do not crash
                    self._fail_job(f"node{node} sent a malformed {str(msg.get('t'))[:20]!r} message "
                                   f"({type(exc).__name__}: {str(exc)[:100]}); stopping the job")
            while self._inbox_agent:
                msg = self._inbox_agent.popleft()
                try:
                    self._agent_handle(msg)
                except _MALFORMED as exc:
                    if not self._final:
                        self._final = True
                        log(f"node{self.node_rank}: the master sent a malformed {str(msg.get('t'))[:20]!r} "
                            f"message ({type(exc).__name__}: {str(exc)[:100]}); stopping this node's workers")
                        self._after_stop(lambda: self._exit(1))

    # master side ------------------------------------------------------------
    def _master_handle(self, node: int, msg: dict) -> None:
        kind = msg.get("t")
        if kind == "hb":
            return
        if kind == "abort":
            self._fail_job(msg.get("reason", f"node{node} aborted"), code=int(msg.get("code", 1)))
            return
        if msg.get("attempt") != self.attempt or self._ending:
            return  # stale news from an earlier attempt, or the job is already ending
        if kind == "arrive":
            now = time.time()
            for rank, seq, name, timeout, data in msg["items"]:
                if rank not in self.layout.ranks_on(node) or not isinstance(seq, int) or not isinstance(timeout, (int, float)):
                    raise ValueError(f"rank {rank!r} seq {seq!r} timeout {timeout!r} is not a collective call of node{node}")
                outcome = self.table.arrive(rank, seq, name, timeout, data, now)
                if outcome:
                    self._dispatch(outcome)
        elif kind == "failed":
            self._on_failure(msg)
        elif kind == "done":
            self._done_nodes.add(node)
            if len(self._done_nodes) == self.layout.nnodes:
                self._ending = True
                self._broadcast({"t": "finish"})
        elif kind == "stopped":
            self._stopped_nodes.add(node)
            if len(self._stopped_nodes) == self.layout.nnodes:
                self._broadcast({"t": "start", "attempt": self.attempt})

    def _dispatch(self, outcome: Outcome) -> None:
        if outcome.error is None and self.layout.nnodes > 1:
            size = len(json.dumps(outcome.data, separators=(",", ":")))
            if size > MAX_FRAME - 4096:  # the result frame could not be sent: fail the call, not the agent
                outcome = Outcome(outcome.seq, outcome.ranks, error=(
                    f"the result of collective call #{outcome.seq} is {size} bytes as JSON, over the "
                    f"{MAX_FRAME}-byte frame limit between agents; gather less data per call"))
        msg = {"t": "result", "attempt": self.attempt, "seq": outcome.seq}
        if outcome.error is not None:
            msg["error"] = outcome.error
            msg["ranks"] = list(outcome.ranks)
            nodes = sorted({self.layout.locate(r)[0] for r in outcome.ranks})
        else:
            msg["data"] = outcome.data
            nodes = range(self.layout.nnodes)
        for node in nodes:
            self._to_node(node, msg)

    def _on_failure(self, msg: dict) -> None:
        self._root_cause = msg
        if self.attempt < self.cfg.max_restarts:
            self.attempt += 1
            log(f"rank {msg['rank']} on node{msg['node']} failed ({procs.describe_exit(msg['returncode'])}); "
                f"restarting the whole world, attempt {self.attempt} of {self.cfg.max_restarts}")
            self.table = GatherTable(self.layout)
            self._done_nodes.clear()
            self._stopped_nodes.clear()
            self._broadcast({"t": "restart", "attempt": self.attempt})
        else:
            self._fail_job(self._summary(msg))

    def _fail_job(self, summary: str, code: int = 1) -> None:
        if self._ending:
            return
        self._ending = True
        self._broadcast({"t": "stop", "code": code, "summary": summary})

    def _summary(self, f: dict) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f["time"]))
        lines = [
            "=" * 64,
            f"job failed after {self.attempt + 1} attempt(s); root cause (first observed failure):",
            f"  time      : {when}",
            f"  node      : node{f['node']} ({f['host']})",
            f"  rank      : {f['rank']} (local_rank {f['local_rank']})",
            f"  pid       : {f['pid']}",
            f"  exit      : {procs.describe_exit(f['returncode'])}",
        ]
        if f.get("tail"):
            lines.append(f"  stderr    : last {len(f['tail'])} line(s) of rank {f['rank']}:")
            lines += [f"    {line}" for line in f["tail"]]
        else:
            lines.append("  stderr    : (empty)")
        lines.append("every worker on every node was stopped")
        lines.append("=" * 64)
        return "\n".join(lines)

    # agent side ---------------------------------------------------------------
    def _agent_handle(self, msg: dict) -> None:
        kind = msg.get("t")
        if kind == "result":
            if msg.get("attempt") != self.attempt:
                return
            seq = msg["seq"]
            targets = set(msg.get("ranks", ())) if "error" in msg else None
            reply = {"seq": seq, "error": msg["error"]} if "error" in msg else {"seq": seq, "data": msg["data"]}
            line = json.dumps(reply, separators=(",", ":")).encode() + b"\n"
            for w in self.workers:
                if w.waiting == seq and w.returncode is None and (targets is None or w.rank in targets):
                    w.waiting = None
                    w.reply.send(line)
        elif kind == "restart":
            self.attempt = msg["attempt"]
            self._after_stop(self._restarted)
        elif kind == "start":
            if msg["attempt"] == self.attempt:
                self._stopping = False
                self.workers = []
                self._start_workers()
        elif kind == "stop":
            self._final = True
            if self.print_summary:
                for line in str(msg.get("summary", "")).splitlines():
                    log(line)
            code = int(msg.get("code", 1))
            self._after_stop(lambda: self._exit(code))
        elif kind == "finish":
            self._final = True
            self._exit(0)
        elif kind == "hb":
            return

    def _restarted(self) -> None:
        for w in self.workers:
            for stream in ("stdout", "stderr"):
                self._close_stream(w, stream)
        self._to_master({"t": "stopped", "attempt": self.attempt})

    def _interrupted(self, signum: int) -> None:
        self._interrupt_handled = True
        name = signal.Signals(signum).name
        reason = f"interrupted by {name} on node{self.node_rank}"
        if self.is_master:
            self._fail_job(reason, code=128 + signum)
        else:
            self._to_master({"t": "abort", "reason": reason, "code": 128 + signum})
            self._after_stop(lambda: self._exit(128 + signum))

    def _exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code

    # ------------------------------------------------------------------ heartbeats and shutdown
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
        """Leave nothing behind: workers killed, sockets flushed and closed."""
        live = [w for w in self.workers if w.returncode is None]
        if live:
            procs.stop([w.proc for w in live], grace=self.cfg.term_timeout)
            for w in live:
                w.returncode = w.proc.returncode
                self._drain_output(w)
        if self._family:
            procs.kill_all(self._family)
        procs.sweep(self._foreign)  # also after a clean finish: nothing a worker started outlives the job
        procs.set_subreaper(False)
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
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
