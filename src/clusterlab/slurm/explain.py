"""``sbatch --explain``: what a batch script will do, worked out without running it.

The plan has five parts: the options (and which line, variable or flag each came
from), the allocation, the batch step's environment, each srun command in order
with its task layout and the environment of every task (a table), and the
linter's findings. The srun steps are planned exactly as the simulation would
run them, so ``--explain`` and a real run cannot disagree.
"""

from __future__ import annotations

from .environ import batch_env, task_env
from .layout import compress_counts
from .lint import lint, plan_srun, render, srun_calls

#: Variables that tell tasks apart (shown per task); the rest are the same for every task of a step.
PER_TASK = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURMD_NODENAME", "SLURM_GTIDS",
            "SLURM_CPUS_ON_NODE", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
_HIDDEN = ("CLUSTERLAB_", "SLURM_SUBMIT_", "SLURM_CLUSTER_NAME", "SLURM_SRUN_COMM_HOST", "SLURM_JOBID", "SLURM_STEPID",
           "SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_JOB_USER", "SLURM_UMASK", "SLURM_PRIO_PROCESS",
           "SLURM_TOPOLOGY_ADDR", "SLURM_JOB_PARTITION", "SLURM_NODE_ALIASES", "SLURM_JOB_CPUS_PER_NODE_PACK",
           "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*map(str, r)).rstrip() for r in rows]


def explain(script, values: dict, alloc, hosts=None) -> str:
    """The plan as text; ``hosts`` (a :class:`clusterlab.host.JobHosts`) says how the nodes would be hosts."""
    out = [f"# Plan for {script.path} (nothing is run)", "", "## Options"]
    for _key, v in sorted(values.items(), key=lambda kv: kv[1].source):
        out.append(f"  {v.option}={v.value}    <- {v.source}")
    out += ["", "## Allocation", f"  job {alloc.job_id} '{alloc.job_name}' on {len(alloc.nodes)} node(s) "
            f"{alloc.nodelist}",
            f"  tasks per node {compress_counts(alloc.tasks_per_node)}, CPUs per node "
            f"{compress_counts(alloc.cpus_per_node)}, GPUs per node {compress_counts(alloc.gpus_per_node)}",
            *([f"  {hosts}" + (f" - {hosts.note}" if hosts.note else
                               f": hostname is the node's name, {alloc.nodes[0]} resolves to "
                               f"{hosts.address(alloc.nodes[0])}" if hosts.via != "off" else "")]
              if hosts is not None else []),
            "", f"## Batch step (the script itself, once, on {alloc.nodes[0]})"]
    env = batch_env(alloc)
    out += [f"  {k}={v}" for k, v in sorted(env.items()) if not k.startswith(_HIDDEN)]
    calls = srun_calls(script)
    out += ["", f"## srun commands, in order ({len(calls)})"]
    for step_id, call in enumerate(calls):
        out += ["", f"### line {call.line}: {call.text}"]
        step, command, note = plan_srun(alloc, call, step_id)
        if note:
            out.append(f"  {note}")
        if step is None:
            continue
        layout = step.layout
        out.append(f"  step {alloc.job_id}.{step_id}: {layout}")
        out.append(f"  SLURM_TASKS_PER_NODE={compress_counts(layout.counts)}  SLURM_DISTRIBUTION="
                   f"{layout.distribution.kind}  command: {' '.join(command)}")
        envs = [task_env(step, t) for t in range(layout.ntasks)]
        header = ["task"] + [k for k in PER_TASK if k in envs[0]]
        rows = [[str(t)] + [e.get(k, "") for k in header[1:]] for t, e in enumerate(envs)]
        out += ["  " + line for line in _table(header, rows)]
        same = {k: v for k, v in envs[0].items() if k not in PER_TASK and not k.startswith(_HIDDEN)
                and all(e.get(k) == v for e in envs)}
        out.append("  the same for every task:")
        out += [f"    {k}={v}" for k, v in sorted(same.items())]
    findings = lint(script, values, alloc)
    out += ["", "## Lint", render(findings, script.path)]
    return "\n".join(out)
