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
#: the most nodes and workers one job may ask for: a fork per node and a process per rank must fit
#: the machine (``--nnodes 100000`` would fork agents until fork fails)
MAX_NNODES = 1024
MAX_NPROC_PER_NODE = 1024
MAX_WORLD_SIZE = 8192

_STREAMS = {0: frozenset(), 1: frozenset({"stdout"}), 2: frozenset({"stderr"}), 3: frozenset({"stdout", "stderr"})}


class AgentConfig(namedtuple("AgentConfig", "layout argv master_addr master_port run_id role max_restarts rdzv_timeout "
                             "log_dir console_streams local_ranks_filter barrier_trace term_timeout heartbeat_timeout",
                             defaults=(
        "127.0.0.1", DEFAULT_MASTER_PORT, "none", "default", 0, 300.0, None, frozenset({"stdout", "stderr"}),
        None, None, 5.0, 15.0))):
    """Everything an agent needs to know about its job, as one immutable value.

    ``layout`` and ``argv`` (the worker command) are required; the rest default
    as torchrun's flags do. A named tuple, not a dataclass: every launcher process
    builds one, and ``dataclasses`` (with ``inspect``) would cost each ~15 ms of imports.
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


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> argparse.Action:
    """Add ``--name-with-dashes`` and torchrun's ``--name_with_underscores`` spelling."""
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    return parser.add_argument(*spellings, **kwargs)


def add_launch_args(parser: argparse.ArgumentParser, *, with_node_rank: bool) -> None:
    """The torchrun flags shared by ``launch`` and ``simulate``."""
    _flag(parser, "nnodes", default="1",
          help="number of nodes, N (torchrun's MIN:MAX must have MIN == MAX) (default: 1)")
    _flag(parser, "nproc-per-node", default="1",
          help="workers per node: a number, or 'cpu'/'auto' for this machine's CPU count (default: 1)")
    if with_node_rank:
        _flag(parser, "node-rank", type=int, default=0,
              help="this node's rank, 0..nnodes-1; 0 is the master (default: 0)")
        parser.add_argument("--standalone", action="store_true",
                            help="single-node job on a free local port (sets --nnodes 1, --master-port 0)")
    _flag(parser, "master-addr", default="127.0.0.1",
          help="address of node 0, where its agent listens (default: 127.0.0.1)")
    _flag(parser, "master-port", type=int, default=DEFAULT_MASTER_PORT,
          help=f"port of node 0's agent, then of torch's TCPStore; 0 picks a free one (default: {DEFAULT_MASTER_PORT})")
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


def _nnodes(raw: str) -> int:
    lo, sep, hi = str(raw).partition(":")
    if sep:
        if lo != hi:
            raise UsageError(f"--nnodes={raw} is an elastic MIN:MAX range; the lab runs fixed-size jobs: use --nnodes {hi}")
        raw = lo
    return _int_flag("--nnodes", raw, "use a number of nodes such as 2")


def _nproc(raw: str) -> int:
    if raw in ("cpu", "auto"):
        return os.cpu_count() or 1
    if raw == "gpu":
        raise UsageError("--nproc-per-node=gpu: this machine has no GPU; give a number such as 4")
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
    layout = _layout(1 if standalone else _nnodes(args.nnodes), _nproc(args.nproc_per_node))
    master_port = 0 if standalone else args.master_port
    if not 0 <= master_port <= 65535:
        raise UsageError(f"--master-port={master_port} is not a TCP port; use 1-65535 (or 0 for a free one)")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts={args.max_restarts} must be 0 or more")
    if not args.rdzv_timeout > 0:
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
        run_id=args.rdzv_id, role=args.role, max_restarts=args.max_restarts, rdzv_timeout=args.rdzv_timeout,
        log_dir=args.log_dir, console_streams=frozenset({"stdout", "stderr"}) - redirected,
        local_ranks_filter=ranks_filter,
        barrier_trace=os.path.abspath(args.barrier_trace) if args.barrier_trace else None,
        term_timeout=args.term_timeout, heartbeat_timeout=_heartbeat_timeout(env),
    )


def node_rank_from_args(args: argparse.Namespace, config: AgentConfig) -> int:
    """``--node-rank``, checked against the layout already built from ``--nnodes``."""
    nnodes = config.layout.nnodes
    if not 0 <= args.node_rank < nnodes:
        raise UsageError(f"--node-rank={args.node_rank} is outside 0..{nnodes - 1} for --nnodes {nnodes}")
    return args.node_rank
