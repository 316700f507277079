"""The wire under the ring collectives: length-prefixed frames over TCP on 127.0.0.1.

Each rank opens a listening socket, the ranks exchange their ``(host, port)``
(in ``clusterlab zero simulate`` through :func:`clusterlab.all_gather_object`),
and then every rank connects to the next rank's listener and accepts one
connection from the previous rank: p TCP connections make the ring.

Why a sender thread: in every ring step *all* ranks send and then receive. If
sends blocked until the peer read (a full socket buffer), every rank would wait
on its neighbour and the ring would deadlock. :class:`SocketChannel` hands
outgoing frames to a background thread, so ``send`` returns at once and
``recv`` can drain the previous rank, as NCCL's proxy threads do.

A frame is an 8-byte big-endian length and the payload. Only payload bytes are
counted as traffic (by :class:`clusterlab.zero.collectives.Ring`).
"""

from __future__ import annotations

import queue
import socket
import struct
import threading

_LEN = struct.Struct(">Q")
_HELLO = struct.Struct(">I")  # the connecting rank announces itself


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            part = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise TimeoutError(f"timed out waiting for {what}") from None
        if not part:
            raise ConnectionError(f"connection closed while waiting for {what} ({len(buf)} of {n} bytes)")
        buf += part
    return bytes(buf)


class SocketChannel:
    """Frames to the next rank on ``out_sock``, frames from the previous rank on ``in_sock``."""

    def __init__(self, out_sock: socket.socket, in_sock: socket.socket, timeout: float = 60.0) -> None:
        self._out, self._in = out_sock, in_sock
        self._in.settimeout(timeout)
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._error: BaseException | None = None
        self._sender = threading.Thread(target=self._drain, name="ring-sender", daemon=True)
        self._sender.start()

    def _drain(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            try:
                self._out.sendall(_LEN.pack(len(payload)) + payload)
            except OSError as exc:  # remembered and raised in the caller's thread
                self._error = exc
                return

    def send(self, payload: bytes) -> None:
        if self._error is not None:
            raise ConnectionError(f"sending to the next rank failed: {self._error}")
        self._queue.put(bytes(payload))

    def recv(self) -> bytes:
        (n,) = _LEN.unpack(_recv_exact(self._in, _LEN.size, "a frame header from the previous rank"))
        return _recv_exact(self._in, n, "a frame from the previous rank")

    def close(self) -> None:
        """Flush pending frames, then close both sockets."""
        self._queue.put(None)
        self._sender.join(timeout=30)
        for s in (self._out, self._in):
            try:
                s.close()
            except OSError:
                pass


def open_listener(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of ``host``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(2)
    return sock


def connect_ring(
    rank: int, world_size: int, listener: socket.socket, addresses: list, timeout: float = 60.0
) -> SocketChannel:
    """Connect to rank ``rank + 1``'s listener and accept rank ``rank - 1``; ``addresses[i]`` is rank i's (host, port)."""
    nxt, prev = (rank + 1) % world_size, (rank - 1) % world_size
    host, port = addresses[nxt]
    out = socket.create_connection((host, int(port)), timeout=timeout)
    out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out.sendall(_HELLO.pack(rank))
    listener.settimeout(timeout)
    try:
        inc, _ = listener.accept()
    except TimeoutError:
        raise TimeoutError(f"rank {rank}: rank {prev} never connected within {timeout:g}s") from None
    inc.settimeout(timeout)
    (who,) = _HELLO.unpack(_recv_exact(inc, _HELLO.size, f"rank {prev}'s hello"))
    if who != prev:
        raise ConnectionError(f"rank {rank}: expected rank {prev} to connect, got rank {who}")
    listener.close()
    return SocketChannel(out, inc, timeout)


def local_ring(world_size: int, timeout: float = 60.0) -> list[SocketChannel]:
    """``world_size`` channels joined in a ring by socket pairs, for running all ranks in one process (tests)."""
    pairs = [socket.socketpair() for _ in range(world_size)]  # pair i: rank i -> rank i+1
    return [SocketChannel(pairs[r][0], pairs[(r - 1) % world_size][1], timeout) for r in range(world_size)]
