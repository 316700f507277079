"""Rendezvous: how the node agents find each other and agree they are one job.

Node 0's agent is the *master*. It listens on ``MASTER_ADDR:MASTER_PORT`` (that
address only) and waits for the other ``nnodes - 1`` agents. Each of them
connects and sends one hello frame (:func:`clusterlab.protocol.hello`)::

    {"t": "hello", "version": 4, "run_id": "none", "node_rank": 1,
     "nnodes": 2, "nproc_per_node": 4, "host": "node1"}

The master checks it (:func:`check_hello`): another job's run id, another
protocol version, a different job shape, a node rank out of range or already
taken, anything that is not a hello - each is refused with a frame saying why,
and the master keeps waiting for the right agents. A client that connects and
says nothing is dropped after :data:`HELLO_TIMEOUT`; a node that joined and then
leaves before the job starts is forgotten, so that it can join again. When every node is in, the
master answers each with a welcome (the list of host names), and **closes its
listening socket**: the connections stay up, and torch's rank 0 can now bind
``MASTER_PORT`` for its own TCPStore. Both sides give up after
``--rdzv-timeout`` with a message that names who never came.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable

from . import protocol
from .config import AgentConfig
from .errors import UsageError
from .loop import Loop, Outbox
from .protocol import PROTOCOL_VERSION
from .wire import FrameDecoder, ProtocolError, encode

#: seconds a new connection has to send its hello
HELLO_TIMEOUT = 5.0
#: how much longer than its own --rdzv-timeout a joined node waits for the master's welcome or stop
VERDICT_GRACE = 5.0
#: the most a hello may take; anything longer is not a hello
_HELLO_MAX = 65536


class Peer:
    """A TCP connection to another agent, framed by :mod:`clusterlab.wire`."""

    def __init__(self, loop: Loop, sock: socket.socket, node_rank: int | None = None, host: str = "?") -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.node_rank, self.host = sock, node_rank, host
        self.decoder = FrameDecoder()
        self.out = Outbox(loop, sock.fileno())
        self.last_seen = time.monotonic()
        self.closed = False

    @property
    def between_frames(self) -> bool:
        """No part of a frame from the peer is waiting for the rest."""
        return not self.decoder.pending

    def send(self, message: dict) -> None:
        if not self.closed:
            self.out.send(encode(message))

    def send_frame(self, frame: bytes) -> None:
        """Send a message already framed (:func:`clusterlab.wire.encode`)."""
        if not self.closed:
            self.out.send(frame)

    def heartbeat(self, now: float, timeout: float) -> bool:
        """Tell the peer we are alive; False if it has been silent for more than ``timeout`` seconds."""
        if self.closed:
            return True
        if now - self.last_seen > timeout:
            return False
        self.send(protocol.HEARTBEAT)
        return True

    def drain(self, deadline: float) -> None:
        """Block until what is queued for the peer has been sent, or until ``deadline`` (monotonic)."""
        while self.out.buf and not self.out.broken and not self.closed and time.monotonic() < deadline:
            select.select([], [self.sock], [], max(0.0, deadline - time.monotonic()))
            self.out.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def free_port(addr: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for ``--master-port``; tests, pages and the bench)."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def close_links(peers, grace: float) -> None:
    """Send what is still queued for each peer (for at most ``grace`` seconds in all), then close."""
    deadline = time.monotonic() + grace
    for peer in peers:
        peer.drain(deadline)
        peer.close()


def listen(addr: str, port: int) -> socket.socket:
    """Bind and listen on ``addr:port`` (port 0: a free one), or raise a one-line UsageError."""
    try:
        # bytes, not str: a str host would go through the idna codec (and its import) first
        infos = socket.getaddrinfo(addr.encode(), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise UsageError(f"--master-addr {addr!r} does not resolve ({reason}); "
                         "use an address of node 0, e.g. 127.0.0.1") from None
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
            raise UsageError(f"cannot listen on {addr}:{port}: the port is already in use (another job?); "
                             "pick a free --master-port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {addr}:{port}: {addr} is not an address of this machine; "
                             "node 0 must run on the host named by --master-addr") from None
        raise UsageError(f"cannot listen on {addr}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def check_hello(msg: dict, cfg: AgentConfig, joined: dict[int, Peer]) -> str | None:
    """Why the master refuses this hello, or None if it fits the job."""
    layout = cfg.layout
    if msg.get("t") != "hello":
        return "the first frame must be a hello"
    if msg.get("version") != PROTOCOL_VERSION:
        return f"protocol version {str(msg.get('version'))[:20]}, this master speaks {PROTOCOL_VERSION}"
    if msg.get("run_id") != cfg.run_id:
        return (f"run id {str(msg.get('run_id'))[:80]!r} does not match this job's {cfg.run_id!r} "
                "(another job on the same port? use a different --master-port)")
    shape = (msg.get("nnodes"), msg.get("nproc_per_node"))
    if shape != (layout.nnodes, layout.nproc_per_node):
        return (f"--nnodes/--nproc-per-node {str(shape[0])[:20]}/{str(shape[1])[:20]} differ from the master's "
                f"{layout.nnodes}/{layout.nproc_per_node}")
    node = msg.get("node_rank")
    if not isinstance(node, int) or isinstance(node, bool) or not 1 <= node < layout.nnodes:
        return f"--node-rank {str(node)[:20]} is not in 1..{layout.nnodes - 1}"
    if node in joined:
        return f"--node-rank {node} has already joined (two agents with the same node rank?)"
    return None


def serve(loop: Loop, cfg: AgentConfig, listener: socket.socket, hostname: str, log: Callable[[str], None],
          announce: bool) -> tuple[dict[int, Peer], list[str]] | int:
    """The master's side: wait for every other node, then welcome them all.

    Returns the joined peers by node rank and every node's host name (``hostname`` is
    node 0's), or an exit status when the rendezvous failed (timeout, signal). Closes
    ``listener`` either way.
    """
    deadline = time.monotonic() + cfg.rdzv_timeout
    nnodes = cfg.layout.nnodes
    listener.setblocking(False)
    pending: dict[int, tuple[Peer, float]] = {}
    peers: dict[int, Peer] = {}
    refused: list[str] = []

    def accept() -> None:
        try:
            conn, peer_addr = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        peer = Peer(loop, conn, host=f"{peer_addr[0]}:{peer_addr[1]}")
        pending[conn.fileno()] = (peer, time.monotonic() + HELLO_TIMEOUT)
        loop.on_read(conn.fileno(), lambda: read_hello(peer))

    def drop(peer: Peer, reason: str | None) -> None:
        pending.pop(peer.sock.fileno(), None)
        if reason:
            refused.append(reason)
            log(f"refused a connection from {peer.host}: {reason}")
            try:
                peer.sock.setblocking(True)
                peer.sock.settimeout(1.0)
                peer.sock.sendall(encode(protocol.refuse(reason)))
            except OSError:
                pass
        loop.forget(peer.sock.fileno())
        peer.close()

    def read_hello(peer: Peer) -> None:
        try:
            data = peer.sock.recv(_HELLO_MAX)
            if not data:
                return drop(peer, None)
            messages = peer.decoder.feed(data)
        except ProtocolError as exc:
            return drop(peer, f"not a clusterlab agent ({exc})")
        except OSError:
            return drop(peer, None)
        if not messages:
            if peer.decoder.pending > _HELLO_MAX:
                drop(peer, "hello frame too large")
            return
        reason = check_hello(messages[0], cfg, peers)
        if reason:
            return drop(peer, reason)
        node = messages[0]["node_rank"]
        pending.pop(peer.sock.fileno(), None)
        loop.on_read(peer.sock.fileno(), lambda: watch(peer))  # the agent sets its own handler after the welcome
        peer.node_rank, peer.host = node, str(messages[0].get("host", "?"))[:200]
        peers[node] = peer

    def watch(peer: Peer) -> None:
        """A joined node, waiting for the others: it says nothing until the welcome, so readable means gone."""
        try:
            if peer.sock.recv(_HELLO_MAX):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        log(f"node{peer.node_rank} ({peer.host}) left before the job started; waiting for it to join again")
        peers.pop(peer.node_rank, None)  # type: ignore[arg-type]
        loop.forget(peer.sock.fileno())
        peer.close()

    loop.on_read(listener.fileno(), accept)
    if nnodes > 1 and announce:
        log(f"node0 is the master: waiting for {nnodes - 1} more node(s) on "
            f"{cfg.master_addr}:{cfg.master_port} (run id {cfg.run_id!r})")
    try:
        while len(peers) < nnodes - 1:
            now = time.monotonic()
            if loop.signal is not None:
                log(f"interrupted by {_signame(loop.signal)} during rendezvous")
                return 128 + loop.signal
            if now >= deadline:
                missing = [n for n in range(1, nnodes) if n not in peers]
                log(f"rendezvous timed out after {cfg.rdzv_timeout:g}s: node rank(s) "
                    f"{', '.join(map(str, missing))} never joined {cfg.master_addr}:{cfg.master_port}"
                    + (f" (refused: {'; '.join(refused[-3:])})" if refused else "")
                    + "; start them with the same --master-addr/--master-port/--nnodes, or raise --rdzv-timeout")
                for peer in peers.values():
                    peer.send(protocol.stop(1, "rendezvous timed out on the master"))
                return 1
            for peer, hello_deadline in list(pending.values()):
                if now >= hello_deadline:
                    drop(peer, f"no hello within {HELLO_TIMEOUT:g}s")
            loop.poll(min(deadline - now, 0.5))
    finally:
        loop.forget(listener.fileno())
        listener.close()
        for peer, _ in list(pending.values()):
            drop(peer, None)
    hosts = [hostname, *(peers[node].host for node in range(1, nnodes))]
    for peer in peers.values():
        peer.send(protocol.welcome(hosts))
        peer.last_seen = time.monotonic()  # no heartbeats flow during rendezvous: the clock starts now
    return peers, hosts


def join(loop: Loop, cfg: AgentConfig, node_rank: int, hostname: str, log: Callable[[str], None],
         announce: bool) -> tuple[Peer, list[str], list[dict]] | int:
    """A non-master's side: connect to the master (retrying until it is up), hello, wait for the welcome.

    Returns the link to the master, the host names of all nodes and any messages
    that arrived right behind the welcome - or an exit status on failure.
    """
    deadline = time.monotonic() + cfg.rdzv_timeout
    addr, port = cfg.master_addr, cfg.master_port
    announced = False
    while True:
        if loop.signal is not None:
            log(f"node{node_rank}: interrupted by {_signame(loop.signal)} during rendezvous")
            return 128 + loop.signal
        if time.monotonic() >= deadline:
            log(f"rendezvous timed out after {cfg.rdzv_timeout:g}s: the master agent (node 0) never "
                f"answered at {addr}:{port}; start node 0 with the same --master-addr/--master-port, "
                "or raise --rdzv-timeout")
            return 1
        try:
            # an ASCII name as bytes: a str would go through the idna codec, whose import costs ~2 ms
            host = addr.encode() if addr.isascii() else addr
            sock = socket.create_connection((host, port),  # type: ignore[arg-type]  # (bytes is fine at run time)
                                            timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            break
        except socket.gaierror as exc:
            raise UsageError(f"--master-addr {addr!r} does not resolve ({exc.strerror})") from None
        except UnicodeError:
            raise UsageError(f"--master-addr {addr!r} is not a valid host name") from None
        except OSError:
            if not announced and announce:
                log(f"node{node_rank}: waiting for the master agent at {addr}:{port}")
                announced = True
            loop.poll(0.1)
    master = Peer(loop, sock, 0)
    layout = cfg.layout
    master.send(protocol.hello(cfg.run_id, node_rank, layout.nnodes, layout.nproc_per_node, hostname))
    inbox: list = []

    def read() -> None:
        try:
            data = sock.recv(_HELLO_MAX)
        except OSError:
            data = b""
        if not data:
            inbox.append({"t": "refuse", "reason": "the master closed the connection"})
            return
        try:
            inbox.extend(master.decoder.feed(data))
        except ProtocolError as exc:
            inbox.append({"t": "refuse", "reason": f"the master sent garbage ({exc})"})

    loop.on_read(sock.fileno(), read)

    def give_up(code: int) -> int:
        loop.forget(sock.fileno())
        sock.close()
        return code

    # Once joined, the master decides: its own --rdzv-timeout started when it came up, maybe later
    # than ours, and a node that left now would be reported as never joined. So wait for its verdict
    # (welcome or stop) a little longer than our own deadline, but never forever.
    deadline += VERDICT_GRACE
    while not inbox:
        if loop.signal is not None:
            log(f"node{node_rank}: interrupted by {_signame(loop.signal)} during rendezvous")
            return give_up(128 + loop.signal)
        if time.monotonic() >= deadline:
            log(f"node{node_rank}: gave up waiting for the other nodes to join at {addr}:{port}")
            return give_up(1)
        loop.poll(min(deadline - time.monotonic(), 0.5))
    first = inbox.pop(0)
    if first.get("t") != "welcome" or not isinstance(first.get("hosts"), list):
        log(f"node{node_rank}: the master at {addr}:{port} refused this agent: {str(first.get('reason', first))[:300]}")
        return give_up(1)
    master.last_seen = time.monotonic()  # the wait for the last node to join is not silence
    return master, [str(h)[:200] for h in first["hosts"]], inbox


def _signame(signum: int) -> str:
    import signal

    return signal.Signals(signum).name
