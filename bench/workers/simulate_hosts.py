"""``clusterlab simulate`` with every simulated node a host (clusterlab.host), as run.py will do once wired.

    python bench/workers/simulate_hosts.py --nnodes 2 --nproc-per-node 4 WORKER

The launcher plans the job's hosts (one probe, forked) before it forks its agents;
each agent becomes its node first thing after the fork, so its workers are born in
the node's namespaces. Only the bench uses this wrapper; the launchers call the same
two functions (see the report of issue 12, section 1).
"""

import os
import sys

from clusterlab import cli, host, run

_supervise, _Agent = run._supervise, run.NodeAgent
_hosts = []


def supervise(config, nodes, listener, shares, command):
    _hosts.append(host.plan([nodes[n] for n in sorted(nodes)]))
    run.log(str(_hosts[0]) + (f"; {_hosts[0].note}" if _hosts[0].note else ""))
    return _supervise(config, nodes, listener, shares, command)


class HostAgent(_Agent):
    def __init__(self, config, node_rank, **kwargs):
        host.become(_hosts[0], node_rank)
        super().__init__(config, node_rank, **kwargs)


run._supervise, run.NodeAgent = supervise, HostAgent
code = cli.main(["simulate", *sys.argv[1:]])
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)  # as the console script does after a launch
