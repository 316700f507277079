"""The worker's side of clusterlab's collectives: barrier and all_gather_object.

Under ``clusterlab launch`` / ``simulate`` every worker inherits two pipes from
its node agent (their numbers are in ``CLUSTERLAB_CHANNEL``). A collective call
writes one JSON line to the agent and blocks reading the answer:

1. **inside the node** the agent collects its workers' arrivals from their pipes;
2. **across nodes** the agents forward them over TCP to the master agent (node 0),
   which holds the round until every rank of every node has arrived;
3. the release travels back the same way: master -> agents (TCP) -> workers (pipes).

Under real ``torchrun`` with ``torch.distributed`` initialised, the same calls
use ``torch.distributed.barrier()`` and ``all_gather_object``, so a lab script
runs unchanged on a real cluster.
"""

from __future__ import annotations

import os
import select
import time

from .errors import BarrierError

#: default seconds a collective waits for every rank (``CLUSTERLAB_BARRIER_TIMEOUT`` overrides)
DEFAULT_TIMEOUT = 300.0
#: extra seconds the worker waits for its agent's answer beyond the round's own timeout
_AGENT_GRACE = 15.0


class _Channel:
    def __init__(self, spec: str) -> None:
        try:
            self.wfd, self.rfd = (int(x) for x in spec.split(","))
            os.fstat(self.wfd), os.fstat(self.rfd)
        except (ValueError, OSError):
            raise BarrierError(
                f"CLUSTERLAB_CHANNEL={spec!r} does not name this process's pipes to its agent; "
                "only the workers the launcher started (not their children) can call collectives"
            ) from None
        self.seq = 0
        self.buf = b""
        self.trace = os.environ.get("CLUSTERLAB_TRACE")
        self.rank = int(os.environ.get("RANK", "-1"))
        self.world = int(os.environ.get("WORLD_SIZE", "0"))
        self.poller = select.poll()
        self.poller.register(self.rfd, select.POLLIN)
        self._requests: dict = {}  # name -> (timeout, request line with %d for its seq, wait in ms)
        self._again: dict = {}  # name -> plain(name)
        self.default_timeout = _resolve_timeout(None)

    def barrier(self, name: str, timeout: float) -> None:
        request = self._requests.get(name)
        if request is None or request[0] != timeout or self.trace or self.buf:
            self.gather(name, timeout, None, barrier=True)
            return
        again = self._again.get(name)
        if again is None:
            again = self._again[name] = self.plain(name)
        again()

    def plain(self, name: str):
        """The hot path of :func:`barrier`, once barrier ``name`` has been called: a function
        that makes the call again - one write, one wait, one read, no json.

        A barrier's cost on a busy machine is mostly its processes' wake-ups, and
        each wake-up costs more the more code and objects it touches (the caches
        are cold: the other ranks ran in between), so everything this path needs is
        bound once, here; anything unusual (a trace, an error, a partial line) takes
        the general path.
        """
        timeout, template, wait = self._requests[name]
        write, read, poll, wfd, rfd = os.write, os.read, self.poller.poll, self.wfd, self.rfd
        # the agent's whole answer when the barrier is released: the world's results, all null
        released = b'{"seq":%d,"data":[' + b",".join([b"null"] * self.world) + b"]}\n"

        def again() -> None:
            if self.buf or self.trace:
                self.gather(name, timeout, None, barrier=True)
                return
            seq = self.seq
            self.seq = seq + 1
            try:
                write(wfd, template % seq)
            except BrokenPipeError:
                raise BarrierError("the node agent is gone (its pipe is closed)") from None
            expected = released % seq  # spelled while the other ranks are still coming
            if not poll(wait):
                raise BarrierError(self._no_answer(name, timeout + _AGENT_GRACE))
            line = read(rfd, 65536)
            if line == expected:
                return  # released
            self.buf = line
            line = self._read_line(timeout + _AGENT_GRACE, name)
            if not line.startswith(b'{"seq":%d,"data":' % seq):
                self._check(_loads(line))

        return again

    def gather(self, name: str, timeout: float, data: object, barrier: bool = False) -> list | None:
        seq, self.seq = self.seq, self.seq + 1
        arrive = time.time()
        line = _request_line(seq, name, timeout, data)
        if barrier and line.endswith(b',"data":null}\n') and len(self._requests) < 64:
            # the same barrier again needs only its number changed: keep the line as a template
            template = line.replace(b"%", b"%%").replace(b'"seq":%d,' % seq, b'"seq":%d,', 1)
            self._requests[name] = (timeout, template, (timeout + _AGENT_GRACE) * 1000)
        try:
            os.write(self.wfd, line) if len(line) <= 4096 else _write_all(self.wfd, line)
        except BrokenPipeError:
            raise BarrierError("the node agent is gone (its pipe is closed)") from None
        line = self._read_line(timeout + _AGENT_GRACE, name)
        # a barrier's release needs no decoding: importing json would cost a worker ~10 ms of start-up
        reply = _RELEASED if barrier and line.startswith(b'{"seq":%d,"data":' % seq) else _loads(line)
        leave = time.time()
        if self.trace:
            self._record(name, seq, arrive, leave, reply.get("error"))
        self._check(reply)
        return reply["data"]

    def _check(self, reply: dict) -> None:
        if "error" in reply:
            raise BarrierError(f"rank {self.rank}: {reply['error']}")

    def _no_answer(self, name: str, wait: float) -> str:
        return f"rank {self.rank}: no answer from the node agent for barrier {name!r} within {wait:g}s"

    def _read_line(self, wait: float, name: str) -> bytes:
        """The agent's next answer line; an error if none comes within ``wait`` seconds."""
        deadline = 0.0
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 1:]
                return line
            if not deadline:
                deadline = time.monotonic() + wait
            left = deadline - time.monotonic()
            if left <= 0 or not self.poller.poll(left * 1000):
                raise BarrierError(self._no_answer(name, wait))
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise BarrierError(f"rank {self.rank}: the node agent closed the channel during barrier {name!r}")
            self.buf += chunk

    def _record(self, name: str, seq: int, arrive: float, leave: float, error: str | None) -> None:
        event = {
            "rank": self.rank,
            "node": int(os.environ.get("GROUP_RANK", "0")),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
            "attempt": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "name": name,
            "seq": seq,
            "arrive": arrive,
            "leave": leave,
        }
        if error:
            event["error"] = error
        import json

        # one O_APPEND write per event: lines from concurrent ranks never interleave
        fd = os.open(self.trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, json.dumps(event).encode() + b"\n")
        finally:
            os.close(fd)


#: what a barrier's release stands for, undecoded
_RELEASED = {"data": None}
_PLAIN = frozenset(" !#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~")


def _request_line(seq: int, name: str, timeout: float, data: object) -> bytes:
    """One JSON request line. A barrier with a plain name is spelled by hand: importing
    json (which pulls in re and enum) would cost every worker ~10 ms of CPU at start-up,
    as much as the rest of its interpreter's start."""
    if data is None and timeout < 1e300 and _PLAIN.issuperset(name):
        return b'{"op":"gather","seq":%d,"name":"%s","timeout":%r,"data":null}\n' % (seq, name.encode(), timeout)
    request = {"op": "gather", "seq": seq, "name": name, "timeout": timeout, "data": data}
    import json

    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def _loads(line: bytes) -> dict:
    import json

    return json.loads(line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_channel: _Channel | None = None


def _get_channel() -> _Channel | None:
    global _channel
    if _channel is None:
        spec = os.environ.get("CLUSTERLAB_CHANNEL")
        if spec:
            _channel = _Channel(spec)
    return _channel


def _torch_dist():
    """``torch.distributed`` if it is imported and initialised in this process, else None."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist
    return None


def _resolve_timeout(timeout: float | None) -> float:
    if timeout is None:
        timeout = float(os.environ.get("CLUSTERLAB_BARRIER_TIMEOUT", DEFAULT_TIMEOUT))
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r} must be a positive number of seconds")
    return float(timeout)


def all_gather_object(obj: object, name: str | None = None, timeout: float | None = None) -> list:
    """Gather one JSON-serialisable object from every rank; every rank gets the list in rank order.

    Blocks until all ranks called it (it is a barrier that carries data). Raises
    :class:`~clusterlab.errors.BarrierError` on timeout or when ranks called
    differently named collectives.
    """
    channel = _get_channel()
    if channel is None:
        dist = _torch_dist()
        if dist is None:
            raise BarrierError(_NO_LAUNCHER)
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return channel.gather(name or "", _resolve_timeout(timeout), obj)


def barrier(name: str | None = None, timeout: float | None = None) -> None:
    """Block until every rank of the job has reached this barrier.

    ``name`` labels the barrier in traces and errors: ranks that reach
    differently named barriers get a :class:`~clusterlab.errors.BarrierError`
    naming both, instead of a hang. ``timeout`` (seconds, default 300 or
    ``CLUSTERLAB_BARRIER_TIMEOUT``) bounds the wait; the error names the ranks,
    and their nodes, that never arrived.

    Under clusterlab's launcher the barrier runs over the agents' pipes and TCP;
    under torchrun with ``torch.distributed`` initialised it is
    ``torch.distributed.barrier()``.
    """
    if timeout is None:
        again = _plain.get(name)
        if again is not None:
            again()
            return
    channel = _channel or _get_channel()
    if channel is None:
        dist = _torch_dist()
        if dist is None:
            raise BarrierError(_NO_LAUNCHER)
        dist.barrier()
        return
    if timeout is not None:
        channel.barrier(name or "", _resolve_timeout(timeout))
        return
    channel.barrier(name or "", channel.default_timeout)
    if (name or "") in channel._again and len(_plain) < 64:
        _plain[name] = channel._again[name or ""]


#: barrier(name) with the default timeout, once called: name -> the function that calls it again
_plain: dict = {}


_NO_LAUNCHER = (
    "clusterlab.barrier() needs a launcher: run this script under `clusterlab launch` or "
    "`clusterlab simulate`, or call torch.distributed.init_process_group() first when running under torchrun"
)
