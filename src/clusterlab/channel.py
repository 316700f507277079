"""The worker's side of clusterlab's collectives: barrier and all_gather_object.

Under ``clusterlab launch`` / ``simulate`` every worker inherits two pipes from
its node agent; ``CLUSTERLAB_CHANNEL`` names them, then the worker's rank and the
world size (``REQUEST_FD,REPLY_FD,RANK,WORLD_SIZE``). A collective call
is one request line to the agent and one reply line back
(:mod:`clusterlab.protocol` spells both):

1. **inside the node** the agent collects its workers' requests from their pipes
   (:mod:`clusterlab.relay`);
2. **across nodes** the agents forward them over TCP to the master agent (node 0),
   which holds the round until every rank of every node has arrived
   (:mod:`clusterlab.coordinator`, :mod:`clusterlab.barrier`);
3. the result travels back the same way: master -> agents (TCP) -> workers (pipes).

Under real ``torchrun`` with ``torch.distributed`` initialised, the same calls
use ``torch.distributed.barrier()`` and ``all_gather_object``, so a lab script
runs unchanged on a real cluster.

A process has one channel to its agent, as it has one default process group
under torch.distributed: :func:`barrier` and :func:`all_gather_object` use the
one :func:`default_channel` opens on first use.
"""

from __future__ import annotations

import os
import select
import time

from . import protocol
from .errors import BarrierError

#: default seconds a collective waits for every rank (``CLUSTERLAB_BARRIER_TIMEOUT`` overrides)
DEFAULT_TIMEOUT = 300.0
#: extra seconds the worker waits for its agent's answer beyond the round's own timeout
AGENT_GRACE = 15.0
_DAY = 86400.0


class Channel:
    """One worker's pipes to its node agent, as ``CLUSTERLAB_CHANNEL`` (``spec``) describes them."""

    def __init__(self, spec: str, trace: str | None = None, default_timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            self.wfd, self.rfd, self.rank, world_size = (int(x) for x in spec.split(","))
            os.fstat(self.wfd), os.fstat(self.rfd)
        except (ValueError, OSError):
            raise BarrierError(
                f"CLUSTERLAB_CHANNEL={spec!r} does not name this process's pipes to its agent; "
                "only the workers the launcher started (not their children) can call collectives"
            ) from None
        self.trace, self.default_timeout = trace, default_timeout
        self.seq = 0  # this rank's next round
        self.buf = b""  # what was read past the last reply line
        self.poller = select.poll()
        self.poller.register(self.rfd, select.POLLIN)
        #: a barrier's reply, but for its round number: compared, never decoded
        self.released = protocol.released_template(world_size)
        self._templates: dict[str, tuple[float, bytes | None]] = {}  # barrier name -> (timeout, its request)

    def call(self, name: str, timeout: float, data: object = None, barrier: bool = False) -> list | None:
        """One collective round: send this rank's request, wait for the reply, return the gathered data."""
        seq, self.seq = self.seq, self.seq + 1
        arrive = time.time() if self.trace else 0.0
        template = self._templates.get(name) if barrier else None
        if template is None or template[0] != timeout:
            template = timeout, protocol.request_template(name, timeout) if barrier else None
            if template[1] and len(self._templates) < 64:
                self._templates[name] = template
        line = template[1] % seq if template[1] else protocol.request_line(seq, name, timeout, data)
        try:
            written = os.write(self.wfd, line)  # (a pipe takes a short line whole)
            if written < len(line):
                _write_all(self.wfd, line[written:])
        except BrokenPipeError:
            raise BarrierError("the node agent is gone (its pipe is closed)") from None
        reply = self._read_line(timeout + AGENT_GRACE, name)
        if barrier and reply == self.released % seq:  # a barrier's release needs no json (~10 ms to import)
            gathered, error = None, None
        else:
            _, gathered, error = protocol.parse_reply(reply)
        if self.trace:
            self._record(name, seq, arrive, time.time(), error)
        if error is not None:
            raise BarrierError(f"rank {self.rank}: {error}")
        return gathered  # type: ignore[return-value]

    def _read_line(self, wait: float, name: str) -> bytes:
        """The agent's next reply line (with its newline); an error if none comes within ``wait``
        seconds (``inf``: no deadline)."""
        if not self.buf and wait < _DAY:  # the usual case: the reply comes whole, in one read
            if not self.poller.poll(wait * 1000):
                raise BarrierError(self._late(name, wait))
            chunk = os.read(self.rfd, 1 << 16)
            if chunk.find(b"\n") == len(chunk) - 1 and chunk:
                return chunk
            self.buf = chunk
            if not chunk:
                raise BarrierError(f"rank {self.rank}: the node agent closed the channel during barrier {name!r}")
        deadline = time.monotonic() + wait
        while True:
            end = self.buf.find(b"\n") + 1
            if end:
                line, self.buf = self.buf[:end], self.buf[end:]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise BarrierError(self._late(name, wait))
            if not self.poller.poll(min(left, _DAY) * 1000):  # (poll's milliseconds are a C int)
                continue
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise BarrierError(f"rank {self.rank}: the node agent closed the channel during barrier {name!r}")
            if not self.buf and chunk.find(b"\n") == len(chunk) - 1:
                return chunk  # the usual case: the reply came as one whole line
            self.buf += chunk

    def _late(self, name: str, wait: float) -> str:
        return f"rank {self.rank}: no answer from the node agent for barrier {name!r} within {wait:g}s"

    def _record(self, name: str, seq: int, arrive: float, leave: float, error: str | None) -> None:
        """One trace event (``--barrier-trace``): when this rank arrived at and left round ``seq``."""
        import json

        from .env import read_env

        view = read_env()
        event = {"rank": self.rank, "node": view.node_rank, "local_rank": view.local_rank,
                 "attempt": view.restart_count, "name": name, "seq": seq, "arrive": arrive, "leave": leave}
        if error:
            event["error"] = error
        # one O_APPEND write per event: lines from concurrent ranks never interleave
        fd = os.open(self.trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # type: ignore[arg-type]
        try:
            os.write(fd, json.dumps(event).encode() + b"\n")
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_default: Channel | None = None


def default_channel() -> Channel | None:
    """This process's channel to its agent, opened on first use; None outside clusterlab's launcher."""
    global _default
    if _default is None:
        spec = os.environ.get("CLUSTERLAB_CHANNEL")
        if not spec:
            return None
        _default = Channel(spec, os.environ.get("CLUSTERLAB_TRACE"), _timeout(None))
    return _default


def _torch_dist():
    """``torch.distributed`` if it is imported and initialised in this process, else None."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        raw = os.environ.get("CLUSTERLAB_BARRIER_TIMEOUT", str(DEFAULT_TIMEOUT))
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"CLUSTERLAB_BARRIER_TIMEOUT={raw!r} is not a number of seconds") from None
    if not timeout > 0:  # (nan too)
        raise ValueError(f"timeout={timeout!r} must be a positive number of seconds (float('inf'): no deadline)")
    return float(timeout)


def all_gather_object(obj: object, name: str | None = None, timeout: float | None = None) -> list:
    """Gather one JSON-serialisable object from every rank; every rank gets the list in rank order.

    Blocks until all ranks called it (it is a barrier that carries data). Raises
    :class:`~clusterlab.errors.BarrierError` on timeout or when ranks called
    differently named collectives.
    """
    channel = default_channel()
    if channel is None:
        dist = _torch_dist()
        if dist is None:
            raise BarrierError(_NO_LAUNCHER)
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return channel.call(name or "", channel.default_timeout if timeout is None else _timeout(timeout), obj) or []


def barrier(name: str | None = None, timeout: float | None = None) -> None:
    """Block until every rank of the job has reached this barrier.

    ``name`` labels the barrier in traces and errors: ranks that reach
    differently named barriers get a :class:`~clusterlab.errors.BarrierError`
    naming both, instead of a hang. ``timeout`` (seconds, default 300 or
    ``CLUSTERLAB_BARRIER_TIMEOUT``; ``float("inf")`` for none) bounds the wait;
    the error names the ranks, and their nodes, that never arrived.

    Under clusterlab's launcher the barrier runs over the agents' pipes and TCP;
    under torchrun with ``torch.distributed`` initialised it is
    ``torch.distributed.barrier()``.
    """
    channel = _default or default_channel()
    if channel is None:
        dist = _torch_dist()
        if dist is None:
            raise BarrierError(_NO_LAUNCHER)
        dist.barrier()
        return
    channel.call(name or "", channel.default_timeout if timeout is None else _timeout(timeout), barrier=True)


_NO_LAUNCHER = (
    "clusterlab.barrier() needs a launcher: run this script under `clusterlab launch` or "
    "`clusterlab simulate`, or call torch.distributed.init_process_group() first when running under torchrun"
)
