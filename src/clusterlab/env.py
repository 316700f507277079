"""The environment contract: what a launcher tells each worker, and how to read it back.

Every launcher hands a worker the same few facts through environment variables,
each under its own names. :func:`worker_env` writes torchrun's contract (the one
clusterlab gives its workers); :func:`read_env` reads a worker's
:class:`RankView` back from whichever launcher started it, through one table per
launcher (:data:`LAUNCHERS`):

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

Only torchrun, OpenMPI (by slot) and the manual exports promise the even,
node-by-node numbering ``rank = node_rank * local_world_size + local_rank``, so
only they are checked against it. Slurm lays tasks out unevenly and cyclically,
and DeepSpeed's launcher (``deepspeed/launcher/launch.py``) numbers ranks across
its hostfile's slots but exports ``LOCAL_RANK = RANK % LOCAL_SIZE``: on a host
list of 3 + 2 slots, rank 3 (the first of the second host) gets ``LOCAL_RANK=1``.
Their views are read as those launchers mean them.

A missing or inconsistent variable raises :class:`~clusterlab.errors.UsageError`
naming it.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable, Mapping

from .errors import UsageError
from .layout import ClusterLayout


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
                                       "master_addr master_port restart_count sources",
                          defaults=(None, None, 0, None))):
    """Who this process is in its job, as its launcher described it.

    ``launcher`` names the table that matched; ``sources`` maps each field to the
    environment variable (or rule) it came from.
    """

    __slots__ = ()
    launcher: str
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    nnodes: int
    master_addr: str | None
    master_port: int | None
    restart_count: int
    sources: dict[str, str]

    def __str__(self) -> str:
        master = f"{self.master_addr}:{self.master_port}" if self.master_addr else "unset"
        return (
            f"rank {self.rank}/{self.world_size} node {self.node_rank}/{self.nnodes} "
            f"local {self.local_rank}/{self.local_world_size} master {master} (from {self.launcher})"
        )


class Launcher(namedtuple("Launcher", "name marker names required even derive")):
    """One launcher's table: the variable that identifies it (``marker``), the variable(s) each
    fact is read from (``names``: the first one set wins), the facts that must be set
    (``required``), whether it promises the even node-by-node numbering (``even``), and a
    function that derives the facts it does not export (and may return a default master address)."""

    __slots__ = ()
    name: str
    marker: str
    names: dict[str, tuple[str, ...]]
    required: tuple[str, ...]
    even: bool
    derive: Callable[[Mapping[str, str], dict[str, int], dict[str, str], int | None], str | None] | None


_MINIMUM = {"world_size": 1, "local_world_size": 1, "nnodes": 1, "master_port": 1}


def _take(env: Mapping[str, str], table: Launcher) -> tuple[dict[str, int], dict[str, str]]:
    """Every fact of ``table`` whose variable is set, as an int, and where it came from."""
    facts, sources = {}, {}
    for fact, names in table.names.items():
        name = next((n for n in names if env.get(n)), None)
        if name is None:
            continue
        raw = env[name]
        try:
            value = int(raw)
        except ValueError:
            raise UsageError(f"{name}={raw!r} is not an integer") from None
        if value < _MINIMUM.get(fact, 0):
            raise UsageError(f"{name}={value} must be at least {_MINIMUM.get(fact, 0)}")
        facts[fact], sources[fact] = value, name
    return facts, sources


def _set(facts: dict, sources: dict, fact: str, value: int, rule: str) -> None:
    if fact not in facts:
        facts[fact], sources[fact] = value, rule


def _per_node_rule(facts: dict[str, int], sources: dict[str, str], nproc_per_node: int | None, lws_name: str) -> None:
    """torchrun-like tables: the workers per node from ``--nproc-per-node`` if not exported;
    node rank and node count from the even numbering."""
    if "local_world_size" not in facts:
        if not nproc_per_node:
            raise UsageError(f"{lws_name} is not set; it gives the workers per node (or pass --nproc-per-node)")
        _set(facts, sources, "local_world_size", nproc_per_node, "--nproc-per-node")
    lws = facts["local_world_size"]
    _set(facts, sources, "node_rank", facts["rank"] // lws, f"{sources['rank']} // {sources['local_world_size']}")
    _set(facts, sources, "nnodes", -(-facts["world_size"] // lws), f"{sources['world_size']} / {sources['local_world_size']}")


def _torchrun(env, facts, sources, nproc_per_node) -> None:
    _per_node_rule(facts, sources, nproc_per_node, "LOCAL_WORLD_SIZE")
    return None


def _manual(env, facts, sources, nproc_per_node) -> None:
    """The seed's Part 1 exports: NODE_RANK, LOCAL_RANK, WORLD_SIZE, no RANK."""
    if "local_world_size" not in facts and not nproc_per_node:
        raise UsageError("NODE_RANK is set but RANK is not, and nothing says how many workers run per node: "
                         "export LOCAL_WORLD_SIZE (e.g. 4) or pass --nproc-per-node")
    _set(facts, sources, "local_world_size", nproc_per_node or 0, "--nproc-per-node")
    node, local, world, lws = facts["node_rank"], facts["local_rank"], facts["world_size"], facts["local_world_size"]
    layout = ClusterLayout.from_world_size(world, lws)
    if node >= layout.nnodes:
        raise UsageError(f"NODE_RANK={node} is outside 0..{layout.nnodes - 1} for WORLD_SIZE={world}")
    if local >= lws:
        raise UsageError(f"LOCAL_RANK={local} is outside 0..{lws - 1} for {lws} workers per node")
    _set(facts, sources, "rank", node * lws + local, "NODE_RANK * nproc_per_node + LOCAL_RANK")
    _set(facts, sources, "nnodes", layout.nnodes, "WORLD_SIZE / nproc_per_node")


def _openmpi(env, facts, sources, nproc_per_node) -> None:
    # OpenMPI names no node index; with its default by-slot mapping it is rank // local size.
    _per_node_rule(facts, sources, None, "OMPI_COMM_WORLD_LOCAL_SIZE")


def _slurm(env, facts, sources, nproc_per_node) -> str | None:
    """One task per GPU under srun. The tasks on this node come from ``SLURM_TASKS_PER_NODE``
    (``3(x2),2``); MASTER_ADDR defaults to the first host of the job's node list, MASTER_PORT
    to ``15000 +`` the last four digits of ``SLURM_JOB_ID`` (PyTorch Lightning's
    ``SLURMEnvironment`` rule: jobs whose ids end alike, N and N + 10000, get the same port)."""
    raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if raw and "local_world_size" not in facts:
        from .slurm.layout import expand_counts

        counts = expand_counts(raw)
        if facts["node_rank"] >= len(counts):
            raise UsageError(f"SLURM_NODEID={facts['node_rank']} has no entry in SLURM_TASKS_PER_NODE={raw!r}")
        _set(facts, sources, "local_world_size", counts[facts["node_rank"]], "SLURM_TASKS_PER_NODE")
    _set(facts, sources, "local_world_size", facts["world_size"] // facts["nnodes"], "SLURM_NTASKS / SLURM_NNODES")
    if "master_port" not in facts and env.get("SLURM_JOB_ID", "").isdigit():
        _set(facts, sources, "master_port", 15000 + int(env["SLURM_JOB_ID"][-4:]), "15000 + last 4 digits of SLURM_JOB_ID")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if env.get("MASTER_ADDR") or not nodelist:
        return None
    from .slurm.hosts import expand, resolve_simulated

    sources["master_addr"] = "first host of SLURM_JOB_NODELIST"
    addr = expand(nodelist)[0]
    if env.get("CLUSTERLAB_SIMULATED_HOSTS") == "1":  # the lab's srun: node001 is this machine
        sources["master_addr"] += " (a simulated node: this machine)"
        return resolve_simulated(addr, dict(env))
    return addr


_MASTER = {"master_port": ("MASTER_PORT",)}

#: One table per launcher. First match wins: DeepSpeed sets RANK too, and torchrun inside an srun task
#: still sees SLURM_*.
LAUNCHERS = (
    Launcher("DeepSpeed", "CROSS_RANK", {
        "rank": ("RANK",), "local_rank": ("LOCAL_RANK",), "world_size": ("WORLD_SIZE",),
        "local_world_size": ("LOCAL_SIZE",), "node_rank": ("CROSS_RANK",), "nnodes": ("CROSS_SIZE",), **_MASTER,
    }, ("rank", "local_rank", "world_size", "local_world_size", "node_rank", "nnodes"), False, None),
    Launcher("torchrun", "RANK", {
        "rank": ("RANK",), "local_rank": ("LOCAL_RANK",), "world_size": ("WORLD_SIZE",),
        "local_world_size": ("LOCAL_WORLD_SIZE",), "node_rank": ("GROUP_RANK", "NODE_RANK"),
        "nnodes": ("GROUP_WORLD_SIZE",), "restart_count": ("TORCHELASTIC_RESTART_COUNT",), **_MASTER,
    }, ("rank", "local_rank", "world_size"), True, _torchrun),
    Launcher("OpenMPI", "OMPI_COMM_WORLD_RANK", {
        "rank": ("OMPI_COMM_WORLD_RANK",), "local_rank": ("OMPI_COMM_WORLD_LOCAL_RANK",),
        "world_size": ("OMPI_COMM_WORLD_SIZE",), "local_world_size": ("OMPI_COMM_WORLD_LOCAL_SIZE",), **_MASTER,
    }, ("rank", "local_rank", "world_size", "local_world_size"), True, _openmpi),
    Launcher("Slurm", "SLURM_PROCID", {
        "rank": ("SLURM_PROCID",), "local_rank": ("SLURM_LOCALID",), "world_size": ("SLURM_NTASKS",),
        "node_rank": ("SLURM_NODEID",), "nnodes": ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"),
        "restart_count": ("SLURM_RESTART_COUNT",), **_MASTER,
    }, ("rank", "local_rank", "world_size", "node_rank", "nnodes"), False, _slurm),
    Launcher("manual exports", "NODE_RANK", {
        "node_rank": ("NODE_RANK",), "local_rank": ("LOCAL_RANK",), "world_size": ("WORLD_SIZE",),
        "local_world_size": ("LOCAL_WORLD_SIZE",), **_MASTER,
    }, ("node_rank", "local_rank", "world_size"), True, _manual),
)


def _launcher_name(table: Launcher, env: Mapping[str, str]) -> str:
    if table.name != "torchrun":
        return table.name
    if "CLUSTERLAB_CHANNEL" in env:
        return "clusterlab"
    return "torchrun" if "TORCHELASTIC_RUN_ID" in env else "RANK/WORLD_SIZE exports"


def _view(env: Mapping[str, str], table: Launcher, nproc_per_node: int | None) -> RankView:
    facts, s = _take(env, table)
    for fact in table.required:
        if fact not in facts:
            raise UsageError(f"{table.names[fact][0]} is not set; it gives the {fact.replace('_', ' ')}")
    addr = table.derive(env, facts, s, nproc_per_node) if table.derive else None
    if "master_port" in facts and facts["master_port"] > 65535:
        raise UsageError(f"{s['master_port']}={facts['master_port']} is not a TCP port (1-65535)")
    if env.get("MASTER_ADDR"):
        addr, s["master_addr"] = env["MASTER_ADDR"], "MASTER_ADDR"
    view = RankView(_launcher_name(table, env), facts["rank"], facts["local_rank"], facts["world_size"],
                    facts["local_world_size"], facts["node_rank"], facts["nnodes"], addr,
                    facts.get("master_port"), facts.get("restart_count", 0), s)
    return _check(view, table.even)


def _check(v: RankView, even: bool) -> RankView:
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
    if even and v.rank != v.node_rank * v.local_world_size + v.local_rank:
        raise UsageError(
            f"inconsistent ranks: {src['rank']}={v.rank} but {src['node_rank']}={v.node_rank} * "
            f"{src['local_world_size']}={v.local_world_size} + {src['local_rank']}={v.local_rank} "
            f"= {v.node_rank * v.local_world_size + v.local_rank}"
        )
    return v


def read_env(env: Mapping[str, str] | None = None, *, nproc_per_node: int | None = None) -> RankView:
    """Read this process's :class:`RankView` from the environment of whichever launcher started it."""
    env = os.environ if env is None else env
    for table in LAUNCHERS:
        if table.marker in env:
            return _view(env, table, nproc_per_node)
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
