"""Host lists: Slurm's compact node names, and simulated nodes that all live on this machine.

Slurm never lists nodes one by one; it writes *hostlist expressions*:
``node[001-004]`` is four nodes, ``gpu[1,3],login1`` is three, and zero padding
is part of the name (``node[001-004]`` expands to ``node001``, not ``node1``).
``scontrol show hostnames`` expands an expression, one name a line, in order.
clusterlab leaves the parsing to the python-hostlist package (``import
hostlist``), the same grammar Slurm's own ``hostlist.c`` implements, rather than
a hand-written regular expression.

Simulated nodes are hosts where the kernel allows it (:mod:`clusterlab.host`): a task
on node002 runs in node002's namespaces, ``hostname`` says ``node002`` and every node
name of the job resolves. Where it does not (``--hosts=off``, or ``auto`` falling back),
every node is simply this machine and ``node002`` is a name no resolver knows; only
then does :func:`resolve_simulated` turn a simulated node name into an address a
socket can use (127.0.0.1), for ``clusterlab launch`` inside the job.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping

import hostlist

from ..errors import UsageError

#: The simulated cluster's node names, like a real cluster's ``NodeName=node[001-999]``.
NODE_PREFIX = "node"
NODE_DIGITS = 3
#: What one simulated node offers (slurm.conf's ``CPUs=`` and ``Gres=gpu:``).
CPUS_PER_NODE = 64
GPUS_PER_NODE = 8

#: Exported into every simulated job; says "node names here are simulated, all on 127.0.0.1".
SIMULATED_ENV = "CLUSTERLAB_SIMULATED_HOSTS"
#: The simulated nodes' names (a hostlist expression), exported with SIMULATED_ENV.
SIMULATED_NODES_ENV = "CLUSTERLAB_SIMULATED_NODES"


def expand(expression: str) -> list[str]:
    """``"node[001-003]"`` -> ``["node001", "node002", "node003"]``, order kept (scontrol's order)."""
    if not isinstance(expression, str) or not expression.strip():
        raise UsageError(f"hostlist {expression!r} is empty; give names such as node[001-004]")
    try:
        names = hostlist.expand_hostlist(expression.strip())
    except hostlist.BadHostlist as exc:
        raise UsageError(
            f"hostlist {expression!r} is malformed ({exc}); write it as Slurm does, e.g. node[001-004] "
            f"or gpu[1,3],login1"
        ) from None
    if not names or any(not n or any(c in n for c in " []") for n in names):
        raise UsageError(f"hostlist {expression!r} is malformed; write it as Slurm does, e.g. node[001-004]")
    return names


def compress(names: list[str]) -> str:
    """The inverse of :func:`expand`, as Slurm writes it: ``["node001", "node002"]`` -> ``"node[001-002]"``.

    Order is kept, as ``scontrol show hostlist`` keeps it (Slurm's
    ``hostlist_ranged_string`` on an unsorted list): neighbouring names with the
    same prefix and digit width share one bracket, and only ascending runs become
    ranges, so ``node003,node001,node002`` is ``node[003,001-002]``. The first name
    stays first: every task agrees it is node 0.
    """
    groups: list[tuple[str, int, list[int]]] = []  # (prefix, width, numbers), or (name, -1, []) for a plain name
    for name in names:
        m = _NUMBERED.match(name)
        if not m:
            groups.append((name, -1, []))
            continue
        prefix, digits = m.group(1), m.group(2)
        if groups and groups[-1][:2] == (prefix, len(digits)):
            groups[-1][2].append(int(digits))
        else:
            groups.append((prefix, len(digits), [int(digits)]))
    return ",".join(_bracket(prefix, width, numbers) for prefix, width, numbers in groups)


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _bracket(prefix: str, width: int, numbers: list[int]) -> str:
    if width < 0:
        return prefix
    if len(numbers) == 1:
        return f"{prefix}{numbers[0]:0{width}d}"
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    parts = [f"{r[0]:0{width}d}" + (f"-{r[-1]:0{width}d}" if len(r) > 1 else "") for r in runs]
    return f"{prefix}[{','.join(parts)}]"


def simulated_names(count: int, first: int = 1) -> list[str]:
    """The first ``count`` nodes of the simulated cluster: ``node001``, ``node002``, ..."""
    last = first + count - 1
    if last >= 10**NODE_DIGITS:
        raise UsageError(f"{count} nodes do not fit in the simulated cluster {NODE_PREFIX}[001-999]; ask for fewer")
    return [f"{NODE_PREFIX}{i:0{NODE_DIGITS}d}" for i in range(first, last + 1)]


def resolve_simulated(host: str, env: Mapping[str, str] | None = None) -> str:
    """The address to connect to for ``host``, when ``host`` may be a simulated node name.

    Inside a simulated Slurm job (``CLUSTERLAB_SIMULATED_HOSTS=1`` in the
    environment), a name of the job's simulated nodes (``CLUSTERLAB_SIMULATED_NODES``)
    maps to ``127.0.0.1``, since every simulated node is this machine. Any other
    name is returned unchanged, so a real address or a resolvable host name keeps
    working, and outside a simulated job this function changes nothing.

    Launchers call it on ``--master-addr`` just before they bind or connect::

        addr = resolve_simulated(master_addr)   # "node001" -> "127.0.0.1" in a simulated job
    """
    env = os.environ if env is None else env
    if env.get(SIMULATED_ENV) != "1" or not host:  # nodes that are hosts resolve by themselves
        return host
    nodes = env.get(SIMULATED_NODES_ENV, "")
    try:
        simulated = set(hostlist.expand_hostlist(nodes)) if nodes else set()
    except hostlist.BadHostlist:
        simulated = set()
    if host in simulated:
        return "127.0.0.1"
    if not simulated and host.startswith(NODE_PREFIX) and host[len(NODE_PREFIX):].isdigit():
        return "127.0.0.1"  # the default simulated names, when the node list was not exported
    return host


def launch_node_address() -> str:
    """``SLURM_LAUNCH_NODE_IPADDR``: where srun runs. Here always this machine, 127.0.0.1."""
    return "127.0.0.1"


def submit_host() -> str:
    """``SLURM_SUBMIT_HOST``: the real short host name of this machine."""
    return socket.gethostname().split(".")[0]
