"""The batch-script linter: the multi-node mistakes people really make, each with its line, why, and the fix.

Each rule is a small function over the parsed :class:`~clusterlab.slurm.sbatch.Script`,
the merged options and the allocation they grant. The rules read the script as
text (a shell is not parsed here), so they aim at the common spellings:

======================  ==================================================================
rule                    finds
======================  ==================================================================
torchrun-per-gpu        torchrun / clusterlab launch started by srun more than once per node
early-expansion         ``$SLURM_PROCID``, ``$SLURM_NODEID``, ``$SLURM_LOCALID`` outside single quotes
no-srun                 a multi-node job whose script never calls srun
count-mismatch          ``--nnodes`` / ``--nproc-per-node`` numbers that disagree with the allocation
ntasks-without-per-node ``--ntasks`` on several nodes without ``--ntasks-per-node``
gpus-per-task-device    ``--gpus-per-task`` together with ``set_device(LOCAL_RANK)``
hand-set-cuda-devices   ``CUDA_VISIBLE_DEVICES=...`` set by hand
master-addr-local       ``MASTER_ADDR`` = localhost, the node's own name, or SLURM_LAUNCH_NODE_IPADDR
fixed-port              a literal ``MASTER_PORT`` that every job shares
torchrun-no-cpus        a torchrun task without ``--cpus-per-task``
srun-c-without-n        ``srun -c`` without ``-n``
signal-without-b        ``--signal`` without ``B:`` while the script traps the signal
directive-after-command an ``#SBATCH`` line after the first command (silently ignored)
======================  ==================================================================
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass

from ..errors import UsageError
from . import options
from .environ import batch_env
from .job import Allocation, Step, gpu_count, plan_step

RANK_VARS = ("SLURM_PROCID", "SLURM_NODEID", "SLURM_LOCALID")
LAUNCHER = re.compile(r"(^|[\s;&|(/'\"])(torchrun|torch\.distributed\.(run|launch))(\s|$)|clusterlab\s+launch\b")


@dataclass(frozen=True)
class Finding:
    rule: str
    line: int
    what: str
    why: str
    fix: str


@dataclass(frozen=True)
class SrunCall:
    """One srun command of the script: its line, its options and command (None if shell variables hide them)."""

    line: int
    text: str
    args: list[str] | None


def logical_lines(script) -> list[tuple[int, str]]:
    """The script's command lines (backslash continuations joined), with their first line number."""
    out: list[tuple[int, str]] = []
    start, buf = None, ""
    for number, line in enumerate(script.lines, start=1):
        if start is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        start, buf = None, ""
    if start is not None:
        out.append((start, buf))
    return out


def unquoted_vars(text: str) -> list[str]:
    """Names of ``$VAR`` / ``${VAR}`` that the shell running ``text`` expands (not inside single quotes)."""
    found, single, i = [], False, 0
    while i < len(text):
        c = text[i]
        if c == "'" and not single:
            single = True
        elif c == "'" and single:
            single = False
        elif c == "\\" and not single:
            i += 2
            continue
        elif c == "$" and not single:
            m = re.match(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text[i:])
            if m:
                found.append(m.group(1))
        i += 1
    return found


def srun_calls(script) -> list[SrunCall]:
    calls = []
    for number, text in logical_lines(script):
        m = re.search(r"(^|[\s;&|(])srun(\s|$)", text)
        if not m:
            continue
        rest = text[m.end():]
        try:
            words = shlex.split(rest, comments=True)
        except ValueError:
            words = None
        if words is not None:
            cut = next((i for i, w in enumerate(words) if w in ("|", "&&", "||", ";", "&")), len(words))
            words = words[:cut]
            if any("$" in w for w in words[:_options_end(words)]):
                words = None  # option values known only when the script runs
        calls.append(SrunCall(number, text.strip(), words))
    return calls


def _options_end(words: list[str]) -> int:
    try:
        _, rest = options.parse(list(words), "srun")
    except UsageError:
        return len(words)
    return len(words) - len(rest)


def plan_srun(alloc: Allocation, call: SrunCall, step_id: int) -> tuple[Step | None, list[str], str]:
    """Plan an srun line as the simulation would run it: (step or None, its command, warnings or error)."""
    if call.args is None:
        return None, [], "its options use shell variables: the layout is known only when the script runs"
    try:
        values, command = options.parse(list(call.args), "srun", where=f"line {call.line}")
        inherited = options.from_env(batch_env(alloc), options.SRUN_ENV)
        warnings = io.StringIO()
        with contextlib.redirect_stderr(warnings):
            step = plan_step(alloc, {**inherited, **values}, step_id)
        return step, command, warnings.getvalue().strip()
    except UsageError as exc:
        return None, [], f"error: {exc}"


def _line_of(values: dict, key: str, default: int) -> int:
    src = values[key].source if key in values else ""
    return int(src.split()[-1]) if src.startswith("line ") else default


def lint(script, values: dict, alloc: Allocation, submit_dir: str | None = None) -> list[Finding]:
    """Every finding of every rule, in line order."""
    findings: list[Finding] = []
    lines = logical_lines(script)
    calls = srun_calls(script)
    first = script.first_command or 1
    multi = len(alloc.nodes) > 1
    gpus = max(alloc.gpus_per_node) if alloc.gpus_per_node else 0
    add = findings.append

    for number in script.ignored_directives:
        add(Finding("directive-after-command", number, "this #SBATCH line comes after the first command",
                    "sbatch reads directives only until the first line that is not a comment or blank; later "
                    "#SBATCH lines are plain comments, so this request is silently dropped",
                    "move every #SBATCH line above the first command"))

    for number, text in lines:
        used = [v for v in unquoted_vars(text) if v in RANK_VARS]
        passes_on = re.search(r"(^|[\s;&|(])srun(\s|$)", text) or LAUNCHER.search(text) or re.match(
            r"\s*(export\s+)?[A-Za-z_][A-Za-z0-9_]*=", text)
        if used and passes_on:  # echo $SLURM_PROCID in the batch shell is fine; handing it on is not
            add(Finding("early-expansion", number, f"${used[0]} is expanded by the batch shell, not by each task",
                        "the batch script runs once, as task 0 on the first node, so the shell replaces "
                        f"${used[0]} with 0 before srun starts anything: every task gets the same value",
                        f"let each task expand it: srun bash -c '... ${used[0]} ...' (single quotes), "
                        "or read it in the program"))
        if re.search(r"(^|[\s;])(export\s+)?CUDA_VISIBLE_DEVICES=", text):
            add(Finding("hand-set-cuda-devices", number, "CUDA_VISIBLE_DEVICES is set by hand",
                        "Slurm sets CUDA_VISIBLE_DEVICES on each node to the GPUs it allocated to the job; a "
                        "fixed list can name GPUs another job owns, or hide the ones this job got",
                        "delete the assignment and ask Slurm: --gpus-per-node=N (or --gpus-per-task)"))
        m = re.search(r"MASTER_ADDR=(\S+)|--master[-_]addr[= ](\S+)", text)
        if m and multi:
            value = (m.group(1) or m.group(2)).strip("\"'")
            if re.search(r"localhost|127\.0\.0\.1|hostname(?!s)|HOSTNAME|SLURMD_NODENAME|SLURM_LAUNCH_NODE_IPADDR", value):
                add(Finding("master-addr-local", number, f"MASTER_ADDR={value} is not the first node's address",
                            "every node must reach the same rendezvous host; localhost or the node's own name "
                            "points each node at itself, and SLURM_LAUNCH_NODE_IPADDR is where srun ran "
                            "(unset in the batch shell, the login node under salloc)",
                            "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)"))
        m = re.search(r"MASTER_PORT=[\"']?(\d+)|--master[-_]port[= ](\d+)|--rdzv[-_]endpoint[= ]\S*:(\d+)", text)
        if m:
            port = next(g for g in m.groups() if g)
            add(Finding("fixed-port", number, f"the port {port} is fixed",
                        "two jobs that share a node (or one job requeued while the old one is ending) both "
                        "bind this port: the second fails with 'address already in use'",
                        "derive it from the job id: MASTER_PORT=$((15000 + SLURM_JOB_ID % 10000))"))
        if LAUNCHER.search(text):
            for flag, want, what in (("nnodes", len(alloc.nodes), "nodes in the allocation"),
                                     ("nproc[-_]per[-_]node", gpus, "GPUs per node")):
                m = re.search(rf"--{flag}[= ](\d+)(\s|$)", text)
                if m and want and int(m.group(1)) != want:
                    add(Finding("count-mismatch", number, f"--{flag.replace('[-_]', '-')} {m.group(1)} but the job "
                                f"has {want} {what}",
                                "the launcher waits for nodes that never come, or starts a worker per GPU "
                                "that does not exist (or leaves GPUs idle)",
                                "take the numbers from Slurm: --nnodes $SLURM_NNODES --nproc-per-node "
                                "$SLURM_GPUS_ON_NODE"))

    for step_id, call in enumerate(calls):
        step, _command, _ = plan_srun(alloc, call, step_id)
        if call.args is not None and any(a in ("-c",) or a.startswith(("-c", "--cpus-per-task")) for a in
                                         call.args[:_options_end(call.args)]):
            opts = call.args[:_options_end(call.args)]
            if not any(a.startswith(("-n", "--ntasks")) and not a.startswith("--ntasks-per") for a in opts):
                add(Finding("srun-c-without-n", call.line, "srun -c without -n",
                            "without -n, srun starts the job's SLURM_NTASKS tasks (or one per node), each now "
                            "needing -c CPUs: more than the job holds fails with 'More processors requested than "
                            "permitted'; and in Slurm 22.05 a step never inherits the job's -c",
                            "say how many tasks: srun -n $SLURM_NNODES --ntasks-per-node=1 -c ... (or -n N)"))
        if LAUNCHER.search(call.text):
            if step is not None and max(step.layout.counts) > 1:
                add(Finding("torchrun-per-gpu", call.line,
                            f"srun starts {max(step.layout.counts)} launcher copies per node "
                            f"(tasks per node {','.join(map(str, step.layout.counts))})",
                            "torchrun already starts one worker per GPU; one torchrun per GPU means "
                            "nproc-per-node x GPUs workers per node, fighting over the same GPUs and ports",
                            "one launcher per node: #SBATCH --ntasks-per-node=1 (and srun --ntasks-per-node=1)"))
            if "cpus_per_task" not in values and not (step and step.cpus_per_task):
                add(Finding("torchrun-no-cpus", call.line, "the launcher task has no --cpus-per-task",
                            "without it the task is allocated one CPU: torchrun and all its workers (and "
                            "their data loaders) share a single core",
                            "#SBATCH --cpus-per-task=<workers x threads per worker>, e.g. 32"))
    if not calls and (multi or (alloc.ntasks or 1) > 1):
        add(Finding("no-srun", first, "the script never calls srun",
                    "the batch script runs only on the first node; without srun the other nodes (and other "
                    "tasks) of the allocation stay idle while you pay for them",
                    "start the work with srun: srun python train.py (one task per GPU) or "
                    "srun --ntasks-per-node=1 torchrun ..."))
    if "ntasks" in values and "ntasks_per_node" not in values and (multi or "nodes" not in values):
        add(Finding("ntasks-without-per-node", _line_of(values, "ntasks", first),
                    f"--ntasks={values['ntasks'].value} without --ntasks-per-node",
                    "on shared nodes Slurm 22.05 packs the job's CPUs onto the first node (10 tasks on 4 nodes: "
                    "7,1,1,1; even --exclusive gives 3,3,2,2), so LOCAL_RANK to GPU mapping and per-node "
                    "worker counts differ between nodes",
                    "state the shape: --nodes=N --ntasks-per-node=GPUS_PER_NODE"))
    if gpu_count(values, "gpus_per_task") and _uses_local_rank_device(script, submit_dir):
        add(Finding("gpus-per-task-device", _line_of(values, "gpus_per_task", first),
                    "--gpus-per-task with set_device(LOCAL_RANK)",
                    "with --gpus-per-task each task sees only its own GPU(s), renumbered from 0, so "
                    "set_device(1) on local rank 1 fails with 'invalid device ordinal'",
                    "either use --gpus-per-node and set_device(LOCAL_RANK), or keep --gpus-per-task and "
                    "use cuda:0"))
    sig = values.get("signal")
    if sig and not str(sig.value).upper().startswith("B:") and any(
            re.match(r"\s*trap\s", t) for _, t in lines):
        add(Finding("signal-without-b", _line_of(values, "signal", first), f"--signal={sig.value} without B:",
                    "without B: Slurm sends the warning signal to the job steps (the srun tasks) only, so the "
                    "batch shell's trap never runs",
                    f"--signal=B:{sig.value} (and run srun in the background + wait, so the trap can fire)"))
    return sorted(findings, key=lambda f: (f.line, f.rule))


def _uses_local_rank_device(script, submit_dir: str | None) -> bool:
    texts = ["\n".join(script.lines)]
    base = [submit_dir or os.getcwd(), os.path.dirname(os.path.abspath(script.path))]
    for word in re.findall(r"[\w./-]+\.py", texts[0]):
        for root in base:
            path = os.path.join(root, word)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
                break
    return any(re.search(r"set_device\(.{0,80}?(LOCAL_RANK|local_rank|SLURM_LOCALID)", t) for t in texts)


def render(findings: list[Finding], path: str) -> str:
    if not findings:
        return f"{path}: no problems found"
    out = []
    for f in findings:
        out.append(f"{path}:{f.line}: [{f.rule}] {f.what}\n    why: {f.why}\n    fix: {f.fix}")
    out.append(f"{len(findings)} problem(s) found")
    return "\n".join(out)
