"""
``clusterlab launch`` and ``clusterlab simulate``: torchrun's launcher, for one machine.

**Usage**

1. Two nodes in two terminals, exactly as on two machines (here both on this one)::

       # terminal 1 (node 0, the master)
       clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 0 \\
           --master-addr 127.0.0.1 --master-port 29500 train.py --lr 0.1
       # terminal 2 (node 1)
       clusterlab launch --nnodes 2 --nproc-per-node 4 --node-rank 1 \\
           --master-addr 127.0.0.1 --master-port 29500 train.py --lr 0.1

   On two real hosts, use node 0's address as ``--master-addr`` on both.

2. A whole cluster on this machine, one agent process per simulated node::

       clusterlab simulate --nnodes 2 --nproc-per-node 4 train.py

3. One node, a free port picked for you (torchrun's ``--standalone``)::

       clusterlab launch --standalone --nproc-per-node 4 train.py

**Definitions** (torchrun's words)

- *node*: a machine; one agent runs per node and starts its workers.
- *nproc_per_node*: workers per node (one per GPU on a real cluster).
- *node_rank*: which node, 0 .. nnodes-1. Node 0's agent is the *master*.
- *rank*: a worker's index in the job: ``node_rank * nproc_per_node + local_rank``.
- *local_rank*: a worker's index on its node. *world size*: all workers of all nodes.

**Environment variables each worker gets** (the same as under torchrun)

``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``
(= node rank), ``GROUP_WORLD_SIZE`` (= nnodes), ``ROLE_RANK``,
``ROLE_WORLD_SIZE``, ``ROLE_NAME``, ``MASTER_ADDR`` and ``MASTER_PORT`` (exactly
as given), ``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_MAX_RESTARTS``,
``TORCHELASTIC_RUN_ID`` (``--rdzv-id``), ``TORCHELASTIC_USE_AGENT_STORE=False``,
``OMP_NUM_THREADS`` (1 unless set), and the lab's ``NODE_RANK``. clusterlab adds
``CLUSTERLAB_CHANNEL`` (the pipes to the agent), ``CLUSTERLAB_NODE_NAME`` and,
with ``--barrier-trace``, ``CLUSTERLAB_TRACE``.

**Output**

Every worker line is printed whole, prefixed ``[node1 rank5 local1]``; the
launcher's own lines start with ``[clusterlab]`` on stderr. With ``--log-dir DIR``
each worker's raw output also goes to
``DIR/attempt_K/nodeN/LOCAL_RANK/{stdout,stderr}.log``. ``--local-ranks-filter
0,1`` shows only those local ranks on the console (the files keep everything);
``--redirects 3`` sends output to the files only.

**Failure modes**

- A worker exits non-zero or is killed: every worker on every node is stopped
  (SIGTERM, ``--term-timeout`` seconds, SIGKILL) and a summary names the root
  cause (node, rank, local rank, exit code or signal, pid, last stderr lines).
  Exit status 1. With ``--max-restarts N`` the whole world restarts up to N
  times first.
- A node never joins: after ``--rdzv-timeout`` seconds, an error naming it.
- An agent dies: the others notice (closed connection, or no heartbeat) and stop.
- Ctrl-C or SIGTERM: reaches every worker; nothing is left running. Exit 128+signal.
- The port is taken, or another job's agent knocks: a one-line error.

**Notices**

- Node 0's agent listens on ``MASTER_ADDR:MASTER_PORT`` only until every node has
  joined, then closes the listening socket, so that torch's rank 0 can host its
  TCPStore on the same port (``init_process_group("gloo")`` with ``env://``).
- ``--nnodes MIN:MAX`` elastic ranges are not simulated: give one number.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from .agent import AgentConfig, NodeAgent
from .errors import UsageError
from .layout import ClusterLayout
from .output import log
from .rendezvous import listen

_STREAMS = {0: frozenset(), 1: frozenset({"stdout"}), 2: frozenset({"stderr"}), 3: frozenset({"stdout", "stderr"})}


def _flag(parser, name: str, **kwargs):
    """Add ``--name-with-dashes`` and torchrun's ``--name_with_underscores`` spelling."""
    spellings = [f"--{name}"]
    if "-" in name:
        spellings.append(f"--{name.replace('-', '_')}")
    return parser.add_argument(*spellings, **kwargs)


def add_launch_args(parser: argparse.ArgumentParser, *, with_node_rank: bool) -> None:
    """The torchrun flags shared by ``launch`` and ``simulate``."""
    _flag(parser, "nnodes", default="1", help="number of nodes, N (torchrun's MIN:MAX must have MIN == MAX) (default: 1)")
    _flag(parser, "nproc-per-node", default="1", help="workers per node: a number, or 'cpu'/'auto' for this machine's CPU count (default: 1)")
    if with_node_rank:
        _flag(parser, "node-rank", type=int, default=0, help="this node's rank, 0..nnodes-1; 0 is the master (default: 0)")
        parser.add_argument("--standalone", action="store_true",
                            help="single-node job on a free local port (sets --nnodes 1, --master-port 0)")
    _flag(parser, "master-addr", default="127.0.0.1", help="address of node 0, where its agent listens (default: 127.0.0.1)")
    _flag(parser, "master-port", type=int, default=29500,
          help="port of node 0's agent, then of torch's TCPStore; 0 picks a free one (default: 29500)")
    _flag(parser, "max-restarts", type=int, default=0, help="restart the whole world up to this many times on failure (default: 0)")
    parser.add_argument("--role", default="default", help="ROLE_NAME given to workers (default: default)")
    _flag(parser, "rdzv-id", default="none", help="run id; agents with another id are refused (TORCHELASTIC_RUN_ID) (default: none)")
    _flag(parser, "rdzv-timeout", type=float, default=300.0, help="seconds to wait for every node to join (default: 300)")
    _flag(parser, "log-dir", default=None, help="also write each worker's output to DIR/attempt_K/nodeN/LOCAL_RANK/{stdout,stderr}.log")
    parser.add_argument("-r", "--redirects", default="0",
                        help="streams sent to the log files only, not the console: 0 none, 1 stdout, 2 stderr, 3 both (needs --log-dir)")
    parser.add_argument("-t", "--tee", default="0",
                        help="accepted for torchrun compatibility: with --log-dir clusterlab always tees to files and console")
    _flag(parser, "local-ranks-filter", default="", help="show only these local ranks on the console, e.g. 0,2 (files keep all)")
    _flag(parser, "barrier-trace", default=None, help="append one JSON line per rank per barrier (arrive/leave times) to FILE")
    _flag(parser, "term-timeout", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping workers (default: 5)")
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


def _streams(raw: str, flag: str) -> frozenset:
    try:
        value = int(raw)
        if value in _STREAMS:
            return _STREAMS[value]
    except ValueError:
        pass
    raise UsageError(f"{flag}={raw!r} is not one of 0 (none), 1 (stdout), 2 (stderr), 3 (both)")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """Check the flags and freeze them into an :class:`AgentConfig`."""
    if getattr(args, "standalone", False):
        args.nnodes, args.master_port = "1", 0
    layout = ClusterLayout(_nnodes(args.nnodes), _nproc(args.nproc_per_node))
    if not 0 <= args.master_port <= 65535:
        raise UsageError(f"--master-port={args.master_port} is not a TCP port; use 1-65535 (or 0 for a free one)")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts={args.max_restarts} must be 0 or more")
    if not args.rdzv_timeout > 0:
        raise UsageError(f"--rdzv-timeout={args.rdzv_timeout} must be a positive number of seconds")
    if not 0 <= args.term_timeout < float("inf"):  # nan would mean: never SIGKILL a worker that ignores SIGTERM
        raise UsageError(f"--term-timeout={args.term_timeout} must be 0 or more seconds (a finite number)")
    try:
        # what socket.getaddrinfo does (it raises UnicodeError, not gaierror); for a plain ASCII
        # name, checked without the idna codec, whose import costs every launch ~2 ms
        if not (args.master_addr.isascii() and all(0 < len(p) < 64 for p in args.master_addr.rstrip(".").split("."))):
            args.master_addr.encode("idna")
    except UnicodeError:
        raise UsageError(f"--master-addr={args.master_addr!r} is not a valid host name; use an address "
                         "such as 127.0.0.1 or a name whose parts have at most 63 characters") from None
    redirected = _streams(args.redirects, "--redirects")
    _streams(args.tee, "--tee")
    if redirected and not args.log_dir:
        raise UsageError(f"--redirects {args.redirects} sends output to log files: give --log-dir DIR too")
    ranks_filter = None
    if args.local_ranks_filter:
        try:
            ranks_filter = frozenset(int(x) for x in args.local_ranks_filter.split(","))
        except ValueError:
            raise UsageError(f"--local-ranks-filter={args.local_ranks_filter!r} is not a comma-separated list of local ranks such as 0,1") from None
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
            raise UsageError(f"script {args.script!r} does not exist (looked in {os.getcwd()}); give the path to the worker script, or -m for a module")
        argv = [sys.executable, "-u", args.script, *script_args]
    master_addr = args.master_addr
    if os.environ.get("CLUSTERLAB_SIMULATED_HOSTS") == "1":
        # Inside `clusterlab sbatch`/`srun` every simulated node (node001, ...) is this machine; their
        # names resolve nowhere, so the agents and torch's TCPStore meet on 127.0.0.1 instead.
        from .slurm.hosts import resolve_simulated

        master_addr = resolve_simulated(master_addr)
    return AgentConfig(
        layout=layout, argv=tuple(argv), master_addr=master_addr, master_port=args.master_port,
        run_id=args.rdzv_id, role=args.role, max_restarts=args.max_restarts, rdzv_timeout=args.rdzv_timeout,
        log_dir=args.log_dir, console_streams=frozenset({"stdout", "stderr"}) - redirected,
        local_ranks_filter=ranks_filter, barrier_trace=args.barrier_trace, term_timeout=args.term_timeout,
    )


def _bind_free(addr: str, port: int) -> socket.socket:
    """Bind node 0's listener before any agent starts, so ``--master-port 0`` can be resolved."""
    return listen(addr, port)


def launch(config: AgentConfig, node_rank: int) -> int:
    """Run one node's agent (``clusterlab launch``), supervised by this process.

    The agent is forked, as under ``simulate``, so that something outlives it: if it
    is SIGKILLed, its workers die with it (``PR_SET_PDEATHSIG``) and this process,
    their nearest subreaper, sweeps what they started in sessions of their own.
    """
    listener = None
    if node_rank == 0:  # bound here, before the fork: a port in use is this command's one-line error
        listener = _bind_free(config.master_addr, config.master_port)
        config = config._replace(master_port=listener.getsockname()[1])
    # Under (simulated) Slurm, name the node as Slurm does, so summaries say node002, not this host.
    hostname = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    return _supervise(config, {node_rank: hostname}, listener, None, "launch")


def split_cpus(nnodes: int, cpus: list[int]) -> list[list[int]] | None:
    """Each simulated node's own share of ``cpus`` (as even as it divides), or None with
    fewer CPUs than nodes (or a single node): then every node's workers share them all."""
    if not 1 < nnodes <= len(cpus):
        return None
    return [[c for i, c in enumerate(cpus) if i * nnodes // len(cpus) == node] for node in range(nnodes)]


def simulate(config: AgentConfig, quiet: bool = False, share_cpus: bool = False) -> int:
    """Run every node's agent as its own process on this machine (``clusterlab simulate``).

    The agents are forked from this process, named ``node0``, ``node1``, ... and
    meet over real TCP at ``MASTER_ADDR:MASTER_PORT`` like agents on separate
    hosts. This process only supervises: it forwards SIGINT/SIGTERM, reaps the
    agents and returns the job's exit status.
    """
    listener = _bind_free(config.master_addr, config.master_port)
    config = config._replace(master_port=listener.getsockname()[1])
    # Real nodes do not share CPUs: each simulated node (its agent and workers) gets its own
    # share of this machine's, when there are enough. It also keeps a node's wake-ups on its
    # own cores' caches (a 2x4 barrier on 2 cores: 260 -> 220 us).
    shares = None
    if not share_cpus and hasattr(os, "sched_setaffinity"):
        shares = split_cpus(config.layout.nnodes, sorted(os.sched_getaffinity(0)))
    if not quiet:
        where = ""
        if shares:
            sizes = sorted({len(s) for s in shares})
            where = f"; each node on its own {'-'.join(map(str, sizes))} of the {sum(map(len, shares))} CPUs"
        log(f"simulating {config.layout} on this machine; master node0 at {config.master_addr}:{config.master_port}{where}")
    return _supervise(config, {node: f"node{node}" for node in range(config.layout.nnodes)}, listener, shares,
                      "simulate")


def _supervise(config: AgentConfig, nodes: dict[int, str], listener, shares, command: str) -> int:
    """Fork one agent per entry of ``nodes`` (node rank -> host name), wait for them all,
    and return the job's exit status; this process forwards signals and sweeps orphans.

    ``listener`` is node 0's bound socket (or None); ``shares`` each node's CPUs (or None).
    """
    from .procs import descendants, describe_exit, set_subreaper, setpriv_prefix, sweep

    setpriv_prefix()  # look setpriv up once here, not once in each forked agent
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, int] = {}
    # If an agent is SIGKILLed, its workers die with it (PR_SET_PDEATHSIG) but their setsid()
    # grandchildren would be re-parented to init: adopt them here and sweep them at the end.
    foreign = {p.pid for p in descendants([os.getpid()])}
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        for child in children:
            try:
                os.kill(child, signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)
            except ProcessLookupError:
                pass

    # The agents' lifeline: this process holds the only write end and never writes. If it dies,
    # even by SIGKILL, every agent reads EOF and stops its node as if it got SIGHUP.
    lifeline, hold = os.pipe()
    # Ctrl-C or SIGTERM during the forks waits (blocked) until this process forwards such signals,
    # and each agent receives them only once its own handlers are in (Loop.catch_signals unblocks).
    caught = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, caught)
    try:
        # Before the forks: the agents inherit the loaded libc (ctypes), which they need too.
        set_subreaper(True)
        for node, hostname in nodes.items():
            pid = os.fork()
            if pid == 0:  # the agent of node `node`
                code = 1
                try:
                    os.close(hold)
                    if shares:
                        os.sched_setaffinity(0, shares[node])  # the workers inherit it
                    if node and listener is not None:
                        listener.close()
                    agent = NodeAgent(config, node, hostname=hostname, listener=listener if node == 0 else None,
                                      print_summary=node == 0 or command == "launch", lifeline=lifeline)
                    code = agent.run()
                except UsageError as exc:
                    if command == "launch":  # as the command itself would say it
                        print(f"clusterlab launch: error: {exc}", file=sys.stderr, flush=True)
                    else:
                        log(f"node{node}: error: {exc}")
                    code = 2
                except BaseException:  # a bug in clusterlab: show it, but never fall back into the parent's code
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(code)
            children[pid] = node
    finally:
        if listener is not None:
            listener.close()
        os.close(lifeline)
        old = {sig: signal.signal(sig, forward) for sig in caught}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)
    codes: dict[int, int] = {}
    try:
        while len(codes) < len(children):
            pid, status = os.wait()
            if pid in children:
                code = os.waitstatus_to_exitcode(status)
                if code < 0:  # an agent killed by a signal: say so, and exit 128+N like a shell would
                    log(f"the agent of node{children[pid]} was killed by {describe_exit(code)}")
                    code = 128 - code
                codes[children[pid]] = code
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        os.close(hold)  # every agent has been reaped
        sweep(foreign)
        set_subreaper(False)
    if received:
        return 128 + received[0]
    bad = [c for c in codes.values() if c != 0]
    return codes.get(0) or (max(bad) if bad else 0)


def register(sub) -> None:
    from .cli import RawDescriptionHelpFormatter

    common = dict(formatter_class=RawDescriptionHelpFormatter)
    p = sub.add_parser("launch", help="run one node's agent (torchrun's command line)",
                       description="Run this node's agent and its workers; agents of the other nodes "
                       "join it over TCP.\n" + __doc__.split("**Definitions**")[0].split("**Usage**")[1], **common)
    add_launch_args(p, with_node_rank=True)
    p.set_defaults(func=lambda a: launch(config_from_args(a), _node_rank(a)))
    s = sub.add_parser("simulate", help="run every node of a multi-node job on this machine",
                       description="Start one agent process per simulated node (node0, node1, ...) and one "
                       "world of nnodes x nproc_per_node workers.", **common)
    add_launch_args(s, with_node_rank=False)
    s.add_argument("--share-cpus", action="store_true",
                   help="let every node's workers run on all of this machine's CPUs (default: with at least as "
                   "many CPUs as nodes, each node gets its own share, as real nodes have their own)")
    s.set_defaults(func=lambda a: simulate(config_from_args(a), share_cpus=a.share_cpus))


def _node_rank(args) -> int:
    layout = ClusterLayout(_nnodes(args.nnodes), _nproc(args.nproc_per_node))
    if not 0 <= args.node_rank < layout.nnodes:
        raise UsageError(f"--node-rank={args.node_rank} is outside 0..{layout.nnodes - 1} for --nnodes {layout.nnodes}")
    return args.node_rank
