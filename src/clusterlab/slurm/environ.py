"""The environment Slurm gives a batch script and each srun task, with Slurm's names and formats.

Two environments, as in Slurm (``src/common/env.c``: ``env_array_for_batch_job``
and ``env_array_for_step``; srun(1) and sbatch(1), OUTPUT ENVIRONMENT VARIABLES),
each variable checked against Slurm 22.05 by ``tests/conformance``:

**The batch script** runs once, on the first node, as task 0 of the batch step:
``SLURM_PROCID=0``, ``SLURM_LOCALID=0`` and ``SLURM_NODEID=0`` are true *there*,
which is why ``srun ... --node-rank=$SLURM_PROCID`` (expanded by the batch
shell) hands every task the same 0. A step started by srun inside the job
inherits the batch environment and overrides the step's own variables.

**Each srun task** gets the job's variables plus its own:

=============================  ============================================================
``SLURM_PROCID``               the task's rank in the step (the MPI rank): 0 .. ntasks-1
``SLURM_LOCALID``              its index among the step's tasks on its node: 0, 1, ...
``SLURM_NODEID``               its node's index in the step's node list
``SLURMD_NODENAME``            its node's name (here a simulated name, e.g. node002)
``SLURM_NTASKS``               tasks in the step (``SLURM_NPROCS``: the old name)
``SLURM_NNODES``               nodes in the step; ``SLURM_JOB_NUM_NODES``: nodes in the job
``SLURM_TASKS_PER_NODE``       the step's tasks on each node, compressed: ``3(x2),2(x2)``
``SLURM_NODELIST``             the *job's* nodes (even in a step on fewer nodes)
``SLURM_STEP_*``               the step's own: ``_ID`` (0, 1, 2 per srun), ``_NODELIST``,
                               ``_NUM_NODES``, ``_NUM_TASKS``, ``_TASKS_PER_NODE``
``SLURM_JOB_CPUS_PER_NODE``    CPUs the job holds on each node (64 each with --exclusive)
``SLURM_CPUS_ON_NODE``         CPUs of the step on this node
``SLURM_CPUS_PER_TASK``        only if ``-c/--cpus-per-task`` was given
``SLURM_DISTRIBUTION``         only if ``-m`` was given (always, for a step inside a job)
``SLURM_GPUS_ON_NODE``         GPUs of the step on this node (only when GPUs were asked for)
``CUDA_VISIBLE_DEVICES``       the step's GPUs on this node (the task's own with --gpus-per-task);
                               ``GPU_DEVICE_ORDINAL``, ``ROCR_VISIBLE_DEVICES``, ``SLURM_STEP_GPUS``
                               say the same
``SLURM_LAUNCH_NODE_IPADDR``   where srun ran (here 127.0.0.1)
=============================  ============================================================

plus who and where: ``SLURM_JOB_USER``/``_UID``/``_GID``, ``SLURM_JOB_PARTITION``,
``SLURM_UMASK``, ``SLURM_PRIO_PROCESS`` (srun's nice value), ``SLURM_TOPOLOGY_ADDR``,
``SLURM_WORKING_CLUSTER``, ``SLURM_CONF``, srun's port (``SLURM_SRUN_COMM_PORT``) and
``SLURM_TASK_PID`` (set by :mod:`~clusterlab.slurm.srun` as each task starts).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from ..keepers import KEEPERS_ENV
from . import config, hosts
from .job import Allocation, Step
from .layout import compress_counts

#: Exported into every simulated job: the job's scratch directory (step counter, allocation, shims).
JOB_DIR_ENV = "CLUSTERLAB_SLURM_JOB_DIR"
CLUSTER_NAME = config.CLUSTER_NAME


@dataclass(frozen=True)
class Runtime:
    """What only a running job knows: its slurm.conf, and the ports srun and the (simulated) controller hold."""

    conf: str
    controller_port: int
    srun_port: int | None = None


def _who() -> dict[str, str]:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return {"SLURM_JOB_UID": str(uid), "SLURM_JOB_GID": str(gid), "SLURM_JOB_USER": user,
            "SLURM_PRIO_PROCESS": str(os.getpriority(os.PRIO_PROCESS, 0))}


def _umask() -> str:
    mask = os.umask(0)
    os.umask(mask)
    return f"{mask:04o}"


def _job_common(alloc: Allocation, runtime: Runtime | None) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": str(alloc.job_id),
        "SLURM_JOBID": str(alloc.job_id),
        "SLURM_JOB_NAME": alloc.job_name,
        "SLURM_JOB_NODELIST": alloc.nodelist,
        "SLURM_NODELIST": alloc.nodelist,
        "SLURM_JOB_NUM_NODES": str(len(alloc.nodes)),
        "SLURM_JOB_CPUS_PER_NODE": compress_counts(alloc.cpus_per_node),
        "SLURM_JOB_PARTITION": config.PARTITION,
        "SLURM_CLUSTER_NAME": CLUSTER_NAME,
        "SLURM_SUBMIT_DIR": alloc.submit_dir,
        "SLURM_SUBMIT_HOST": alloc.submit_host or hosts.submit_host(),
        "SLURM_TOPOLOGY_ADDR_PATTERN": "node",
        **_who(),
    }
    if runtime is not None:
        env["SLURM_CONF"] = runtime.conf
        env["SLURM_WORKING_CLUSTER"] = (f"{CLUSTER_NAME}:{hosts.launch_node_address()}:{runtime.controller_port}:"
                                        f"{config.PROTOCOL_VERSION}:{config.SELECT_PLUGIN_ID}")
    return env


def _gpus(env: dict[str, str], count: int, devices: list[int], step: bool) -> None:
    if count:
        listed = ",".join(map(str, devices))
        env["SLURM_GPUS_ON_NODE"] = str(count)
        env["CUDA_VISIBLE_DEVICES"] = env["GPU_DEVICE_ORDINAL"] = env["ROCR_VISIBLE_DEVICES"] = listed
        env["SLURM_STEP_GPUS" if step else "SLURM_JOB_GPUS"] = listed


def batch_env(alloc: Allocation, runtime: Runtime | None = None) -> dict[str, str]:
    """The variables of the batch script: the job's, seen from task 0 on the first node."""
    env = _job_common(alloc, runtime)
    env.update({
        "SLURM_NNODES": str(len(alloc.nodes)),
        "SLURM_TASKS_PER_NODE": compress_counts(alloc.tasks_per_node),
        "SLURMD_NODENAME": alloc.nodes[0],
        "SLURM_TOPOLOGY_ADDR": alloc.nodes[0],
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_GTIDS": "0",
        "SLURM_NODE_ALIASES": "(null)",
        "SLURM_CPUS_ON_NODE": str(alloc.cpus_per_node[0]),
        "ENVIRONMENT": "BATCH",
    })
    if alloc.ntasks is not None:
        env["SLURM_NTASKS"] = env["SLURM_NPROCS"] = str(alloc.ntasks)
    if alloc.ntasks_per_node is not None:
        env["SLURM_NTASKS_PER_NODE"] = str(alloc.ntasks_per_node)
    if alloc.cpus_per_task is not None:
        env["SLURM_CPUS_PER_TASK"] = str(alloc.cpus_per_task)
    if alloc.gpus_per_task is not None:
        env["SLURM_GPUS_PER_TASK"] = str(alloc.gpus_per_task)
    if alloc.gpus_per_node_opt is not None:
        env["SLURM_GPUS_PER_NODE"] = alloc.gpus_per_node_opt
    if alloc.distribution is not None:
        env["SLURM_DISTRIBUTION"] = alloc.distribution
    _gpus(env, alloc.gpus_per_node[0], list(range(alloc.gpus_per_node[0])), step=False)
    return env


def task_env(step: Step, task_id: int, runtime: Runtime | None = None) -> dict[str, str]:
    """The variables srun sets for one task of ``step`` (srun(1), OUTPUT ENVIRONMENT VARIABLES)."""
    layout, alloc = step.layout, step.alloc
    node, local = layout.locate(task_id)
    tpn = compress_counts(layout.counts)
    env = _job_common(alloc, runtime)
    env.update({
        "SLURM_STEP_ID": str(step.step_id),
        "SLURM_STEPID": str(step.step_id),
        "SLURM_STEP_NODELIST": hosts.compress(list(layout.nodes)),
        "SLURM_STEP_NUM_NODES": str(layout.nnodes),
        "SLURM_STEP_NUM_TASKS": str(layout.ntasks),
        "SLURM_STEP_TASKS_PER_NODE": tpn,
        "SLURM_NNODES": str(layout.nnodes),
        "SLURM_NTASKS": str(layout.ntasks),
        "SLURM_NPROCS": str(layout.ntasks),
        "SLURM_TASKS_PER_NODE": tpn,
        "SLURM_PROCID": str(task_id),
        "SLURM_LOCALID": str(local),
        "SLURM_NODEID": str(node),
        "SLURMD_NODENAME": layout.nodes[node],
        "SLURM_TOPOLOGY_ADDR": layout.nodes[node],
        "SLURM_GTIDS": ",".join(map(str, layout.task_ids[node])),
        "SLURM_CPUS_ON_NODE": str(step.cpus_on_node(node)),
        "SLURM_LAUNCH_NODE_IPADDR": hosts.launch_node_address(),
        "SLURM_SRUN_COMM_HOST": hosts.launch_node_address(),
        "SLURM_UMASK": _umask(),
    })
    if runtime is not None and runtime.srun_port is not None:
        env["SLURM_SRUN_COMM_PORT"] = env["SLURM_STEP_LAUNCHER_PORT"] = str(runtime.srun_port)
    if not step.standalone:  # a step of sbatch's job (env.c: the het-job "pack group" of a batch job)
        env["SLURM_JOB_CPUS_PER_NODE_PACK_GROUP_0"] = compress_counts(alloc.cpus_per_node)
    if step.distribution_given:
        env["SLURM_DISTRIBUTION"] = layout.distribution.kind
        if layout.distribution.kind == "plane":
            env["SLURM_DIST_PLANESIZE"] = str(layout.distribution.plane_size)
    if step.cpus_per_task is not None:
        env["SLURM_CPUS_PER_TASK"] = str(step.cpus_per_task)
    if step.ntasks_per_node is not None:
        env["SLURM_NTASKS_PER_NODE"] = str(step.ntasks_per_node)
    gpus = step.gpus_on_node(node)
    if step.gpus_per_task and gpus:  # bound: each task sees only its own GPUs (--gpu-bind=per_task)
        first = local * step.gpus_per_task
        _gpus(env, gpus, list(range(first, min(first + step.gpus_per_task, gpus))), step=True)
        if layout.counts[node] > 1:
            env["SLURMD_TRES_BIND"] = f"gpu:per_task:{step.gpus_per_task}"
    else:
        _gpus(env, gpus, list(range(gpus)), step=True)
    return env


def fallback_env(alloc: Allocation) -> dict[str, str]:
    """What a job whose nodes are *not* hosts (``--hosts=off``, or ``auto`` where the kernel
    refuses namespaces) exports: "node names here are simulated, all of them this machine".
    ``clusterlab launch`` then meets at 127.0.0.1 where it is given ``node001``
    (:func:`clusterlab.slurm.hosts.resolve_simulated`); nothing else resolves them."""
    return {hosts.SIMULATED_ENV: "1", hosts.SIMULATED_NODES_ENV: alloc.nodelist}


def slurm_free(env) -> dict[str, str]:
    """``env`` without Slurm's variables: the base a fresh (standalone) job starts from."""
    drop = ("SLURM_", "SLURMD_", "SBATCH_", "SRUN_", "CLUSTERLAB_SLURM", hosts.SIMULATED_ENV,
            hosts.SIMULATED_NODES_ENV, KEEPERS_ENV)
    gpu = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "ENVIRONMENT")
    return {k: v for k, v in env.items() if not k.startswith(drop) and k not in gpu}
