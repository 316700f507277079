"""Which Slurm the simulation follows: version, plugins, and the shape of a node, in one place.

clusterlab's srun, sbatch and scontrol behave as **Slurm 22.05** (Debian 12's
``slurm-wlm`` 22.05.8) on a cluster configured like this::

    SelectType=select/cons_tres   SelectTypeParameters=CR_Core
    ProctrackType=proctrack/linuxproc   TaskPlugin=task/none   GresTypes=gpu
    NodeName=node[001-999] CPUs=64 Sockets=2 CoresPerSocket=32 ThreadsPerCore=1 Gres=gpu:8
    PartitionName=debug Nodes=ALL Default=YES

:func:`slurm_conf` writes that file (a simulated job's ``SLURM_CONF`` points at
it), and :mod:`clusterlab.slurm.realslurm` starts a real cluster from the same
values, which is what ``tests/conformance`` compares against.

**What changes between versions** (so a script that relies on it may behave
differently on your cluster): srun's ``--cpus-per-task`` inheritance. Slurm 22.05
stopped reading ``SLURM_CPUS_PER_TASK`` in srun (its release notes: "srun will no
longer read in SLURM_CPUS_PER_TASK"; only ``SRUN_CPUS_PER_TASK``), so inside
``sbatch -c 8`` a plain ``srun`` gets 1 CPU per task. 23.11 reads it again.
Also version-dependent: 22.05 packs a job's CPUs onto its first node on shared
nodes (``-N2 -n4`` gives ``3,1``), where whole nodes (``--exclusive``) or
``--ntasks-per-node`` give the even layout.
"""

from __future__ import annotations

from . import hosts

SLURM_VERSION = "22.05"
CLUSTER_NAME = "clusterlab"
PARTITION = "debug"
SELECT = "select/cons_tres"
SELECT_PARAMETERS = "CR_Core"
#: SLURM_PROTOCOL_VERSION of 22.05 and the plugin id of select/cons_tres, as in SLURM_WORKING_CLUSTER
PROTOCOL_VERSION, SELECT_PLUGIN_ID = 9728, 109
#: slurm.conf's KillWait (seconds between SIGTERM and SIGKILL when a step is stopped)
KILL_WAIT = 5
#: srun waits KillWait + this many seconds for an aborted step (STEP_ABORT_TIME in step_launch.c)
STEP_ABORT_TIME = 2


def node_line(names: str, extra: str = "") -> str:
    """slurm.conf's NodeName line for ``names`` (a hostlist), with this simulation's node shape."""
    return (f"NodeName={names} {extra}CPUs={hosts.CPUS_PER_NODE} Sockets=2 "
            f"CoresPerSocket={hosts.CPUS_PER_NODE // 2} ThreadsPerCore=1 RealMemory=1000 "
            f"Gres=gpu:{hosts.GPUS_PER_NODE} State=UNKNOWN")


def plugin_lines() -> list[str]:
    return [f"ClusterName={CLUSTER_NAME}", f"SelectType={SELECT}", f"SelectTypeParameters={SELECT_PARAMETERS}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none",
            "MpiDefault=none", "GresTypes=gpu", f"KillWait={KILL_WAIT}"]


def slurm_conf() -> str:
    """The slurm.conf of the simulated cluster (what a simulated job's ``SLURM_CONF`` names)."""
    lines = ["# The cluster clusterlab simulates (Slurm %s); see clusterlab.slurm.config" % SLURM_VERSION,
             *plugin_lines(), node_line(f"{hosts.NODE_PREFIX}[001-999]"),
             f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    return "\n".join(lines) + "\n"
