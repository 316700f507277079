"""DeepSpeed's hostfile, its ``--include`` / ``--exclude`` / ``--num_nodes`` / ``--num_gpus`` filters,
and the environment its ``launch.py`` gives every rank.

The ``deepspeed`` launcher (``deepspeed/launcher/runner.py``) reads a hostfile
that lists machines and their GPU "slots", one per line::

    # comment lines and blank lines are ignored
    worker-0 slots=4
    worker-1 slots=4

``fetch_hostfile`` reads it with ``readlines()`` (lines end at ``\\n``, ``\\r\\n``
or ``\\r``, nothing else), strips each line, and matches ``^(\\S+)\\s+slots=(\\d+)``:
anything after ``slots=N`` is ignored; a host listed twice, any other line, or a
file with no hosts at all is an error. ``slots=0`` is accepted: the host stays in
the job as a node with no ranks (it still counts in ``CROSS_SIZE``), unless a
filter removes it.

Filters pick slots from that pool (``parse_inclusion_exclusion`` and
``parse_resource_filter``, then ``apply_num_nodes_and_gpus``):

* ``--include worker-0@worker-1:0,2`` - all slots of worker-0, slots 0 and 2 of worker-1;
* ``--exclude worker-1:0`` - everything but slot 0 of worker-1 (a bare host drops the host);
* ``--num_nodes 1`` - the first host(s) only; ``--num_gpus 2`` - slots 0..1 on every host
  (DeepSpeed does not check that a host has that many).

A slot number is read with Python's ``int()``, as DeepSpeed does: ``+1`` means 1,
``²`` is refused. include and exclude are mutually exclusive, and neither mixes with
``--num_nodes``/``--num_gpus`` (any value >= 0 counts as given, 0 included). Hosts
keep the hostfile's order: that is how ranks are numbered.

Each worker then gets (``deepspeed/launcher/launch.py``, ``main``): ``RANK``
(counted across hosts in order), ``WORLD_SIZE``, ``CROSS_RANK`` (the host's
index), ``CROSS_SIZE`` (the number of hosts), ``LOCAL_SIZE`` (ranks on its host),
``CUDA_VISIBLE_DEVICES`` (the host's slot ids), ``MASTER_ADDR``, ``MASTER_PORT``,
and **``LOCAL_RANK = RANK % LOCAL_SIZE``**. That last one is the trap: it is the
index of the rank on its host only when every host runs the same number of ranks.
With ``worker-0 slots=3`` / ``worker-1 slots=2``, ranks 3 and 4 (on worker-1) get
``LOCAL_RANK`` 1 and 0, not 0 and 1. torchrun and srun count local ranks per host.

Where this module differs from DeepSpeed on purpose is listed, with the reason,
in :data:`clusterlab.zero.differences.DIFFERENCES`.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import UsageError

_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")  # fetch_hostfile's pattern, unchanged


def parse_hostfile(text: str, source: str = "hostfile") -> "OrderedDict[str, int]":
    """``{host: slots}`` in file order, with DeepSpeed's rules (see the module docstring)."""
    pool: OrderedDict[str, int] = OrderedDict()
    # readlines() in text mode, as DeepSpeed reads the file: universal newlines, no other separator
    for lineno, raw in enumerate(io.StringIO(text, newline=None).readlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.search(line)
        if not m:
            raise UsageError(
                f"{source} line {lineno}: {line!r} is not 'HOST slots=N'; write it like 'worker-1 slots=4'"
            )
        host, slots = m.group(1), int(m.group(2))
        if host in pool:
            raise UsageError(f"{source} line {lineno}: host {host!r} is listed twice; list every host once")
        pool[host] = slots
    if not pool:
        raise UsageError(f"{source} lists no hosts; add lines like 'worker-0 slots=4'")
    return pool


def read_hostfile(path: str) -> "OrderedDict[str, int]":
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read hostfile {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"hostfile {path!r} is not UTF-8 text (byte {exc.start}); "
                         "a hostfile holds lines like 'worker-0 slots=4'") from None
    return parse_hostfile(text, source=path)


def _slot(text: str, flag: str, spec: str, host: str) -> int:
    try:
        return int(text)  # what DeepSpeed's parse_node_config does, so "+1" and " 2" are slots too
    except ValueError:
        raise UsageError(f"{flag} {spec!r}: slot {text!r} on {host!r} is not a number; write NAME:0,2") from None


def _parse_filter(spec: str, flag: str) -> "OrderedDict[str, list[int]]":
    """``"worker-0@worker-1:0,2"`` -> ``{"worker-0": [], "worker-1": [0, 2]}`` ([] = the whole host).

    ``parse_node_config_list``: a host named twice gets the union of its slots.
    """
    out: OrderedDict[str, list[int]] = OrderedDict()
    for part in spec.split("@"):
        fields = part.split(":")
        if len(fields) > 2:
            raise UsageError(f"{flag} {spec!r}: {part!r} has more than one ':'; write NAME or NAME:SLOT[,SLOT...]")
        host = fields[0]
        ids = [_slot(s, flag, spec, host) for s in fields[1].split(",")] if len(fields) == 2 else []
        out[host] = sorted(set(out.get(host, []) + ids))
    return out


def filter_resources(pool, include: str = "", exclude: str = "", num_nodes: int = -1, num_gpus: int = -1):
    """The slots to use per host, ``{host: [slot ids]}``, after DeepSpeed's filters (runner.py's order)."""
    if include and exclude:
        raise UsageError("--include and --exclude are mutually exclusive; use one of them")
    if (num_nodes >= 0 or num_gpus >= 0) and (include or exclude):
        raise UsageError(
            f"--num_nodes={num_nodes}/--num_gpus={num_gpus} cannot be combined with --include/--exclude "
            "(DeepSpeed refuses it too); drop one of them"
        )
    active = OrderedDict((h, list(range(n))) for h, n in pool.items())
    spec, flag = (include, "--include") if include else (exclude, "--exclude")
    if spec:
        chosen = _parse_filter(spec, flag)
        picked: dict[str, list[int]] = {} if include else {h: list(s) for h, s in active.items()}
        for host, slots in chosen.items():
            if host not in pool:
                raise UsageError(f"{flag} {spec!r}: host {host!r} is not in the hostfile (hosts: {', '.join(pool)})")
            for s in slots:
                if s not in active[host]:
                    raise UsageError(f"{flag} {spec!r}: no slot {s} on host {host!r} (it has slots 0..{pool[host] - 1})"
                                     if pool[host] else f"{flag} {spec!r}: host {host!r} has slots=0, no slot {s}")
            if include:
                picked[host] = slots or active[host]
            else:
                picked[host] = [s for s in picked[host] if slots and s not in slots]
        # a filter drops the hosts it leaves empty; without one, an empty host stays (DeepSpeed does the same)
        active = OrderedDict((h, picked[h]) for h in pool if picked.get(h))
    if num_nodes > 0:
        active = OrderedDict(list(active.items())[:num_nodes])
    if num_gpus > 0:
        active = OrderedDict((h, list(range(num_gpus))) for h in active)
    if not any(active.values()):
        raise UsageError(
            "no slots left to run on (" + (f"{flag} {spec!r} leaves none" if spec else "every host has slots=0")
            + "); include at least one host with slots >= 1"
        )
    return active


@dataclass(frozen=True)
class DeepSpeedRank:
    """One worker as DeepSpeed's ``launch.py`` describes it."""

    host: str
    rank: int
    local_rank: int  # DeepSpeed's: rank % local_size
    index_on_host: int  # what torchrun and srun call the local rank
    cross_rank: int
    cross_size: int
    local_size: int
    world_size: int
    visible_devices: tuple[int, ...]

    def env(self, master_addr: str = "127.0.0.1", master_port: int = 29500) -> dict[str, str]:
        """The variables ``launch.py`` sets for this rank (it also passes ``--local_rank=LOCAL_RANK``)."""
        return {
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.visible_devices)),
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(self.world_size), "CROSS_RANK": str(self.cross_rank),
            "CROSS_SIZE": str(self.cross_size), "LOCAL_SIZE": str(self.local_size),
            "RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank),
        }


def world_layout(active) -> list[DeepSpeedRank]:
    """Every worker of the job, in rank order, from ``{host: [slot ids]}`` (launch.py's loop)."""
    world = sum(len(s) for s in active.values())
    out, rank = [], 0
    for cross_rank, (host, slots) in enumerate(active.items()):
        for index, _slot_id in enumerate(slots):
            out.append(DeepSpeedRank(host, rank, rank % len(slots), index, cross_rank, len(active), len(slots),
                                     world, tuple(slots)))
            rank += 1
    return out


def format_layout(active) -> str:
    """The table ``clusterlab zero hostfile`` prints, then one line per rank that falls into the LOCAL_RANK trap."""
    lines = [f"{'host':<12}{'RANK':>5}{'LOCAL_RANK':>11}{'CROSS_RANK':>11}{'CROSS_SIZE':>11}{'LOCAL_SIZE':>11}"
             f"{'WORLD_SIZE':>11}  CUDA_VISIBLE_DEVICES"]
    ranks = world_layout(active)
    for r in ranks:
        lines.append(f"{r.host:<12}{r.rank:>5}{r.local_rank:>11}{r.cross_rank:>11}{r.cross_size:>11}"
                     f"{r.local_size:>11}{r.world_size:>11}  {','.join(map(str, r.visible_devices))}")
    for cross_rank, (host, slots) in enumerate(active.items()):
        if not slots:
            lines.append(f"{host} (CROSS_RANK={cross_rank}) has no slots: it runs no rank but counts in CROSS_SIZE")
    trapped = [r for r in ranks if r.local_rank != r.index_on_host]
    if trapped:
        first_on: dict[str, int] = {}
        for r in ranks:
            first_on.setdefault(r.host, r.rank)
        lines.append("LOCAL_RANK = RANK % LOCAL_SIZE (DeepSpeed's launch.py), not the index on the host:")
        for r in trapped:
            lines.append(f"  rank {r.rank} is process {r.index_on_host} on {r.host}: LOCAL_RANK = {r.rank} % {r.local_size}"
                         f" = {r.local_rank}; RANK - LOCAL_RANK = {r.rank - r.local_rank}, not {first_on[r.host]}")
    return "\n".join(lines)
