"""Every message of clusterlab, spelled once: what crosses a worker's pipe and what crosses TCP.

**A collective call, hop by hop** (a barrier is a gather of nothing)::

    rank  --request line-->  its node's agent  --"arrive" frame-->  the master (node 0's agent)
    rank  <--reply line----  its node's agent  <--"result" frame--  the master

1. **Worker -> agent, over the request pipe** (``CLUSTERLAB_CHANNEL`` names the
   pipes, then the rank and the world size: ``11,14,5,8``): one JSON line
   per call, :func:`request_line` / :func:`parse_request`::

       {"op":"gather","seq":3,"name":"epoch","timeout":300.0,"data":null}

2. **Agent -> master, over TCP**: the node's share of the round, once every local
   rank has arrived (or :data:`clusterlab.relay.ARRIVAL_HOLD` has passed),
   :func:`arrive` / :func:`parse_arrive`. When the ranks entered the same barrier
   (the usual case) the round is named once, then the ranks; otherwise each
   rank's call is an item::

       {"t":"arrive","attempt":0,"barrier":[3,"epoch",300.0],"ranks":[4,5,6,7]}
       {"t":"arrive","attempt":0,"items":[[4,3,"epoch",300.0,{"loss":0.5}],[5,3,"epoch",300.0,{"loss":0.7}],...]}

3. **Master -> every agent of the round, over TCP**: the outcome, :func:`result` /
   :func:`parse_result`; ``data`` is every rank's data in rank order (a barrier's
   is all nulls), or ``error`` and the ``ranks`` it is for::

       {"t":"result","attempt":0,"seq":3,"data":[null,null,null,null,null,null,null,null]}

4. **Agent -> worker, over the reply pipe**: :func:`reply_line` / :func:`parse_reply`::

       {"seq":3,"data":[null,null,null,null,null,null,null,null]}

**Fast spellings.** A barrier's messages are the same bytes but for their
numbers, and each hop costs a process woken on a busy machine, so three of them
are spelled ahead - each derived from the plain encoding here, and checked equal
to it by ``tests/test_protocol.py``:

* a worker compares what it reads with :func:`released_template` ``% seq``
  instead of decoding it (and never imports :mod:`json`, which would cost every
  worker ~10 ms of start-up);
* :func:`reply_line` writes a barrier's reply from that same template;
* a :class:`RequestReader` decodes a barrier's request line once per name and
  timeout; after that it only reads the number;
* a node that sent the master a barrier's arrivals spells the release it awaits
  (:func:`released_frame`) and compares the next frame with it instead of decoding it.

**The rest of the agents' conversation** (frames of :mod:`clusterlab.wire`; the
coordinator's table in :mod:`clusterlab.coordinator` says what each one causes):

============  =================  ================================================
frame ``t``   from -> to         fields
============  =================  ================================================
``hello``     node -> master     version, run_id, node_rank, nnodes, nproc_per_node, host
``welcome``   master -> node     hosts (every node's host name, by node rank)
``refuse``    master -> node     reason
``join``      node -> c10d host  run_id, nproc_per_node, nnodes [min, max], addr, pid, port (:mod:`clusterlab.c10d`)
``assign``    c10d host -> node  node_rank, nnodes, master [addr, port]
``hb``        both ways          (a heartbeat: nothing)
``arrive``    node -> master     attempt, barrier: [seq, name, timeout] + ranks | items: [[rank, seq, name, timeout, data], ...]
``result``    master -> node     attempt, seq, data | error + ranks
``exited``    node -> master     attempt, rank (a worker exited 0)
``failed``    node -> master     attempt, node, host, rank, local_rank, pid, returncode, time, tail
``done``      node -> master     attempt, node (all of the node's workers exited 0)
``stopped``   node -> master     attempt (stopped for a restart)
``abort``     node -> master     reason, code (the agent was interrupted)
``restart``   master -> nodes    attempt
``start``     master -> nodes    attempt
``stop``      master -> nodes    code, summary
``finish``    master -> nodes    (every worker of every node exited 0)
============  =================  ================================================
"""

from __future__ import annotations

#: bumped whenever a message changes meaning; agents of different versions refuse each other
PROTOCOL_VERSION = 4
#: what reading a message with missing or mistyped fields raises (the fault suite sends such messages)
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError)


#: One collective call of one rank: ``(seq, name, timeout, data)`` - its round number, its name, its
#: timeout in seconds and its data. A plain tuple: an agent reads thousands a second, and a class
#: (or ``collections.namedtuple``, which costs every worker ~2 ms to import) would cost each a call.
Request = tuple[int, str, float, object]


_wire = None


def _codec():
    """:mod:`clusterlab.wire` (json's C codec), imported on first use: the agents need it, a worker
    that only calls barriers never does, and an import inside each function would cost ~1 us a call."""
    global _wire
    if _wire is None:
        from . import wire as _wire
    return _wire


# ---------------------------------------------------------------------------- worker <-> agent (pipes)
# Characters a name may have to be spelled without the json module (no quote, no backslash, no control).
_PLAIN = frozenset(" !#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~")


def request_template(name: str, timeout: float) -> bytes | None:
    """``request_line(seq, name, timeout)`` with ``%d`` for ``seq``, or None when it cannot be
    spelled by hand: a worker keeps one per barrier and only formats the number."""
    if not _PLAIN.issuperset(name) or not timeout < float("inf"):
        return None
    return b'{"op":"gather","seq":%%d,"name":"%s","timeout":%r,"data":null}\n' % (name.encode(), timeout)


def request_line(seq: int, name: str, timeout: float, data: object = None) -> bytes:
    """A rank's request, one JSON line. A barrier with a plain name is spelled by hand (the json
    module costs a worker ~10 ms to import); anything else goes through ``json.dumps``."""
    if data is None and _PLAIN.issuperset(name) and timeout < float("inf"):
        return b'{"op":"gather","seq":%d,"name":"%s","timeout":%r,"data":null}\n' % (seq, name.encode(), timeout)
    import json

    request = {"op": "gather", "seq": seq, "name": name, "timeout": timeout, "data": data}
    return json.dumps(request, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes) -> Request:
    """The agent's reading of a request line; ``ValueError`` if it is not one."""
    try:
        req: dict = _codec().loads(line)  # (not a dict: the TypeError below)
        seq, name, timeout, data = int(req["seq"]), str(req["name"]), float(req["timeout"]), req.get("data")
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"not a collective request ({type(exc).__name__})") from None
    if seq < 0 or not timeout > 0:
        raise ValueError(f"seq {seq} or timeout {timeout} out of range")
    return seq, name, timeout, data


class RequestReader:
    """:func:`parse_request` for one agent, which decodes a barrier's line once per name and timeout.

    A barrier's request differs from the last one of the same name only in its
    number: the bytes after ``"seq":N`` are remembered (up to :attr:`LIMIT` names)
    with the name and timeout they spell, and a line that ends with known bytes is
    read as its number and those.
    """

    LIMIT = 256
    _HEAD = b'{"op":"gather","seq":'

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[str, float]] = {}

    def parse(self, line: bytes) -> Request:
        comma = line.find(b",", 21)  # (21 = len(_HEAD): where the number starts)
        known = self._known.get(line[comma:])
        if known is not None and line[21:comma].isdigit() and line.startswith(self._HEAD):
            return int(line[21:comma]), known[0], known[1], None
        seq, name, timeout, data = request = parse_request(line)
        if data is None and len(self._known) < self.LIMIT and line == request_line(seq, name, timeout):
            self._known[line[comma:]] = (name, timeout)
        return request


def reply_line(seq: int, data: list | None = None, error: str | None = None) -> bytes:
    """The agent's answer to a rank: the gathered data, or the error that rank must raise."""
    if error is None and data is not None and data.count(None) == len(data):
        template = _released.get(len(data)) or _released.setdefault(len(data), released_template(len(data)))
        return template % seq  # a barrier's reply
    return _codec().dumps({"seq": seq, "error": error} if error is not None else {"seq": seq, "data": data}) + b"\n"


def released_template(world_size: int) -> bytes:
    """``reply_line(seq, [None] * world_size)`` with ``%d`` for ``seq``: a barrier's reply, spelled ahead."""
    return b'{"seq":%d,"data":[' + b",".join([b"null"] * world_size) + b"]}\n"


_released: dict[int, bytes] = {}  # world size -> released_template(world size)

def parse_reply(line: bytes) -> tuple[int, object, str | None]:
    """``(seq, data, error)`` of a reply line."""
    import json

    reply = json.loads(line)
    return reply["seq"], reply.get("data"), reply.get("error")


# ---------------------------------------------------------------------------- agent <-> master (frames)
def hello(run_id: str, node_rank: int, nnodes: int, nproc_per_node: int, host: str) -> dict:
    return {"t": "hello", "version": PROTOCOL_VERSION, "run_id": run_id, "node_rank": node_rank, "nnodes": nnodes,
            "nproc_per_node": nproc_per_node, "host": host}


def welcome(hosts: list[str]) -> dict:
    return {"t": "welcome", "hosts": hosts}


def refuse(reason: str) -> dict:
    return {"t": "refuse", "reason": reason}


def join(run_id: str, nproc_per_node: int, nnodes: list, addr: str, pid: int, port: int) -> dict:
    """A node's request to join a c10d rendezvous: its descriptor (addr, pid) and its agent's port."""
    return {"t": "join", "version": PROTOCOL_VERSION, "run_id": run_id, "nproc_per_node": nproc_per_node,
            "nnodes": nnodes, "addr": addr, "pid": pid, "port": port}


def assign(node_rank: int, nnodes: int, master_addr: str, master_port: int) -> dict:
    """The c10d host's answer once the rendezvous completes: this node's rank, and where node 0 is."""
    return {"t": "assign", "node_rank": node_rank, "nnodes": nnodes, "master": [master_addr, master_port]}


HEARTBEAT = {"t": "hb"}


def arrive(attempt: int, items: list[Request], ranks: list[int]) -> dict:
    """A node's share of collective rounds: ``items[i]`` is the call of rank ``ranks[i]``."""
    first = items[0]
    if first[3] is None and items.count(first) == len(items):  # the same barrier
        return {"t": "arrive", "attempt": attempt, "barrier": list(first[:3]), "ranks": ranks}
    return {"t": "arrive", "attempt": attempt, "items": [[rank, *r] for rank, r in zip(ranks, items)]}


def parse_arrive(msg: dict, ranks: range) -> tuple[list[int], Request] | list[tuple[int, Request]]:
    """A node's arrivals, checked to be collective calls of its ``ranks`` (``ValueError`` if not):
    ``(ranks, request)`` when they all entered one barrier, else ``(rank, request)`` per item."""
    if "barrier" in msg:
        (seq, name, timeout), who = msg["barrier"], msg["ranks"]
        if not isinstance(who, list) or not who or min(who) not in ranks or max(who) not in ranks \
                or len(set(who)) < len(who):
            raise ValueError(f"ranks {str(who)[:40]} are not ranks of this node")
        return who, _request(seq, name, timeout, None)
    return [(rank, _request(seq, name, timeout, data)) if rank in ranks else _not_ours(rank)
            for rank, seq, name, timeout, data in msg["items"]]


def _request(seq: object, name: object, timeout: object, data: object) -> Request:
    if not isinstance(seq, int) or not isinstance(name, str) or not isinstance(timeout, (int, float)):
        raise ValueError(f"seq {seq!r} name {str(name)[:40]!r} timeout {timeout!r} is not a collective call")
    return seq, name, float(timeout), data


def _not_ours(rank: object) -> tuple[int, Request]:
    raise ValueError(f"rank {rank!r} is not a rank of this node")


def result(attempt: int, seq: int, data: list | None = None, error: str | None = None,
           ranks: tuple[int, ...] = ()) -> dict:
    """The outcome of round ``seq``: everyone's ``data`` in rank order, or ``error`` for ``ranks``."""
    if error is not None:
        return {"t": "result", "attempt": attempt, "seq": seq, "error": error, "ranks": list(ranks)}
    return {"t": "result", "attempt": attempt, "seq": seq, "data": data}


def parse_result(msg: dict) -> tuple[int, list | None, str | None, frozenset[int] | None]:
    """``(seq, data, error, ranks)``: ``ranks`` is None when the result is for everyone."""
    seq = msg["seq"]
    if not isinstance(seq, int):
        raise ValueError(f"seq {seq!r} is not a round number")
    if "error" in msg:
        return seq, None, str(msg["error"]), frozenset(msg.get("ranks", ()))
    data = msg["data"]
    if not isinstance(data, list):
        raise ValueError("a result's data must be a list")
    return seq, data, None, None


def released_frame(attempt: int, seq: int, world_size: int) -> bytes:
    """``wire.encode(result(attempt, seq, [None] * world_size))``: a barrier's release, spelled ahead."""
    body = b'{"t":"result","attempt":%d,"seq":%d,"data":[' % (attempt, seq) + b",".join([b"null"] * world_size) + b"]}"
    return len(body).to_bytes(4, "big") + body


def exited(attempt: int, rank: int) -> dict:
    return {"t": "exited", "attempt": attempt, "rank": rank}


def failed(attempt: int, node: int, host: str, rank: int, local_rank: int, pid: int, returncode: int,
           time: float, tail: list[str]) -> dict:
    return {"t": "failed", "attempt": attempt, "node": node, "host": host, "rank": rank, "local_rank": local_rank,
            "pid": pid, "returncode": returncode, "time": time, "tail": tail}


def done(attempt: int, node: int) -> dict:
    return {"t": "done", "attempt": attempt, "node": node}


def stopped(attempt: int) -> dict:
    return {"t": "stopped", "attempt": attempt}


def abort(reason: str, code: int) -> dict:
    return {"t": "abort", "reason": reason, "code": code}


def restart(attempt: int) -> dict:
    return {"t": "restart", "attempt": attempt}


def start(attempt: int) -> dict:
    return {"t": "start", "attempt": attempt}


def stop(code: int, summary: str) -> dict:
    return {"t": "stop", "code": code, "summary": summary}


FINISH = {"t": "finish"}
