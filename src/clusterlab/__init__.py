"""clusterlab: multi-node distributed training, simulated on one machine.

What a worker script calls::

    import clusterlab

    view = clusterlab.read_env()          # rank, local rank, world size, node, master
    clusterlab.barrier("loaded")          # wait for every rank of every node
    ports = clusterlab.all_gather_object(my_port)   # one value from each rank

What a tool calls: :class:`ClusterLayout` (the rank map), :func:`worker_env`
(torchrun's environment contract), ``clusterlab.run.launch`` / ``simulate``.

Imports are lazy, so ``import clusterlab`` in every worker costs almost nothing.
"""

from __future__ import annotations

__all__ = [
    "BarrierError",
    "ClusterLayout",
    "ClusterlabError",
    "RankView",
    "UsageError",
    "all_gather_object",
    "barrier",
    "read_env",
    "worker_env",
]

_WHERE = {
    "barrier": "channel",
    "all_gather_object": "channel",
    "read_env": "env",
    "RankView": "env",
    "worker_env": "env",
    "ClusterLayout": "layout",
    "BarrierError": "errors",
    "ClusterlabError": "errors",
    "UsageError": "errors",
}


def __getattr__(name: str):
    if name in _WHERE:
        # __import__, not importlib.import_module: importing importlib costs every worker ~1 ms
        value = getattr(__import__(f"{__name__}.{_WHERE[name]}", fromlist=[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clusterlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
