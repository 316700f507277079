"""The conformance matrix: the requests run under real Slurm and under clusterlab.

Each entry is a :class:`~conformance.harness.Request`; ``{dump}`` is the task
that records its environment, ``{out}`` the request's own output directory.
Requests run one after the other on idle nodes (a job placed beside another one
would get other nodes or CPUs), so the list is kept to what each case teaches.
"""

from __future__ import annotations

from .harness import ROOT, Request


def _srun(name: str, line: str, **kw) -> Request:
    return Request(name, tuple(line.split()), **kw)


def _sh(name: str, options: str, script: str, **kw) -> Request:
    """srun OPTIONS sh -c SCRIPT (the script is one argument)."""
    return Request(name, ("srun", *options.split(), "sh", "-c", script), **kw)


def _batch(name: str, directives: str, body: str, **kw) -> Request:
    lines = ["#!/bin/bash"] + [f"#SBATCH {d}" for d in directives.split(";")] + [
        "#SBATCH --output={out}/batch.out", "CONFORMANCE_NAME=batch {dump} >/dev/null",
        body.replace("\nsrun ", "\n{settle}\nsrun ")]
    return Request(name, ("sbatch",), script="\n".join(lines) + "\n", **kw)


LAYOUTS = [
    # shared nodes (no --exclusive): 22.05 packs the job's CPUs onto the first node
    _srun("pack-N2-n4-label", "srun -N2 -n4 -l {dump}"),
    _srun("pack-N2-n5", "srun -N2 -n5 {dump}"),
    _srun("pack-N4-n10", "srun -N4 -n10 {dump}"),
    _srun("pack-N4-n10-cyclic", "srun -N4 -n10 -m cyclic {dump}"),
    _srun("pack-N2-n6-plane2", "srun -N2 -n6 -m plane=2 {dump}"),
    _srun("pack-n3", "srun -n3 {dump}"),
    _srun("pack-N3", "srun -N3 {dump}"),
    _srun("pack-N2-n4-c2", "srun -N2 -n4 -c2 {dump}"),
    _srun("pack-n8-c16", "srun -n8 -c16 {dump}"),
    _srun("pack-nodelist", "srun -w node[002-003] -n3 {dump}"),
    # whole nodes, or the shape stated
    _srun("excl-N2-n4", "srun -N2 -n4 --exclusive {dump}"),
    _srun("excl-N4-n10", "srun -N4 -n10 --exclusive -l {dump}"),
    _srun("excl-N4-n10-cyclic", "srun -N4 -n10 -m cyclic --exclusive {dump}"),
    _srun("excl-N4-n21-plane4", "srun -N4 -n21 -m plane=4 --exclusive {dump}"),
    _srun("per-node-N2-2", "srun -N2 --ntasks-per-node=2 {dump}"),
    _srun("per-node-N2-2-c4", "srun -N2 --ntasks-per-node=2 -c4 {dump}"),
    _srun("per-node-N3-n5-3", "srun -N3 -n5 --ntasks-per-node=2 {dump}"),
    # GPUs
    _srun("gpus-per-node", "srun -N2 --gpus-per-node=2 {dump}"),
    _srun("gpus-per-task-pack", "srun -N2 -n4 --gpus-per-task=1 {dump}"),
    _srun("gpus-per-task-per-node", "srun -N2 --ntasks-per-node=4 --gpus-per-task=2 {dump}"),
    _srun("gres", "srun -N2 --gres=gpu:3 {dump}"),
    # odd requests
    _srun("n1-N2", "srun -n1 -N2 {dump}"),
    _srun("label-width", "srun -n11 -l {dump}"),
]

STATUSES = [
    _sh("exit-codes", "-n3", "exit $SLURM_PROCID"),
    _sh("exit-signal", "-n2", "[ $SLURM_PROCID = 1 ] && kill -9 $$; exit 3"),
    _sh("kill-on-bad-exit", "-n3 -K -l", "[ $SLURM_PROCID = 1 ] && exit 3; exec sleep 60"),
    _sh("wait-after-first", "-n2 -W 1", "[ $SLURM_PROCID = 0 ] && exit 0; exec sleep 60"),
    _srun("missing-command", "srun -n2 no-such-command-xyz"),
    _srun("too-many-cpus", "srun -c 100 true"),
    _srun("too-many-gpus", "srun --gpus-per-node=9 true"),
    _srun("cannot-fit", "srun -N2 -n10 --ntasks-per-node=4 true"),
]

SCONTROL = [
    _srun("hostnames", "scontrol show hostnames node[001-003],gpu[1,3]"),
    _srun("hostnames-duplicate", "scontrol show hostnames n1,n1"),
    _srun("hostlist-order", "scontrol show hostlist node003,node001,node002"),
    _srun("hostlist-sorted", "scontrol show hostlist node001,node002,node003,node005"),
]

BATCH = [
    _batch("batch-per-node-c2", "-N2;--ntasks-per-node=2;-c2",
           "srun {dump}\nsrun -n2 {dump}\nsrun -N1 {dump}\nsrun -n1 -N1 {dump}"),
    _batch("batch-pack-N2-n4", "-N2;-n4", "srun {dump}\nsrun -n2 {dump}\nsrun -N1 -n1 {dump}"),
    _batch("batch-gpus", "-N2;--ntasks-per-node=2;--gpus-per-node=2", "srun {dump}\nsrun -n2 {dump}"),
    _batch("batch-gpus-per-task", "-N2;--ntasks-per-node=2;--gpus-per-task=1", "srun {dump}"),
    _batch("batch-defaults", "-N2", "srun -n1 {dump}\nsrun -c2 {dump}\nsrun --ntasks-per-node=2 {dump}"),
    _batch("batch-exclusive", "-N2;-n4;--exclusive", "srun {dump}\nsrun -c8 -n2 {dump}"),
    _batch("batch-oversized-step", "-N2;--ntasks-per-node=1",
           "srun -N2 -n3 --ntasks-per-node=1 true\necho \"step exit $?\"\nsrun -n4 true\necho \"step exit $?\""),
    _batch("batch-cannot-fit", "-N2;-n10;--ntasks-per-node=2", "srun true"),
    _batch("batch-exit", "-N1", "srun sh -c 'exit 3'\necho \"step exit $?\"\nexit 5"),
]


def examples() -> list[Request]:
    """The project's example batch scripts, run unchanged (their output: ports and ids normalised),
    and the launch patterns of examples/slurm/patterns (real torch; only their stdout is compared)."""
    found = []
    for path in sorted((ROOT / "examples" / "slurm").glob("*.sbatch")):
        if "buggy" in path.name:
            continue  # a linter exhibit, not a job to run
        needs = ("torch",) if "torchrun" in path.read_text() else ()
        found.append(Request(f"example-{path.stem}", ("sbatch", "--output={out}/batch.out", str(path)),
                             timeout=120, cwd=str(ROOT), needs=needs))
    for path in sorted((ROOT / "examples" / "slurm" / "patterns").glob("*.sbatch")):
        found.append(Request(f"pattern-{path.stem}", ("sbatch", "--output={out}/batch.out", "--error={out}/batch.err",
                                                      str(path)),
                             timeout=180, cwd=str(ROOT), streams=("stdout",),
                             needs=("torch", *PATTERN_NEEDS.get(path.stem, ()))))
    return found


#: the interop extra's module each library pattern imports (besides torch)
PATTERN_NEEDS = {"lightning": ("lightning_fabric",), "submitit": ("submitit",), "accelerate": ("accelerate",)}


ALL = LAYOUTS + STATUSES + SCONTROL + BATCH
