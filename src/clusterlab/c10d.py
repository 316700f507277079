"""torchrun's c10d rendezvous: nodes meet at one endpoint and are numbered when they are all in.

With ``--rdzv-backend static`` every node is told its rank (``--node-rank``) and where
node 0 is. Most real jobs use ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT``
instead, the same command on every node (``srun torchrun ...``), and let the
rendezvous number the nodes. What torch 2.13 does
(``torch/distributed/elastic/rendezvous/dynamic_rendezvous.py``,
``c10d_rendezvous_backend.py``, ``utils.py``), and what this module does too:

1. **Who hosts it.** The node whose host name or address is the endpoint's host
   (``_matches_machine_hostname``; a loopback address matches on every node), or the
   one with ``--rdzv-conf is_host=true``, binds the endpoint; if its port is already
   taken (two agents on one machine), it joins as a client, as torch's second try does.
2. **Joining.** Each node sends its *descriptor*: its address (``--local-addr``, else
   its FQDN), its launcher's pid and a local id. Once MIN nodes are in, a *last call*
   of ``last_call_timeout`` seconds (``--rdzv-conf``, default 30) waits for more; at
   MAX nodes the rendezvous completes at once. ``--rdzv-timeout`` (torch's
   ``join_timeout``) bounds the whole wait.
3. **Numbering.** Node ranks are the descriptors **in sorted order** - address, then
   pid - not the order of arrival: on one machine, the node started first usually
   becomes node 0; across hosts, the alphabetically first host does.
4. **The master.** Node 0 publishes its address and a port of its own:
   ``MASTER_ADDR``/``MASTER_PORT`` for every worker. From there on the job runs as a
   static one (:mod:`clusterlab.rendezvous`, with node 0's agent on that port).

Kept simple on purpose (the lab's list of differences says so): one round only - a
node that fails is not replaced by a new round (``--max-restarts`` restarts the same
nodes), a node that comes after completion is refused rather than kept for the next
round, and the meeting place is clusterlab's agent, not a torch ``TCPStore``.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import time

from . import protocol
from .config import DEFAULT_C10D_PORT, AgentConfig
from .errors import UsageError
from .layout import ClusterLayout
from .rendezvous import VERDICT_GRACE, listen
from .wire import FrameDecoder, ProtocolError, encode

#: A node in the rendezvous: (address, pid, local id), sorted to number the nodes (torch's _NodeDesc).
Descriptor = tuple[str, int, int]


class RendezvousFailed(Exception):
    """The rendezvous did not complete; the message says why (the launcher prints it and exits 1)."""


def endpoint(config: AgentConfig) -> tuple[str, int]:
    """``--rdzv-endpoint`` as ``(host, port)`` (torch's parse_rendezvous_endpoint, default port 29400)."""
    raw = config.rdzv_endpoint.strip()
    host, sep, port = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
    return (host or "localhost"), (int(port) if sep else DEFAULT_C10D_PORT)


def matches_this_machine(host: str) -> bool:
    """torch's ``_matches_machine_hostname``: is ``host`` a name or an address of this machine?"""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None and addr.is_loopback:
        return True
    this_host = socket.gethostname()
    if host == this_host:
        return True
    try:
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        ours = socket.getaddrinfo(this_host, None, proto=socket.IPPROTO_TCP, flags=socket.AI_CANONNAME)
    except (OSError, UnicodeError):
        return False
    return any(info[3] == host or info[4][0] in theirs or (addr and info[4][0] == str(addr)) for info in ours)


def rendezvous(config: AgentConfig, log) -> tuple[AgentConfig, int, socket.socket | None]:
    """Meet the other nodes at ``--rdzv-endpoint``; return the job's config (its node count and
    master), this node's rank, and - on node 0 - the bound listener its agent serves on.

    Raises :class:`RendezvousFailed` when the rendezvous cannot complete in time.
    """
    host, port = endpoint(config)
    addr = config.local_addr or socket.getfqdn()
    mine = listen(addr, 0)  # this node's agent will listen here if the rendezvous makes it node 0
    me: Descriptor = (addr, os.getpid(), 0)
    deadline = time.monotonic() + config.rdzv_timeout
    try:
        server = _bind(config, host, port)
        if server is not None:
            with server:
                ranks, master = _serve(server, config, me, mine.getsockname()[1], deadline, log)
            rank = ranks[me]
            nnodes = len(ranks)
        else:
            rank, nnodes, master = _join(config, host, port, me, mine.getsockname()[1], deadline, log)
    except BaseException:
        mine.close()
        raise
    if rank != 0:
        mine.close()
    log(f"c10d rendezvous complete: {nnodes} node(s); this is node{rank} (nodes are ranked by address, then pid); "
        f"master node0 at {master[0]}:{master[1]}")
    job = config._replace(layout=ClusterLayout(nnodes, config.layout.nproc_per_node),
                          master_addr=master[0], master_port=master[1])
    return job, rank, mine if rank == 0 else None


def _bind(config: AgentConfig, host: str, port: int) -> socket.socket | None:
    """The endpoint's listening socket if this node hosts the rendezvous, else None."""
    is_host = config.rdzv_is_host if config.rdzv_is_host is not None else matches_this_machine(host)
    if not is_host:
        return None
    try:
        return listen(host, port)
    except UsageError:
        if config.rdzv_is_host:  # torch: an explicit is_host=true that cannot bind is an error
            raise
        return None  # another agent of this machine got the port first: join it as a client


def _serve(server: socket.socket, config: AgentConfig, me: Descriptor, my_port: int, deadline: float,
           log) -> tuple[dict[Descriptor, int], tuple[str, int]]:
    """Host the rendezvous: collect joins until it completes; number the nodes; tell every one."""
    low, high = config.min_nodes or config.layout.nnodes, config.layout.nnodes
    host, port = server.getsockname()[:2]
    log(f"c10d rendezvous at {config.rdzv_endpoint} ({host}:{port}), hosted by this node: waiting for "
        f"{low if low == high else f'{low} to {high}'} node(s) (run id {config.run_id!r})")
    members: dict[Descriptor, tuple[socket.socket | None, int]] = {me: (None, my_port)}
    pending: dict[socket.socket, FrameDecoder] = {}
    last_call = None
    try:
        while True:
            now = time.monotonic()
            if last_call is None and len(members) >= low:  # MIN are in: a last call for more (torch's last_call)
                last_call = now + config.last_call_timeout
                if len(members) < high:
                    log(f"c10d rendezvous: {len(members)} node(s) in; waiting {config.last_call_timeout:g}s "
                        f"(last_call_timeout) for up to {high - len(members)} more")
            if len(members) >= high or (last_call is not None and now >= last_call):
                break
            if now >= deadline:
                raise RendezvousFailed(
                    f"c10d rendezvous timed out after {config.rdzv_timeout:g}s: {len(members)} of at least "
                    f"{low} node(s) joined at {config.rdzv_endpoint}; start the others with the same "
                    "--rdzv-endpoint/--rdzv-id/--nnodes, or raise --rdzv-timeout")
            wake = min(deadline, last_call or deadline) - now
            for sock in select.select([server, *pending, *(s for s, _ in members.values() if s)], [], [], wake)[0]:
                if sock is server:
                    conn, _ = server.accept()
                    conn.settimeout(5.0)
                    pending[conn] = FrameDecoder(65536)
                    continue
                joined = next((d for d, (s, _) in members.items() if s is sock), None)
                if joined is not None:  # a member says nothing until it is told its rank: readable means gone
                    del members[joined]
                    sock.close()
                    log(f"c10d rendezvous: {joined[0]} (pid {joined[1]}) left before the rendezvous completed")
                    if len(members) < low:
                        last_call = None
                    continue
                msg = _read_one(sock, pending)
                if msg is None:
                    continue
                why = _refusal(msg, config, members)
                if why:
                    _send(sock, protocol.refuse(why))
                    sock.close()
                    log(f"c10d rendezvous: refused {str(msg.get('addr', '?'))[:80]}: {why}")
                    continue
                members[(str(msg["addr"]), int(msg["pid"]), 0)] = (sock, int(msg["port"]))
        order = sorted(members)
        master = (order[0][0], members[order[0]][1])
        for rank, desc in enumerate(order):
            link = members[desc][0]
            if link is not None:
                _send(link, protocol.assign(rank, len(order), *master))
        return {desc: rank for rank, desc in enumerate(order)}, master
    finally:
        for sock in [*pending, *(s for s, _ in members.values() if s)]:
            sock.close()


def _read_one(sock: socket.socket, pending: dict) -> dict | None:
    """The join frame of a new connection once it is whole (None: not yet, or the peer gave up)."""
    try:
        data = sock.recv(65536)
        messages = pending[sock].feed(data) if data else None
    except (OSError, ProtocolError):
        messages = None
    if messages is None or (not messages and not data):
        del pending[sock]
        sock.close()
        return None
    if not messages:
        return None
    del pending[sock]
    return messages[0]


def _refusal(msg: dict, config: AgentConfig, members: dict) -> str | None:
    """Why a join does not fit this rendezvous, or None."""
    if msg.get("t") != "join" or msg.get("version") != protocol.PROTOCOL_VERSION:
        return f"not a clusterlab c10d join of protocol version {protocol.PROTOCOL_VERSION}"
    if msg.get("run_id") != config.run_id:
        return f"run id {str(msg.get('run_id'))[:80]!r} is not this rendezvous's {config.run_id!r} (use the same --rdzv-id)"
    if msg.get("nproc_per_node") != config.layout.nproc_per_node:
        return (f"--nproc-per-node {str(msg.get('nproc_per_node'))[:20]} differs from the host's "
                f"{config.layout.nproc_per_node}")
    if msg.get("nnodes") != [config.min_nodes, config.layout.nnodes]:
        return f"--nnodes {str(msg.get('nnodes'))[:40]} differs from the host's {config.min_nodes}:{config.layout.nnodes}"
    if not isinstance(msg.get("addr"), str) or not isinstance(msg.get("pid"), int) or \
            not isinstance(msg.get("port"), int) or not 0 < msg["port"] < 65536:
        return "the join is malformed"
    if (msg["addr"], msg["pid"], 0) in members:
        return "a node with this address and pid has already joined"
    return None


def _send(sock: socket.socket, msg: dict) -> None:
    try:
        sock.sendall(encode(msg))
    except OSError:
        pass


def _join(config: AgentConfig, host: str, port: int, me: Descriptor, my_port: int, deadline: float,
          log) -> tuple[int, int, tuple[str, int]]:
    """Join the rendezvous hosted at ``host:port`` (retrying until it is up); wait to be told a rank."""
    announced = False
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            break
        except socket.gaierror as exc:
            raise UsageError(f"--rdzv-endpoint host {host!r} does not resolve ({exc.strerror})") from None
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise RendezvousFailed(f"c10d rendezvous timed out after {config.rdzv_timeout:g}s: nobody hosts "
                                       f"it at {host}:{port} ({exc.strerror or exc}); start the node whose "
                                       "address that is, or raise --rdzv-timeout") from None
            if not announced:
                log(f"c10d rendezvous: waiting for its host at {host}:{port}")
                announced = True
            time.sleep(0.1)  # nothing to wait on but the port opening: retry, bounded by the deadline
    with sock:
        log(f"c10d rendezvous: joined {host}:{port}; waiting for the other nodes (run id {config.run_id!r})")
        _send(sock, protocol.join(config.run_id, config.layout.nproc_per_node, [config.min_nodes, config.layout.nnodes],
                                  me[0], me[1], my_port))
        decoder = FrameDecoder(65536)
        give_up = deadline + VERDICT_GRACE  # the host's own deadline may have started later than ours
        while True:
            left = give_up - time.monotonic()
            if left <= 0:
                raise RendezvousFailed(f"c10d rendezvous at {host}:{port} did not complete within "
                                       f"{config.rdzv_timeout:g}s; raise --rdzv-timeout, or start the missing nodes")
            if not select.select([sock], [], [], left)[0]:
                continue
            try:
                data = sock.recv(65536)
                messages = decoder.feed(data) if data else None
            except (OSError, ProtocolError):
                messages = None
            if messages is None:
                raise RendezvousFailed(f"the host of the c10d rendezvous at {host}:{port} went away before it completed")
            if not messages:
                continue
            msg = messages[0]
            if msg.get("t") != "assign":
                raise RendezvousFailed(f"the c10d rendezvous at {host}:{port} refused this node: "
                                       f"{str(msg.get('reason', msg))[:300]}")
            try:
                return int(msg["node_rank"]), int(msg["nnodes"]), (str(msg["master"][0]), int(msg["master"][1]))
            except protocol.MALFORMED:
                raise RendezvousFailed(f"the c10d rendezvous at {host}:{port} sent a malformed assignment") from None
