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
``CLUSTERLAB_CHANNEL`` (the pipes to the agent, the rank and the world size), ``CLUSTERLAB_NODE_NAME`` and,
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
- ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` (torchrun's dynamic rendezvous):
  the same command on every node; ranks are assigned when the nodes have met,
  ``--nnodes MIN:MAX`` starts with MIN to MAX nodes (:mod:`clusterlab.c10d`). It is one
  round: a failed node is not replaced by a new one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from .agent import NodeAgent
from .config import AgentConfig, add_launch_args, config_from_args, node_rank_from_args
from .errors import UsageError
from .output import log
from .rendezvous import listen


def launch(config: AgentConfig, node_rank: int) -> int:
    """Run one node's agent (``clusterlab launch``), supervised by this process.

    With ``--rdzv-backend c10d`` this process first meets the other nodes
    (:mod:`clusterlab.c10d`), which decides this node's rank and where node 0 is.
    The agent is forked, as under ``simulate``, so that something outlives it: if it
    is SIGKILLed, its workers die with it (``PR_SET_PDEATHSIG``) and this process,
    their nearest subreaper, sweeps what they started in sessions of their own.
    """
    listener = None
    if config.rdzv_backend == "c10d":
        from .c10d import RendezvousFailed, rendezvous

        try:
            config, node_rank, listener = rendezvous(config, log)
        except RendezvousFailed as exc:
            log(str(exc))
            return 1
    elif node_rank == 0:  # bound here, before the fork: a port in use is this command's one-line error
        listener = listen(config.master_addr, config.master_port)
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


def simulate(config: AgentConfig, share_cpus: bool = False, hosts: str = "auto", verbose: bool = False) -> int:
    """Run every node's agent as its own process on this machine (``clusterlab simulate``).

    The agents are forked from this process, named ``node0``, ``node1``, ... and
    meet over real TCP at ``MASTER_ADDR:MASTER_PORT`` like agents on separate
    hosts. With ``hosts`` (``auto``: where the kernel allows it) each agent first
    becomes its node - its own host name and the job's ``/etc/hosts``
    (:mod:`clusterlab.host`) - and everything it starts inherits that. This process
    only supervises: it forwards SIGINT/SIGTERM, reaps the agents and returns the
    job's exit status.
    """
    from . import host

    names = [f"node{node}" for node in range(config.layout.nnodes)]
    job_hosts = host.plan(names, host.check_mode(hosts))
    listener = listen(config.master_addr, config.master_port)
    config = config._replace(master_port=listener.getsockname()[1])
    # Real nodes do not share CPUs: each simulated node (its agent and workers) gets its own
    # share of this machine's, when there are enough. It also keeps a node's wake-ups on its
    # own cores' caches (a 2x4 barrier on 2 cores: 260 -> 220 us).
    shares = None
    if not share_cpus and hasattr(os, "sched_setaffinity"):
        shares = split_cpus(config.layout.nnodes, sorted(os.sched_getaffinity(0)))
    layout = config.layout
    log(f"simulate: {layout.nnodes} nodes x {layout.nproc_per_node} = {layout.world_size} ranks, "
        f"master {config.master_addr}:{config.master_port}, {job_hosts}")
    if job_hosts.note:
        log(job_hosts.note)
    if verbose and shares:
        sizes = sorted({len(s) for s in shares})
        log(f"each node on its own {'-'.join(map(str, sizes))} of the {sum(map(len, shares))} CPUs "
            "(--share-cpus: all of them)")
    return _supervise(config, dict(enumerate(names)), listener, shares, "simulate", job_hosts)


def _supervise(config: AgentConfig, nodes: dict[int, str], listener, shares, command: str, hosts=None) -> int:
    """Fork one agent per entry of ``nodes`` (node rank -> host name), wait for them all,
    and return the job's exit status; this process forwards signals and sweeps orphans.

    ``listener`` is node 0's bound socket (or None); ``shares`` each node's CPUs (or None);
    ``hosts`` the job's :class:`~clusterlab.host.JobHosts`, which each agent becomes (or None).
    """
    from . import host
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
                    if hosts is not None:
                        host.become(hosts, node)  # first: all the node starts inherits its name and /etc/hosts
                    if shares:
                        os.sched_setaffinity(0, shares[node])  # the workers inherit it
                    if node and listener is not None:
                        listener.close()
                    agent = NodeAgent(config, node, hostname=hostname, listener=listener if node == 0 else None,
                                      print_summary=node == 0 or command == "launch", lifeline=lifeline)
                    code = agent.run()
                except host.HostsError as exc:
                    log(f"node{node}: {exc}")
                    code = 1
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

    common = {"formatter_class": RawDescriptionHelpFormatter}
    p = sub.add_parser("launch", help="run one node's agent (torchrun's command line)",
                       description="Run this node's agent and its workers; agents of the other nodes "
                       "join it over TCP.\n" + __doc__.split("**Definitions**")[0].split("**Usage**")[1], **common)
    add_launch_args(p, with_node_rank=True)
    p.set_defaults(func=_cmd_launch)
    s = sub.add_parser("simulate", help="run every node of a multi-node job on this machine",
                       description="Start one agent process per simulated node (node0, node1, ...) and one "
                       "world of nnodes x nproc_per_node workers.", **common)
    add_launch_args(s, with_node_rank=False)
    s.add_argument("--share-cpus", action="store_true",
                   help="let every node's workers run on all of this machine's CPUs (default: with at least as "
                   "many CPUs as nodes, each node gets its own share, as real nodes have their own)")
    s.add_argument("--hosts", default="auto", choices=["auto", "namespaces", "off"],
                   help="make each simulated node a host - its own host name and the job's /etc/hosts, in Linux "
                   "namespaces: auto (where the kernel allows it), namespaces (or fail), off (default: auto)")
    s.add_argument("-v", "--verbose", action="store_true", help="say more at start (how the CPUs are shared)")
    s.set_defaults(func=lambda a: simulate(config_from_args(a), share_cpus=a.share_cpus, hosts=a.hosts,
                                           verbose=a.verbose))


def _cmd_launch(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    return launch(config, node_rank_from_args(args, config))
