"""The launcher's configuration: torchrun's flags, checked once and frozen into an :class:`AgentConfig`.

The pipeline is torchrun's (``torch/distributed/run.py``)::

    parser = argparse.ArgumentParser(); add_launch_args(parser, with_node_rank=True)
    args = parser.parse_args(argv)          # strings, as typed
    config = config_from_args(args)         # checked, typed, frozen; args is never changed
    run.launch(config, node_rank_from_args(args, config))

Every agent, worker group and rendezvous reads the same :class:`AgentConfig`;
nobody re-parses a flag or mutates the parsed arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import namedtuple

from .errors import UsageError
from .layout import ClusterLayout

#: torchrun's default ``--master-port`` (and the port torch's TCPStore uses by default)
DEFAULT_MASTER_PORT = 29500
#: torch's default port of a c10d ``--rdzv-endpoint`` given without one (c10d_rendezvous_backend.DEFAULT_PORT)
DEFAULT_C10D_PORT = 29400
#: torchrun's rendezvous backends; clusterlab runs these two
RDZV_BACKENDS = ("static", "c10d")
#: the most nodes and workers one job may ask for: a fork per node and a process per rank must fit
#: the machine (``--nnodes 100000`` would fork agents until fork fails)
MAX_NNODES = 1024
MAX_NPROC_PER_NODE = 1024
MAX_WORLD_SIZE = 8192

_STREAMS = {0: frozenset(), 1: frozenset({"stdout"}), 2: frozenset({"stderr"}), 3: frozenset({"stdout", "stderr"})}


class AgentConfig(namedtuple("AgentConfig", "layout argv master_addr master_port run_id role max_restarts rdzv_timeout "
                             "log_dir console_streams local_ranks_filter barrier_trace term_timeout heartbeat_timeout "
                             "rdzv_backend rdzv_endpoint min_nodes last_call_timeout rdzv_is_host local_addr",
                             defaults=(
        "127.0.0.1", DEFAULT_MASTER_PORT, "none", "default", 0, 300.0, None, frozenset({"stdout", "stderr"}),
        None, None, 5.0, 15.0, "static", "", None, 30.0, None, None))):
    """Everything an agent needs to know about its job, as one immutable value.

    ``layout`` and ``argv`` (the worker command) are required; the rest default
    as torchrun's flags do. A named tuple, not a dataclass: every launcher process
    builds one, and ``dataclasses`` (with ``inspect``) would cost each ~15 ms of imports.

    With ``rdzv_backend="c10d"`` the node count is not known until the rendezvous
    completes: ``layout.nnodes`` is then the most nodes the job accepts (``--nnodes
    MIN:MAX``'s MAX) and :mod:`clusterlab.c10d` replaces it, with the master's address.
    """

    __slots__ = ()
    layout: ClusterLayout
    argv: tuple[str, ...]
    master_addr: str
    master_port: int
    run_id: str
    role: str
    max_restarts: int
    rdzv_timeout: float
    log_dir: str | None
    console_streams: frozenset[str]  # which of stdout/stderr the console shows (the rest: log files only)
    local_ranks_filter: frozenset[int] | None  # the local ranks shown on the console (None: all)
    barrier_trace: str | None  # an absolute path: workers may run in another directory
    term_timeout: float  # seconds between SIGTERM and SIGKILL
    heartbeat_timeout: float  # a peer silent this long is lost (CLUSTERLAB_HEARTBEAT_TIMEOUT)
    rdzv_backend: str  # "static" (node ranks given) or "c10d" (assigned when the rendezvous completes)
    rdzv_endpoint: str  # c10d: HOST:PORT where the rendezvous is held
    min_nodes: int | None  # c10d: the fewest nodes the job starts with (--nnodes MIN:MAX)
    last_call_timeout: float  # c10d: once MIN nodes are in, how long to wait for more (--rdzv-conf)
    rdzv_is_host: bool | None  # c10d: whether this node hosts the rendezvous (None: if the endpoint is local)
    local_addr: str | None  # c10d: this node's address in the rendezvous (default: its FQDN)


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> argparse.Action:
    """Add ``--name-with-dashes`` and torchrun's ``--name_with_underscores`` spelling."""
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    return parser.add_argument(*spellings, **kwargs)


def add_launch_args(parser: argparse.ArgumentParser, *, with_node_rank: bool) -> None:
    """The torchrun flags shared by ``launch`` and ``simulate``."""
    _flag(parser, "nnodes", default="1",
          help="number of nodes, N, or MIN:MAX (c10d: start with MIN to MAX nodes; static: wait for MAX) (default: 1)")
    _flag(parser, "nproc-per-node", default="1",
          help="workers per node: a number, 'cpu' or 'auto' (this machine's CPU count), 'gpu' (none here) (default: 1)")
    if with_node_rank:
        _flag(parser, "node-rank", type=int, default=0,
              help="this node's rank, 0..nnodes-1; 0 is the master; static rendezvous only (default: 0)")
        parser.add_argument("--standalone", action="store_true",
                            help="single-node job on a free local port (sets --nnodes 1, --master-port 0)")
        _flag(parser, "rdzv-backend", default="static",
              help="static (node ranks given, node 0 at --master-addr) or c10d (ranks assigned when the "
              "nodes meet at --rdzv-endpoint) (default: static)")
        _flag(parser, "rdzv-endpoint", default="",
              help=f"c10d: HOST[:PORT] of the rendezvous; the node whose address it is hosts it (default port "
              f"{DEFAULT_C10D_PORT})")
        _flag(parser, "rdzv-conf", default="",
              help="c10d: KEY=VALUE,... among join_timeout, last_call_timeout (default 30), is_host")
        _flag(parser, "local-addr", default=None,
              help="c10d: this node's address, which orders the nodes' ranks (default: its FQDN)")
    _flag(parser, "master-addr", default="127.0.0.1",
          help="address of node 0, where its agent listens (default: 127.0.0.1)")
    _flag(parser, "master-port", type=int, default=None,
          help=f"port of node 0's agent, then of torch's TCPStore; 0 picks a free one (default: {DEFAULT_MASTER_PORT}; "
          "a single-node job without it gets a free one, as under torchrun)")
    _flag(parser, "max-restarts", type=int, default=0,
          help="restart the whole world up to this many times on failure (default: 0)")
    parser.add_argument("--role", default="default", help="ROLE_NAME given to workers (default: default)")
    _flag(parser, "rdzv-id", default="none",
          help="run id; agents with another id are refused (TORCHELASTIC_RUN_ID) (default: none)")
    _flag(parser, "rdzv-timeout", type=float, default=300.0, help="seconds to wait for every node to join (default: 300)")
    _flag(parser, "log-dir", default=None,
          help="also write each worker's output to DIR/attempt_K/nodeN/LOCAL_RANK/{stdout,stderr}.log")
    parser.add_argument("-r", "--redirects", default="0",
                        help="streams sent to the log files only, not the console: "
                        "0 none, 1 stdout, 2 stderr, 3 both (needs --log-dir)")
    parser.add_argument("-t", "--tee", default="0",
                        help="accepted for torchrun compatibility: with --log-dir clusterlab always tees to files and console")
    _flag(parser, "local-ranks-filter", default="",
          help="show only these local ranks on the console, e.g. 0,2 (files keep all)")
    _flag(parser, "barrier-trace", default=None,
          help="append one JSON line per rank per barrier (arrive/leave times) to FILE")
    _flag(parser, "term-timeout", type=float, default=5.0,
          help="seconds between SIGTERM and SIGKILL when stopping workers (default: 5)")
    parser.add_argument("-m", "--module", action="store_true", help="run the script as a module: python -m SCRIPT")
    _flag(parser, "no-python", action="store_true", help="run SCRIPT as an executable, not with python")
    parser.add_argument("script", help="the worker script (or module with -m, or executable with --no-python)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")


def _int_flag(name: str, raw: str, fix: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number; {fix}") from None


def _nnodes(raw: str) -> tuple[int, int]:
    """``--nnodes N`` or ``MIN:MAX`` -> ``(min, max)``, as torchrun's parse_min_max_nnodes reads it."""
    parts = str(raw).split(":")
    if len(parts) > 2:
        raise UsageError(f"--nnodes={raw!r} is not N or MIN:MAX; use e.g. 2 or 1:4")
    lo = _int_flag("--nnodes", parts[0], "use a number of nodes such as 2, or MIN:MAX such as 1:4")
    hi = _int_flag("--nnodes", parts[-1], "use a number of nodes such as 2, or MIN:MAX such as 1:4")
    if len(parts) == 1 and lo < 1:
        raise UsageError(f"--nnodes={raw} must be at least 1")
    if not 0 < lo <= hi:
        raise UsageError(f"--nnodes={raw} needs 0 < MIN <= MAX; use e.g. 1:4")
    return lo, hi


def _nproc(raw: str) -> int:
    if raw in ("cpu", "auto"):
        return os.cpu_count() or 1
    if raw == "gpu":  # torchrun: ValueError("Cuda is not available.")
        raise UsageError("--nproc-per-node=gpu: CUDA is not available here (torchrun refuses it too); "
                         "give a number such as 4, or 'cpu'")
    return _int_flag("--nproc-per-node", raw, "use a number such as 4, or 'cpu'")


def _streams(raw: str, flag: str) -> frozenset[str]:
    try:
        value = int(raw)
        if value in _STREAMS:
            return _STREAMS[value]
    except ValueError:
        pass
    raise UsageError(f"{flag}={raw!r} is not one of 0 (none), 1 (stdout), 2 (stderr), 3 (both)")


def _layout(nnodes: int, nproc: int) -> ClusterLayout:
    layout = ClusterLayout(nnodes, nproc)
    if nnodes > MAX_NNODES or nproc > MAX_NPROC_PER_NODE or layout.world_size > MAX_WORLD_SIZE:
        raise UsageError(f"--nnodes {nnodes} x --nproc-per-node {nproc} is more than one machine can simulate "
                         f"(at most {MAX_NNODES} nodes, {MAX_NPROC_PER_NODE} per node, {MAX_WORLD_SIZE} ranks); ask for fewer")
    return layout


def _check_host(addr: str) -> None:
    """What ``socket.getaddrinfo`` checks (it raises UnicodeError, not gaierror); for a plain ASCII
    name, without the idna codec, whose import costs every launch ~2 ms."""
    try:
        if not (addr.isascii() and all(0 < len(p) < 64 for p in addr.rstrip(".").split("."))):
            addr.encode("idna")
    except UnicodeError:
        raise UsageError(f"--master-addr={addr!r} is not a valid host name; use an address "
                         "such as 127.0.0.1 or a name whose parts have at most 63 characters") from None


def _rdzv_conf(raw: str) -> dict[str, str]:
    """``join_timeout=60,last_call_timeout=5`` -> a dict (torchrun's _parse_rendezvous_config)."""
    conf: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--rdzv-conf item {item!r} is not KEY=VALUE; write e.g. last_call_timeout=5")
        conf[key.strip()] = value.strip()
    return conf


def _seconds(conf: dict[str, str], key: str, default: float) -> float:
    raw = conf.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"--rdzv-conf {key}={raw!r} must be a positive number of seconds")
    return value


def _is_host(conf: dict[str, str]) -> bool | None:
    raw = conf.get("is_host")
    if raw is None:
        return None
    if raw.lower() in ("1", "true", "t", "yes", "y"):  # torch's RendezvousParameters.get_as_bool
        return True
    if raw.lower() in ("0", "false", "f", "no", "n"):
        return False
    raise UsageError(f"--rdzv-conf is_host={raw!r} is not a boolean; use true or false")


def _heartbeat_timeout(env) -> float:
    raw = env.get("CLUSTERLAB_HEARTBEAT_TIMEOUT", "15")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UsageError(f"CLUSTERLAB_HEARTBEAT_TIMEOUT={raw!r} must be a positive number of seconds, e.g. 15")
    return value


def config_from_args(args: argparse.Namespace, env=None) -> AgentConfig:
    """Check the flags (and the environment the launcher reads) and freeze them into an :class:`AgentConfig`."""
    env = os.environ if env is None else env
    standalone = getattr(args, "standalone", False)
    backend = getattr(args, "rdzv_backend", "static")
    if backend not in RDZV_BACKENDS:
        raise UsageError(f"--rdzv-backend={backend!r} is not simulated; use static or c10d (torchrun's etcd "
                         "backends need an etcd server)")
    min_nodes, max_nodes = (1, 1) if standalone else _nnodes(args.nnodes)
    if min_nodes != max_nodes and not hasattr(args, "rdzv_backend"):  # (simulate has no rendezvous flags)
        raise UsageError(f"--nnodes={args.nnodes}: simulate starts every node itself, so it needs one number, "
                         f"e.g. --nnodes {max_nodes}")
    layout = _layout(max_nodes, _nproc(args.nproc_per_node))  # static: torch's StaticTCPRendezvous waits for MAX
    conf = _rdzv_conf(getattr(args, "rdzv_conf", ""))
    endpoint = getattr(args, "rdzv_endpoint", "")
    if backend == "c10d":
        host, _, port = endpoint.rpartition(":") if endpoint.count(":") == 1 else (endpoint, "", "")
        if not (host or endpoint):
            raise UsageError("--rdzv-backend=c10d needs --rdzv-endpoint HOST[:PORT], e.g. --rdzv-endpoint node001:29400")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise UsageError(f"--rdzv-endpoint={endpoint!r}: {port!r} is not a TCP port; write HOST:PORT, e.g. node001:29400")
        _check_host(host or endpoint)
    master_port = args.master_port
    if standalone or (master_port is None and backend == "static" and max_nodes == 1 and not endpoint):
        master_port = 0  # torchrun: a single node without --master-port meets on a free port (c10d at localhost:0)
    elif master_port is None:
        master_port = DEFAULT_MASTER_PORT
    if not 0 <= master_port <= 65535:
        raise UsageError(f"--master-port={master_port} is not a TCP port; use 1-65535 (or 0 for a free one)")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts={args.max_restarts} must be 0 or more")
    rdzv_timeout = _seconds(conf, "join_timeout", args.rdzv_timeout) if "join_timeout" in conf else args.rdzv_timeout
    if not rdzv_timeout > 0:
        raise UsageError(f"--rdzv-timeout={args.rdzv_timeout} must be a positive number of seconds")
    if not 0 <= args.term_timeout < float("inf"):  # nan would mean: never SIGKILL a worker that ignores SIGTERM
        raise UsageError(f"--term-timeout={args.term_timeout} must be 0 or more seconds (a finite number)")
    _check_host(args.master_addr)
    redirected = _streams(args.redirects, "--redirects")
    _streams(args.tee, "--tee")
    if redirected and not args.log_dir:
        raise UsageError(f"--redirects {args.redirects} sends output to log files: give --log-dir DIR too")
    ranks_filter = None
    if args.local_ranks_filter:
        try:
            ranks_filter = frozenset(int(x) for x in args.local_ranks_filter.split(","))
        except ValueError:
            raise UsageError(f"--local-ranks-filter={args.local_ranks_filter!r} is not a comma-separated list "
                             "of local ranks such as 0,1") from None
        bad = sorted(r for r in ranks_filter if not 0 <= r < layout.nproc_per_node)
        if bad:
            raise UsageError(f"--local-ranks-filter names local rank(s) {bad}, outside 0..{layout.nproc_per_node - 1}")
    script_args = list(args.script_args)
    if script_args[:1] == ["--"]:
        script_args = script_args[1:]
    if args.no_python and args.module:
        raise UsageError("--no-python and -m/--module cannot be combined: pick one way to run the script")
    if args.no_python:
        argv = [args.script, *script_args]
    elif args.module:
        argv = [sys.executable, "-u", "-m", args.script, *script_args]
    else:
        if not os.path.exists(args.script):
            raise UsageError(f"script {args.script!r} does not exist (looked in {os.getcwd()}); "
                             "give the path to the worker script, or -m for a module")
        argv = [sys.executable, "-u", args.script, *script_args]
    master_addr = args.master_addr
    if env.get("CLUSTERLAB_SIMULATED_HOSTS") == "1":
        # Inside `clusterlab sbatch`/`srun` every simulated node (node001, ...) is this machine; their
        # names resolve nowhere, so the agents and torch's TCPStore meet on 127.0.0.1 instead.
        from .slurm.hosts import resolve_simulated

        master_addr = resolve_simulated(master_addr)
    return AgentConfig(
        layout=layout, argv=tuple(argv), master_addr=master_addr, master_port=master_port,
        run_id=args.rdzv_id, role=args.role, max_restarts=args.max_restarts, rdzv_timeout=rdzv_timeout,
        log_dir=args.log_dir, console_streams=frozenset({"stdout", "stderr"}) - redirected,
        local_ranks_filter=ranks_filter,
        barrier_trace=os.path.abspath(args.barrier_trace) if args.barrier_trace else None,
        term_timeout=args.term_timeout, heartbeat_timeout=_heartbeat_timeout(env),
        rdzv_backend=backend, rdzv_endpoint=endpoint, min_nodes=min_nodes,
        last_call_timeout=_seconds(conf, "last_call_timeout", 30.0), rdzv_is_host=_is_host(conf),
        local_addr=getattr(args, "local_addr", None),
    )


def node_rank_from_args(args: argparse.Namespace, config: AgentConfig) -> int:
    """``--node-rank``, checked against the layout already built from ``--nnodes`` (c10d: ignored,
    as torchrun ignores it: the rendezvous assigns node ranks)."""
    if config.rdzv_backend == "c10d":
        return -1
    nnodes = config.layout.nnodes
    if not 0 <= args.node_rank < nnodes:
        raise UsageError(f"--node-rank={args.node_rank} is outside 0..{nnodes - 1} for --nnodes {nnodes}")
    return args.node_rank
