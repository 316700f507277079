"""``clusterlab srun``, ``clusterlab sbatch`` and ``clusterlab scontrol``: Slurm's commands, simulated.

The srun and sbatch parsers hand their whole argument list to
:func:`clusterlab.slurm.options.parse`, the same parser that reads ``#SBATCH``
lines, so ``-N2``, ``-N 2``, ``--nodes=2`` and ``--nodes 2`` work everywhere and
the command after the options is passed through untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys

from .. import host
from ..errors import UsageError
from ..keepers import Keepers
from . import hosts, options
from .environ import JOB_DIR_ENV, Runtime, fallback_env, slurm_free, task_env
from .job import Allocation, SlurmError, allocate, default_job_name, plan_step
from .sbatch import make_job_dir, merge, new_job_id, next_step_id, read_script, run_batch
from .srun import find_command, open_port, run_step

SRUN_USAGE = """usage: clusterlab srun [--hosts=auto|namespaces|off] [OPTIONS] COMMAND [ARGS...]

Run COMMAND as the tasks of a Slurm job step, each a local process that sees the
environment srun would give it on its (simulated) node. Outside a job, srun first
creates a job allocation, as real srun does; inside `clusterlab sbatch`, it runs
the next step of that job, on the job's nodes.

--hosts (clusterlab's own, before the command): make the simulated nodes hosts
(own host name, every node name resolvable; see clusterlab.host). auto, the
default, uses namespaces where the kernel allows them and says so when it cannot.

options:
"""

SBATCH_USAGE = """usage: clusterlab sbatch [--explain | --lint] [--hosts=auto|namespaces|off] [OPTIONS] SCRIPT [ARGS...]

Run a batch script as Slurm would on the first node of its allocation, with
#SBATCH directives, the batch environment, and clusterlab's srun and scontrol on
PATH. --explain prints the plan (nodes, ranks, environment, srun steps, lint)
without running anything; --lint prints only the linter's findings (exit 1 if any).
--hosts (clusterlab's own, command line only): whether the job's nodes are hosts
(see `clusterlab srun --help`); every srun of the job runs on them.

options:
"""


def register(sub) -> None:
    for name, func, about in (
        ("srun", _cmd_srun, "run a job step's tasks as local processes with Slurm's environment"),
        ("sbatch", _cmd_sbatch, "run (or --explain, --lint) a Slurm batch script on simulated nodes"),
    ):
        p = sub.add_parser(name, help=about, add_help=False, prefix_chars="+",
                           description="See `clusterlab %s --help`." % name)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    p = sub.add_parser("scontrol", help="scontrol show hostnames: expand a Slurm hostlist, one name a line",
                       description="Expand a hostlist such as node[001-004] (default: $SLURM_JOB_NODELIST), "
                                   "one host name a line, in order.")
    p.add_argument("action", choices=["show"])
    p.add_argument("entity", choices=["hostnames", "hostname", "hostlist"])
    p.add_argument("hostlist", nargs="?", default=None)
    p.set_defaults(func=_cmd_scontrol)


def _cmd_scontrol(args) -> int:
    expression = args.hostlist or os.environ.get("SLURM_JOB_NODELIST")
    if not expression:
        raise UsageError("scontrol show hostnames: no hostlist given and SLURM_JOB_NODELIST is not set; "
                         "write e.g. `clusterlab scontrol show hostnames node[001-004]`")
    if args.entity == "hostlist":  # the inverse: a comma-separated list of names -> node[001-004]
        print(hosts.compress(hosts.expand(expression)))
        return 0
    names = hosts.expand(expression)
    try:
        sys.stdout.write("".join(f"{n}\n" for n in names))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head -n 1` stopped reading, as intended: exit quietly like scontrol
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


_STEP_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "ROCR_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE",
                  "SLURM_STEP_GPUS", "SLURMD_TRES_BIND")


def _inside_job() -> str | None:
    job_dir = os.environ.get(JOB_DIR_ENV)
    if job_dir and os.environ.get("SLURM_JOB_ID") and os.path.isfile(os.path.join(job_dir, "allocation.json")):
        return job_dir
    return None


def _cmd_srun(args) -> int:
    argv = list(args.args)
    if argv[:1] in (["-h"], ["--help"]):
        print(SRUN_USAGE + options.help_text("srun"))
        return 0
    values, command = options.parse(argv, "srun")
    job_dir = _inside_job()
    if job_dir and "hosts" in values:
        raise UsageError(f"srun: --hosts={values['hosts'].value} inside a job: the job's nodes are already chosen "
                         "(clusterlab sbatch --hosts=...); drop --hosts from this srun")
    port = open_port()  # srun's own port (SLURM_SRUN_COMM_PORT); a standalone srun is also the controller
    own_dir = None
    keepers = None
    try:
        if job_dir:  # a step of the running job: inherit the job's SLURM_* as input options
            alloc = Allocation.load(os.path.join(job_dir, "allocation.json"))
            values = {**options.from_env(os.environ, options.SRUN_ENV), **values}
            # the step's GPUs replace the batch shell's (a step without GPUs sees none, as under slurmstepd)
            base = {k: v for k, v in os.environ.items() if k not in _STEP_GPU_VARS}
            conf = os.environ.get("SLURM_CONF") or os.path.join(job_dir, "slurm.conf")
        else:  # srun outside a job creates the allocation itself (job name: the command's)
            mode = host.check_mode(str(values.pop("hosts").value)) if "hosts" in values else "auto"
            alloc = allocate(values, new_job_id(), os.getcwd(), default_job_name(command))
            base = slurm_free(os.environ)
            own_dir = make_job_dir(alloc)
            base[JOB_DIR_ENV] = own_dir  # an srun inside a task is a step of this job, as in Slurm
            base["PATH"] = os.path.join(own_dir, "bin") + os.pathsep + base.get("PATH", os.defpath)
            conf = os.path.join(own_dir, "slurm.conf")
        cwd = str(values["chdir"].value) if "chdir" in values else None
        if cwd is not None and not os.path.isdir(cwd):
            raise UsageError(f"srun: --chdir={cwd!r} is not a directory")
        step = plan_step(alloc, values, 0, standalone=job_dir is None)
        if job_dir:
            step = dataclasses.replace(step, step_id=next_step_id(job_dir))
            keepers = Keepers.from_environ()  # the job's nodes (None: the job runs with --hosts=off)
        else:
            keepers = _start_keepers(alloc.nodes, mode, "srun")
            base.update(keepers.environ() if keepers is not None else fallback_env(alloc))
        runtime = Runtime(conf, _controller_port(job_dir) or port.getsockname()[1], port.getsockname()[1])
        envs = [{**base, **task_env(step, t, runtime)} for t in range(step.layout.ntasks)]
        find_command(command, base, cwd)  # no command at all is a usage error; a missing one fails per task
        for env in envs:
            if "label" in values:
                env["SLURM_LABELIO"] = "1"
        return run_step(
            step, command, envs,
            label=_flag(values, "label"),
            kill_on_bad_exit=_flag(values, "kill_on_bad_exit"),
            wait=int(str(values["wait"].value)) if "wait" in values else 0,
            cwd=cwd,
            out_fd=sys.stdout.fileno(), err_fd=sys.stderr.fileno(),
            keepers=keepers,
        )
    except SlurmError as exc:  # refused by "slurmctld": srun's own words and exit status
        print(f"srun: error: {exc}", file=sys.stderr)
        return exc.status
    except host.HostsError as exc:  # a node that cannot be entered: Slurm's "node down", in one line
        print(f"srun: error: {exc}", file=sys.stderr)
        return 1
    finally:
        port.close()
        if keepers is not None and not job_dir:
            keepers.close()
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)


def _start_keepers(nodes: tuple[str, ...], mode: str, prog: str) -> Keepers | None:
    """Make the job's nodes hosts (:mod:`clusterlab.host`): their keepers, or None when hosts are off.

    When ``auto`` falls back, its one line goes to stderr (stdout stays the job's, as in Slurm)."""
    plan = host.plan(nodes, mode)
    if plan.note:
        print(f"{prog}: {plan.note}", file=sys.stderr, flush=True)
    if plan.via == "off":
        return None
    return Keepers.start(plan)


def _controller_port(job_dir: str | None) -> int | None:
    """Inside a job, the port of its (simulated) controller, from the batch shell's SLURM_WORKING_CLUSTER."""
    parts = os.environ.get("SLURM_WORKING_CLUSTER", "").split(":")
    return int(parts[2]) if job_dir and len(parts) == 5 and parts[2].isdigit() else None


def _print(text: str) -> None:
    """Print a report; a reader that stops early (``| head``) ends it quietly, as it would for scontrol."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _flag(values, key) -> bool:
    if key not in values:
        return False
    v = values[key].value
    if isinstance(v, bool) or isinstance(v, int):
        return bool(v)
    text = str(v).strip().lower()
    return text in ("", "yes") or (text.isdigit() and int(text) != 0)


def _cmd_sbatch(args) -> int:
    argv = list(args.args)
    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print(SBATCH_USAGE + options.help_text("sbatch"))
        return 0 if argv else 2
    mode = None
    while argv and argv[0] in ("--explain", "--lint"):
        mode = argv.pop(0)[2:]
    cli_values, rest = options.parse(argv, "sbatch")
    hosts_mode = host.check_mode(str(cli_values.pop("hosts").value)) if "hosts" in cli_values else "auto"
    if not rest:
        raise UsageError("sbatch: no batch script given; write e.g. `clusterlab sbatch job.sbatch`")
    script = read_script(rest[0])
    values = merge(script, os.environ, cli_values)
    try:
        alloc = allocate(values, new_job_id(), os.path.abspath(os.getcwd()), os.path.basename(script.path),
                         prog="sbatch")
    except SlurmError as exc:
        print(f"sbatch: error: {exc}", file=sys.stderr)
        return exc.status
    if mode == "lint":
        from .lint import lint, render

        findings = lint(script, values, alloc)
        _print(render(findings, script.path))
        return 1 if findings else 0
    if mode == "explain":
        from .explain import explain

        _print(explain(script, values, alloc, host.plan(alloc.nodes, hosts_mode)))
        return 0
    sys.stdout.flush()
    return run_batch(script, alloc, values, rest[1:], hosts_mode)
