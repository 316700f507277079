"""The environment contract: what a launcher tells each worker, and how to read it back.

Every launcher hands a worker the same few facts through environment variables,
each under its own names. :func:`worker_env` writes torchrun's contract (the one
clusterlab gives its workers); :func:`read_env` reads a worker's
:class:`RankView` back from whichever launcher started it, through one table per
launcher:

================  ======================  ======================  ===========================  ============
fact              torchrun / clusterlab   Slurm (srun)            OpenMPI (mpirun)             DeepSpeed
================  ======================  ======================  ===========================  ============
global rank       RANK                    SLURM_PROCID            OMPI_COMM_WORLD_RANK         RANK
local rank        LOCAL_RANK              SLURM_LOCALID           OMPI_COMM_WORLD_LOCAL_RANK   LOCAL_RANK
world size        WORLD_SIZE              SLURM_NTASKS            OMPI_COMM_WORLD_SIZE         WORLD_SIZE
node rank         GROUP_RANK              SLURM_NODEID            (rank // local size)         CROSS_RANK
number of nodes   GROUP_WORLD_SIZE        SLURM_NNODES            (size // local size)         CROSS_SIZE
workers per node  LOCAL_WORLD_SIZE        SLURM_TASKS_PER_NODE    OMPI_COMM_WORLD_LOCAL_SIZE   LOCAL_SIZE
================  ======================  ======================  ===========================  ============

The seed's manual exports (``NODE_RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, no ``RANK``) are read too: the global rank is
then computed as ``NODE_RANK * nproc_per_node + LOCAL_RANK``.

A missing or inconsistent variable raises :class:`~clusterlab.errors.UsageError`
naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections import namedtuple

from .errors import UsageError
from .layout import ClusterLayout

#: torchrun's default rendezvous / master port (``--master-port`` default).
DEFAULT_MASTER_PORT = 29500


def worker_env(
    layout: ClusterLayout,
    node_rank: int,
    local_rank: int,
    *,
    master_addr: str,
    master_port: int,
    role: str = "default",
    restart_count: int = 0,
    max_restarts: int = 0,
    run_id: str = "none",
    omp_num_threads: str | None = None,
) -> dict[str, str]:
    """The variables torchrun sets for one worker (``torch/distributed/run.py``), plus ``NODE_RANK``.

    With a single role every worker's ``ROLE_RANK`` is its ``RANK`` and
    ``ROLE_WORLD_SIZE`` is ``WORLD_SIZE``; ``GROUP_RANK`` is the node rank and
    ``GROUP_WORLD_SIZE`` the number of nodes (one agent, one "group", per node).
    ``TORCHELASTIC_USE_AGENT_STORE`` is ``False``: clusterlab's agents do not
    host a torch TCPStore, so torch's rank 0 hosts it on ``MASTER_PORT`` itself.
    """
    rank = layout.global_rank(node_rank, local_rank)
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(layout.world_size),
        "LOCAL_WORLD_SIZE": str(layout.nproc_per_node),
        "GROUP_RANK": str(node_rank),
        "GROUP_WORLD_SIZE": str(layout.nnodes),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(layout.world_size),
        "ROLE_NAME": role,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "OMP_NUM_THREADS": omp_num_threads or "1",
        "NODE_RANK": str(node_rank),
    }


class RankView(namedtuple("RankView", "launcher rank local_rank world_size local_world_size node_rank nnodes "
                                       "master_addr master_port sources", defaults=(None, None, None))):
    """Who this process is in its job, as its launcher described it.

    ``launcher`` names the table that matched; ``sources`` maps each field to the
    environment variable (or rule) it came from.
    """

    __slots__ = ()

    def __str__(self) -> str:
        master = f"{self.master_addr}:{self.master_port}" if self.master_addr else "unset"
        return (
            f"rank {self.rank}/{self.world_size} node {self.node_rank}/{self.nnodes} "
            f"local {self.local_rank}/{self.local_world_size} master {master} (from {self.launcher})"
        )


def _int(env: Mapping[str, str], name: str, sources: dict, key: str, minimum: int = 0) -> int:
    if name not in env:
        raise UsageError(f"{name} is not set; it gives the {key.replace('_', ' ')}")
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise UsageError(f"{name}={value} must be at least {minimum}")
    sources[key] = name
    return value


def _master(env: Mapping[str, str], sources: dict) -> tuple[str | None, int | None]:
    addr = env.get("MASTER_ADDR") or None
    port = None
    if addr:
        sources["master_addr"] = "MASTER_ADDR"
    if env.get("MASTER_PORT"):
        port = _int(env, "MASTER_PORT", sources, "master_port", 1)
        if port > 65535:
            raise UsageError(f"MASTER_PORT={port} is not a TCP port (1-65535)")
    return addr, port


def _torchrun(env: Mapping[str, str], nproc_per_node: int | None) -> RankView:
    s: dict[str, str] = {}
    rank = _int(env, "RANK", s, "rank")
    world = _int(env, "WORLD_SIZE", s, "world_size", 1)
    local = _int(env, "LOCAL_RANK", s, "local_rank")
    if "LOCAL_WORLD_SIZE" in env:
        lws = _int(env, "LOCAL_WORLD_SIZE", s, "local_world_size", 1)
    elif nproc_per_node:
        lws, s["local_world_size"] = nproc_per_node, "--nproc-per-node"
    else:
        raise UsageError("LOCAL_WORLD_SIZE is not set; it gives the workers per node")
    if "GROUP_RANK" in env:
        node = _int(env, "GROUP_RANK", s, "node_rank")
    elif "NODE_RANK" in env:
        node = _int(env, "NODE_RANK", s, "node_rank")
    else:
        node, s["node_rank"] = rank // lws, "RANK // LOCAL_WORLD_SIZE"
    if "GROUP_WORLD_SIZE" in env:
        nnodes = _int(env, "GROUP_WORLD_SIZE", s, "nnodes", 1)
    else:
        nnodes, s["nnodes"] = -(-world // lws), "WORLD_SIZE / LOCAL_WORLD_SIZE"
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "RANK/WORLD_SIZE exports"
    if "CLUSTERLAB_CHANNEL" in env:
        launcher = "clusterlab"
    return _check(RankView(launcher, rank, local, world, lws, node, nnodes, *_master(env, s), s))


def _manual(env: Mapping[str, str], nproc_per_node: int | None) -> RankView:
    """The seed's Part 1 exports: NODE_RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""
    s: dict[str, str] = {}
    node = _int(env, "NODE_RANK", s, "node_rank")
    local = _int(env, "LOCAL_RANK", s, "local_rank")
    world = _int(env, "WORLD_SIZE", s, "world_size", 1)
    if "LOCAL_WORLD_SIZE" in env:
        lws = _int(env, "LOCAL_WORLD_SIZE", s, "local_world_size", 1)
    elif nproc_per_node:
        lws, s["local_world_size"] = nproc_per_node, "--nproc-per-node"
    else:
        raise UsageError(
            "NODE_RANK is set but RANK is not, and nothing says how many workers run per node: "
            "export LOCAL_WORLD_SIZE (e.g. 4) or pass --nproc-per-node"
        )
    if world % lws:
        raise UsageError(f"WORLD_SIZE={world} is not divisible by {lws} workers per node")
    layout = ClusterLayout.from_world_size(world, lws)
    if node >= layout.nnodes:
        raise UsageError(f"NODE_RANK={node} is outside 0..{layout.nnodes - 1} for WORLD_SIZE={world}")
    if local >= lws:
        raise UsageError(f"LOCAL_RANK={local} is outside 0..{lws - 1} for {lws} workers per node")
    s["rank"] = "NODE_RANK * nproc_per_node + LOCAL_RANK"
    s["nnodes"] = "WORLD_SIZE / nproc_per_node"
    rank = layout.global_rank(node, local)
    return _check(RankView("manual exports", rank, local, world, lws, node, layout.nnodes, *_master(env, s), s))


def _openmpi(env: Mapping[str, str], nproc_per_node: int | None) -> RankView:
    s: dict[str, str] = {}
    rank = _int(env, "OMPI_COMM_WORLD_RANK", s, "rank")
    world = _int(env, "OMPI_COMM_WORLD_SIZE", s, "world_size", 1)
    local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", s, "local_rank")
    lws = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", s, "local_world_size", 1)
    # OpenMPI names no node index; with its default by-slot mapping it is rank // local size.
    node, s["node_rank"] = rank // lws, "OMPI_COMM_WORLD_RANK // OMPI_COMM_WORLD_LOCAL_SIZE"
    nnodes, s["nnodes"] = -(-world // lws), "OMPI_COMM_WORLD_SIZE / OMPI_COMM_WORLD_LOCAL_SIZE"
    return _check(RankView("OpenMPI", rank, local, world, lws, node, nnodes, *_master(env, s), s))


def _deepspeed(env: Mapping[str, str], nproc_per_node: int | None) -> RankView:
    s: dict[str, str] = {}
    rank = _int(env, "RANK", s, "rank")
    world = _int(env, "WORLD_SIZE", s, "world_size", 1)
    local = _int(env, "LOCAL_RANK", s, "local_rank")
    lws = _int(env, "LOCAL_SIZE", s, "local_world_size", 1)
    node = _int(env, "CROSS_RANK", s, "node_rank")
    nnodes = _int(env, "CROSS_SIZE", s, "nnodes", 1)
    return _check(RankView("DeepSpeed", rank, local, world, lws, node, nnodes, *_master(env, s), s))


def _slurm(env: Mapping[str, str], nproc_per_node: int | None) -> RankView:
    """One task per GPU under srun: SLURM_PROCID -> rank, SLURM_LOCALID -> local rank.

    MASTER_ADDR defaults to the first host of ``SLURM_JOB_NODELIST``; MASTER_PORT
    to ``15000 + last four digits of SLURM_JOB_ID`` (the rule PyTorch Lightning's
    ``SLURMEnvironment`` uses), so every job of a user gets its own port.
    """
    s: dict[str, str] = {}
    rank = _int(env, "SLURM_PROCID", s, "rank")
    world = _int(env, "SLURM_NTASKS", s, "world_size", 1)
    local = _int(env, "SLURM_LOCALID", s, "local_rank")
    node = _int(env, "SLURM_NODEID", s, "node_rank")
    nnodes = _int(env, "SLURM_NNODES", s, "nnodes", 1) if "SLURM_NNODES" in env else -1
    if nnodes < 0:
        nnodes = _int(env, "SLURM_JOB_NUM_NODES", s, "nnodes", 1)
    lws = _tasks_on_node(env, node, s) or world // nnodes
    s.setdefault("local_world_size", "SLURM_NTASKS / SLURM_NNODES")
    addr, port = _master(env, s)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if addr is None and nodelist:
        import hostlist  # python-hostlist

        addr = hostlist.expand_hostlist(nodelist)[0]
        s["master_addr"] = "first host of SLURM_JOB_NODELIST"
        if env.get("CLUSTERLAB_SIMULATED_HOSTS") == "1":  # the lab's srun: node001 is this machine
            from .slurm.hosts import resolve_simulated

            addr = resolve_simulated(addr, dict(env))
            s["master_addr"] += " (a simulated node: this machine)"
    if port is None and env.get("SLURM_JOB_ID", "").isdigit():
        port = 15000 + int(env["SLURM_JOB_ID"][-4:])
        s["master_port"] = "15000 + last 4 digits of SLURM_JOB_ID"
    return _check(RankView("Slurm", rank, local, world, lws, node, nnodes, addr, port, s))


def _tasks_on_node(env: Mapping[str, str], node: int, s: dict) -> int | None:
    """Read this node's count from SLURM_TASKS_PER_NODE, e.g. ``3(x2),2`` -> [3, 3, 2]."""
    raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not raw:
        return None
    counts: list[int] = []
    for part in raw.split(","):
        count, _, rep = part.partition("(x")
        try:
            counts += [int(count)] * (int(rep.rstrip(")")) if rep else 1)
        except ValueError:
            raise UsageError(f"SLURM_TASKS_PER_NODE={raw!r} is not in Slurm's '3(x2),2' form") from None
    if node >= len(counts):
        raise UsageError(f"SLURM_NODEID={node} has no entry in SLURM_TASKS_PER_NODE={raw!r}")
    s["local_world_size"] = "SLURM_TASKS_PER_NODE"
    return counts[node]


def _check(v: RankView) -> RankView:
    src = v.sources
    if v.rank >= v.world_size:
        raise UsageError(f"{src['rank']}={v.rank} is outside 0..{v.world_size - 1} for {src['world_size']}={v.world_size}")
    if v.local_rank >= v.local_world_size:
        raise UsageError(
            f"{src['local_rank']}={v.local_rank} is outside 0..{v.local_world_size - 1} "
            f"for {src['local_world_size']}={v.local_world_size}"
        )
    if v.node_rank >= v.nnodes:
        raise UsageError(f"{src['node_rank']}={v.node_rank} is outside 0..{v.nnodes - 1} for {src['nnodes']}={v.nnodes}")
    uniform = v.launcher not in ("Slurm",)
    if uniform and v.rank != v.node_rank * v.local_world_size + v.local_rank:
        raise UsageError(
            f"inconsistent ranks: {src['rank']}={v.rank} but {src['node_rank']}={v.node_rank} * "
            f"{src['local_world_size']}={v.local_world_size} + {src['local_rank']}={v.local_rank} "
            f"= {v.node_rank * v.local_world_size + v.local_rank}"
        )
    return v


# One table per launcher: (name, variables that identify it, reader). First match wins:
# DeepSpeed sets RANK too, and torchrun inside an srun task still sees SLURM_*.
LAUNCHERS = (
    ("DeepSpeed", ("CROSS_RANK",), _deepspeed),
    ("torchrun", ("RANK",), _torchrun),
    ("OpenMPI", ("OMPI_COMM_WORLD_RANK",), _openmpi),
    ("Slurm", ("SLURM_PROCID",), _slurm),
    ("manual exports", ("NODE_RANK",), _manual),
)


def read_env(env: Mapping[str, str] | None = None, *, nproc_per_node: int | None = None) -> RankView:
    """Read this process's :class:`RankView` from the environment of whichever launcher started it."""
    env = os.environ if env is None else env
    for _name, markers, reader in LAUNCHERS:
        if all(m in env for m in markers):
            return reader(env, nproc_per_node)
    raise UsageError(
        "no launcher variables found (RANK, NODE_RANK, SLURM_PROCID, OMPI_COMM_WORLD_RANK or CROSS_RANK): "
        "run under `clusterlab launch`/`simulate`, torchrun, srun, mpirun or deepspeed, "
        "or export NODE_RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "env",
        help="print this process's rank view, read from whichever launcher started it",
        description="Print the rank view (rank, local rank, world size, node, master) that the "
        "environment describes, and which variable each value came from.",
    )
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=None,
                   help="workers per node, when only the seed's NODE_RANK/LOCAL_RANK/WORLD_SIZE are exported")
    p.set_defaults(func=_cmd_env)


def _cmd_env(args) -> int:
    view = read_env(nproc_per_node=args.nproc_per_node)
    print(f"launcher: {view.launcher}")
    for key in ("rank", "local_rank", "world_size", "local_world_size", "node_rank", "nnodes",
                "master_addr", "master_port"):
        print(f"{key:>16} = {getattr(view, key)!s:<12} <- {view.sources.get(key, 'not set')}")
    return 0
