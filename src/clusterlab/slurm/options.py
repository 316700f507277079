"""The options of ``srun`` and ``sbatch``, spelled as Slurm spells them, and one parser for both.

One table serves the command lines *and* ``#SBATCH`` directives, because sbatch
reads a directive exactly like a command-line option: ``--nodes=2``,
``--nodes 2``, ``-N2`` and ``-N 2`` all mean the same. Options the simulation
acts on are marked ``simulated``; the others (``--time``, ``--partition``,
``--mem`` ...) are accepted and shown by ``--explain`` but change nothing here.
Unknown options are errors, as in Slurm ("unrecognized option"). Unlike
getopt, unique abbreviations (``--nod=2``) are not accepted: spell options out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Opt:
    long: str  # without the dashes
    short: str | None  # one letter, or None
    dest: str
    arg: str  # "int", "str", "flag", or "optint" (an optional argument glued on: -K1, --kill-on-bad-exit=0)
    scope: str  # "both", "srun" or "sbatch"
    simulated: bool
    help: str


OPTIONS = (
    Opt("nodes", "N", "nodes", "str", "both", True, "number of nodes (N or MIN-MAX)"),
    Opt("ntasks", "n", "ntasks", "int", "both", True, "number of tasks"),
    Opt("ntasks-per-node", None, "ntasks_per_node", "int", "both", True, "tasks on each node"),
    Opt("cpus-per-task", "c", "cpus_per_task", "int", "both", True, "CPUs for each task"),
    Opt("gpus-per-node", None, "gpus_per_node", "str", "both", True, "GPUs on each node ([type:]N)"),
    Opt("gpus-per-task", None, "gpus_per_task", "str", "both", True, "GPUs bound to each task ([type:]N)"),
    Opt("gres", None, "gres", "str", "both", True, "generic resources, e.g. gpu:4"),
    Opt("distribution", "m", "distribution", "str", "both", True, "block, cyclic or plane=SIZE"),
    Opt("job-name", "J", "job_name", "str", "both", True, "job name"),
    Opt("nodelist", "w", "nodelist", "str", "both", True, "these nodes (a hostlist)"),
    Opt("label", "l", "label", "flag", "srun", True, "prefix each output line with its task id"),
    Opt("kill-on-bad-exit", "K", "kill_on_bad_exit", "optint", "srun", True, "stop the step on the first non-zero exit"),
    Opt("wait", "W", "wait", "int", "srun", True, "seconds to wait after the first task exits (0: no limit)"),
    Opt("output", "o", "output", "str", "sbatch", True, "batch output file (%j job id, %x job name)"),
    Opt("error", "e", "error", "str", "sbatch", True, "batch error file"),
    Opt("chdir", "D", "chdir", "str", "both", True, "working directory"),
    Opt("signal", None, "signal", "str", "sbatch", False, "[B:]SIG[@TIME] warning signal"),
    Opt("time", "t", "time", "str", "both", False, "time limit"),
    Opt("partition", "p", "partition", "str", "both", False, "partition"),
    Opt("account", "A", "account", "str", "both", False, "account"),
    Opt("qos", "q", "qos", "str", "both", False, "quality of service"),
    Opt("mem", None, "mem", "str", "both", False, "memory per node"),
    Opt("mem-per-cpu", None, "mem_per_cpu", "str", "both", False, "memory per CPU"),
    Opt("constraint", "C", "constraint", "str", "both", False, "node features"),
    Opt("exclusive", None, "exclusive", "flag", "both", True, "whole nodes (all their CPUs and GPUs)"),
    Opt("mail-type", None, "mail_type", "str", "sbatch", False, "mail events"),
    Opt("mail-user", None, "mail_user", "str", "sbatch", False, "mail address"),
    Opt("export", None, "export", "str", "both", False, "environment to export"),
    Opt("requeue", None, "requeue", "flag", "sbatch", False, "requeue on node failure"),
    # clusterlab's own (not Slurm's): on the command line only, never in an #SBATCH line
    Opt("hosts", None, "hosts", "str", "both", True, "clusterlab: nodes as hosts, auto|namespaces|off (default auto)"),
)
#: Options of clusterlab's own, which real Slurm does not know: a batch script must not carry them.
CLUSTERLAB_ONLY = ("hosts",)

_LONG = {o.long: o for o in OPTIONS}
_SHORT = {o.short: o for o in OPTIONS if o.short}

#: sbatch's input environment variables (sbatch man page, INPUT ENVIRONMENT VARIABLES) for the options above.
#: Note there are none for --nodes, --ntasks or --cpus-per-task.
SBATCH_ENV = {
    "SBATCH_JOB_NAME": "job_name",
    "SBATCH_DISTRIBUTION": "distribution",
    "SBATCH_GPUS_PER_NODE": "gpus_per_node",
    "SBATCH_GPUS_PER_TASK": "gpus_per_task",
    "SBATCH_GRES": "gres",
    "SBATCH_PARTITION": "partition",
    "SBATCH_ACCOUNT": "account",
    "SBATCH_QOS": "qos",
    "SBATCH_TIMELIMIT": "time",
    "SBATCH_SIGNAL": "signal",
    "SBATCH_EXCLUSIVE": "exclusive",
    "SBATCH_OUTPUT": "output",
    "SBATCH_ERROR": "error",
    "SBATCH_MEM_PER_NODE": "mem",
    "SBATCH_CONSTRAINT": "constraint",
}


#: srun's input environment variables read inside a job (Slurm 22.05, ``env_vars[]`` in
#: src/srun/libsrun/opt.c). Not SLURM_CPUS_PER_TASK: 22.05's srun reads only SRUN_CPUS_PER_TASK.
SRUN_ENV = {
    "SLURM_JOB_NUM_NODES": "nodes",
    "SLURM_NPROCS": "ntasks",
    "SLURM_NTASKS": "ntasks",  # after SLURM_NPROCS: it wins
    "SLURM_NTASKS_PER_NODE": "ntasks_per_node",
    "SRUN_CPUS_PER_TASK": "cpus_per_task",
    "SLURM_DISTRIBUTION": "distribution",
    "SLURM_GPUS_PER_TASK": "gpus_per_task",
    "SLURM_GPUS_PER_NODE": "gpus_per_node",
    "SLURM_GRES": "gres",
    "SLURM_EXCLUSIVE": "exclusive",
    "SLURM_LABELIO": "label",
    "SLURM_KILL_BAD_EXIT": "kill_on_bad_exit",
}


@dataclass(frozen=True)
class Value:
    """An option's value and where it came from (``"command line"``, ``"SBATCH_JOB_NAME"``, ``"line 3"``)."""

    value: object
    source: str
    option: str  # as written, e.g. "--nodes" or "-N"


def parse(tokens: list[str], prog: str, where: str = "command line", stop_at_positional: bool = True,
          ) -> tuple[dict[str, Value], list[str]]:
    """Read options from ``tokens`` until the first non-option word; return them and the rest.

    ``where`` names the source in errors and in each :class:`Value` (e.g. ``"line 3"``).
    With ``stop_at_positional=False`` (a directive line) a stray word is an error.
    """
    values: dict[str, Value] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            return values, tokens[i + 1:]
        if not tok.startswith("-") or tok == "-":
            if stop_at_positional:
                return values, tokens[i:]
            raise UsageError(f"{where}: unexpected word {tok!r} in an #SBATCH directive; write options only, "
                             f"e.g. #SBATCH --nodes=2")
        if tok.startswith("--"):
            name, eq, glued = tok[2:].partition("=")
            opt = _LONG.get(name)
            written = "--" + name
            if opt is None:
                raise UsageError(f"{where}: {prog}: unrecognized option {written!r}; "
                                 f"see `clusterlab {prog} --help` for the options simulated here")
            raw = glued if eq else None
        else:
            opt = _SHORT.get(tok[1])
            written = tok[:2]
            if opt is None:
                raise UsageError(f"{where}: {prog}: invalid option {written!r}; "
                                 f"see `clusterlab {prog} --help` for the options simulated here")
            raw = tok[2:] or None
            if raw is not None and opt.arg == "flag":  # bundled flags: -lK
                tokens = [*tokens[:i], tok[:2], "-" + tok[2:], *tokens[i + 1:]]
                raw = None
        if opt.scope not in ("both", prog):
            raise UsageError(f"{where}: {written} is an option of {opt.scope}, not of {prog}")
        if opt.arg == "flag":
            if raw is not None:
                raise UsageError(f"{where}: {written} takes no value (got {raw!r})")
            value: object = True
        elif opt.arg == "optint":
            value = _int(raw, written, where) if raw is not None else 1
        else:
            if raw is None:
                if i + 1 >= len(tokens):
                    raise UsageError(f"{where}: {written} needs a value, e.g. {written}={_example(opt)}")
                i += 1
                raw = tokens[i]
            value = _int(raw, written, where) if opt.arg == "int" else raw
        values[opt.dest] = Value(value, where, written)
        i += 1
    return values, []


#: every node and task of a simulated job is a real local process: counts stay within reason
MAX_COUNT = 65536


def _int(raw: str, written: str, where: str) -> int:
    if not raw.strip().isdigit():
        raise UsageError(f"{where}: {written}={raw!r} is not a whole number; write e.g. {written}=2")
    if int(raw) > MAX_COUNT:
        raise UsageError(f"{where}: {written}={raw.strip()} is more than this simulation runs (at most {MAX_COUNT})")
    return int(raw)


def _example(opt: Opt) -> str:
    return {"int": "2", "optint": "1"}.get(opt.arg, {"distribution": "cyclic", "nodes": "2"}.get(opt.dest, "VALUE"))


def from_env(env, table: dict[str, str] = SBATCH_ENV) -> dict[str, Value]:
    """Options given through input environment variables such as ``SBATCH_JOB_NAME``."""
    out: dict[str, Value] = {}
    for var, dest in table.items():
        if env.get(var) is None:
            continue
        opt = next(o for o in OPTIONS if o.dest == dest)
        raw = env[var]
        value: object = True if opt.arg == "flag" else (_int(raw, var, "environment") if opt.arg == "int" else raw)
        out[dest] = Value(value, var, var)
    return out


def help_text(prog: str) -> str:
    """The option list for ``clusterlab srun --help`` / ``sbatch --help``."""
    lines = []
    for o in OPTIONS:
        if o.scope not in ("both", prog):
            continue
        flag = (f"-{o.short}, " if o.short else "    ") + f"--{o.long}" + ("" if o.arg == "flag" else
                                                                            "[=N]" if o.arg == "optint" else "=VALUE")
        lines.append(f"  {flag:<32} {o.help}{'' if o.simulated else ' (accepted, not simulated)'}")
    return "\n".join(lines)
