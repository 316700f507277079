"""DeepSpeed's hostfile and its ``--include`` / ``--exclude`` / ``--num_nodes`` / ``--num_gpus`` filters.

The ``deepspeed`` launcher (``deepspeed/launcher/runner.py``) reads a hostfile
that lists machines and their GPU "slots", one per line::

    # comment lines and blank lines are ignored
    worker-0 slots=4
    worker-1 slots=4

``fetch_hostfile``'s rules, kept here: a line must start with a host name,
whitespace and ``slots=N`` (anything after that is ignored); a host listed twice,
any other line, or a file with no hosts at all is an error.

Filters pick slots from that pool (``parse_resource_filter``):

* ``--include worker-0@worker-1:0,2`` - all slots of worker-0, slots 0 and 2 of worker-1;
* ``--exclude worker-1:0`` - everything but slot 0 of worker-1 (a bare host drops the host);
* ``--num_nodes 1`` - the first host(s) only; ``--num_gpus 2`` - slots 0..1 on every host.

include and exclude are mutually exclusive, and neither mixes with
num_nodes/num_gpus. Hosts keep the hostfile's order (that is how ranks are
numbered). DeepSpeed's docstring says a bare host in ``--include`` means all of
its slots; some releases instead dropped it (deepspeedai/DeepSpeed issue #6671,
fixed by PR #8239). The documented meaning is used here. One deliberate
difference: DeepSpeed accepts ``slots=0`` and silently drops the host; here it
is an error, because a host with no slots is almost always a typo.

Each worker then gets (``deepspeed/launcher/launch.py``): ``RANK`` (counted
across hosts in order), ``LOCAL_RANK`` (index among its host's slots),
``CROSS_RANK`` (host index), ``CROSS_SIZE`` (number of hosts), ``LOCAL_SIZE``
(slots used on its host), ``WORLD_SIZE`` and ``CUDA_VISIBLE_DEVICES`` (the slot ids).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import UsageError

_LINE = re.compile(r"^(\S+)\s+slots=(\d+)")


def parse_hostfile(text: str, source: str = "hostfile") -> "OrderedDict[str, int]":
    """``{host: slots}`` in file order, with DeepSpeed's rules (see the module docstring)."""
    pool: OrderedDict[str, int] = OrderedDict()
    for lineno, raw in enumerate(text.splitlines(), 1):
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
        if slots < 1:
            raise UsageError(f"{source} line {lineno}: {host} has slots={slots}; a host needs at least 1 slot")
        pool[host] = slots
    if not pool:
        raise UsageError(f"{source} lists no hosts; add lines like 'worker-0 slots=4'")
    return pool


def read_hostfile(path: str) -> "OrderedDict[str, int]":
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read hostfile {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"hostfile {path!r} is not UTF-8 text (byte {exc.start}); a hostfile holds lines like 'worker-0 slots=4'") from None
    return parse_hostfile(text, source=path)


def _parse_filter(spec: str, flag: str) -> "OrderedDict[str, list[int]]":
    """``"worker-0@worker-1:0,2"`` -> ``{"worker-0": [], "worker-1": [0, 2]}`` ([] = the whole host)."""
    out: OrderedDict[str, list[int]] = OrderedDict()
    for part in spec.split("@"):
        host, sep, slots = part.partition(":")
        if not host or (sep and not slots):
            raise UsageError(f"{flag} {spec!r}: {part!r} is not NAME or NAME:SLOT[,SLOT...] (e.g. worker-1:0,2)")
        ids = []
        for s in slots.split(",") if sep else []:
            if not s.strip().isdigit():
                raise UsageError(f"{flag} {spec!r}: slot {s!r} on {host} is not a number")
            ids.append(int(s))
        out.setdefault(host, [])
        out[host] = sorted(set(out[host] + ids))
    return out


def filter_resources(pool, include: str = "", exclude: str = "", num_nodes: int = -1, num_gpus: int = -1):
    """The slots to use per host, ``{host: [slot ids]}``, after DeepSpeed's filters."""
    if include and exclude:
        raise UsageError("--include and --exclude are mutually exclusive; use one of them")
    if (num_nodes > 0 or num_gpus > 0) and (include or exclude):
        raise UsageError("--num_nodes/--num_gpus cannot be combined with --include/--exclude (DeepSpeed refuses too)")
    active = OrderedDict((h, list(range(n))) for h, n in pool.items())
    spec, flag = (include, "--include") if include else (exclude, "--exclude")
    if spec:
        chosen = _parse_filter(spec, flag)
        for host, slots in chosen.items():
            if host not in pool:
                raise UsageError(f"{flag}: host {host!r} is not in the hostfile (hosts: {', '.join(pool)})")
            for s in slots:
                if s not in active[host]:
                    raise UsageError(f"{flag}: no slot {s} on host {host!r} (it has slots 0..{pool[host] - 1})")
        if include:
            active = OrderedDict((h, chosen[h] or active[h]) for h in pool if h in chosen)
        else:
            for host, slots in chosen.items():
                active[host] = [s for s in active[host] if slots and s not in slots]
    if num_nodes > 0:
        active = OrderedDict(list(active.items())[:num_nodes])
    if num_gpus > 0:
        active = OrderedDict((h, list(range(num_gpus))) for h in active)
    active = OrderedDict((h, s) for h, s in active.items() if s)
    if not active:
        raise UsageError("the filters leave no slots to run on; include at least one host or slot")
    return active


@dataclass(frozen=True)
class DeepSpeedRank:
    """One worker as DeepSpeed's launcher describes it."""

    host: str
    rank: int
    local_rank: int
    cross_rank: int
    cross_size: int
    local_size: int
    world_size: int
    visible_device: int

    def env(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
            "CROSS_RANK": str(self.cross_rank), "CROSS_SIZE": str(self.cross_size), "LOCAL_SIZE": str(self.local_size),
        }


def world_layout(active) -> list[DeepSpeedRank]:
    """Every worker of the job, in rank order, from ``{host: [slot ids]}``."""
    world = sum(len(s) for s in active.values())
    out, rank = [], 0
    for cross_rank, (host, slots) in enumerate(active.items()):
        for local_rank, slot in enumerate(slots):
            out.append(DeepSpeedRank(host, rank, local_rank, cross_rank, len(active), len(slots), world, slot))
            rank += 1
    return out


def format_layout(active) -> str:
    lines = [f"{'host':<12}{'RANK':>5}{'LOCAL_RANK':>11}{'CROSS_RANK':>11}{'CROSS_SIZE':>11}{'LOCAL_SIZE':>11}"
             f"{'WORLD_SIZE':>11}  CUDA_VISIBLE_DEVICES"]
    for r in world_layout(active):
        lines.append(f"{r.host:<12}{r.rank:>5}{r.local_rank:>11}{r.cross_rank:>11}{r.cross_size:>11}"
                     f"{r.local_size:>11}{r.world_size:>11}  {','.join(map(str, active[r.host]))}")
    return "\n".join(lines)
