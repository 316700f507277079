"""Every lint rule fires on a bad script (with its line) and none fires on the good examples."""

from pathlib import Path

import pytest

from clusterlab.slurm.job import allocate
from clusterlab.slurm.lint import lint, unquoted_vars
from clusterlab.slurm.sbatch import merge, parse_script, read_script

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "slurm"


def findings_of(script):
    values = merge(script, {}, {})
    alloc = allocate(values, 1234, str(ROOT), "x")
    return lint(script, values, alloc, str(ROOT))


@pytest.mark.parametrize("rule, line", [
    ("ntasks-without-per-node", 7),
    ("gpus-per-task-device", 9),
    ("signal-without-b", 10),
    ("directive-after-command", 13),
    ("hand-set-cuda-devices", 14),
    ("master-addr-local", 15),
    ("fixed-port", 16),
    ("early-expansion", 17),
    ("count-mismatch", 19),
    ("torchrun-no-cpus", 19),
    ("torchrun-per-gpu", 19),
    ("srun-c-without-n", 20),
])
def test_rule_fires_on_buggy_script_at_its_line(rule, line):
    found = {(f.rule, f.line) for f in findings_of(read_script(str(EXAMPLES / "buggy.sbatch")))}
    assert (rule, line) in found


def test_no_srun_fires_on_a_multi_node_script_without_srun():
    script = parse_script("#!/bin/bash\n#SBATCH --nodes=2\npython train.py\n")
    assert [(f.rule, f.line) for f in findings_of(script)] == [("no-srun", 3)]


@pytest.mark.parametrize("name", ["torchrun_per_node.sbatch", "task_per_gpu.sbatch"])
def test_good_examples_are_clean(name):
    assert findings_of(read_script(str(EXAMPLES / name))) == []


def test_every_finding_says_why_and_how_to_fix():
    for f in findings_of(read_script(str(EXAMPLES / "buggy.sbatch"))):
        assert f.why and f.fix and f.line > 0


@pytest.mark.parametrize("text, expanded", [
    ("srun echo $SLURM_PROCID", ["SLURM_PROCID"]),
    ("srun echo \"${SLURM_NODEID}\"", ["SLURM_NODEID"]),
    ("srun bash -c 'echo $SLURM_PROCID'", []),
    ("srun bash -c \"echo \\$SLURM_PROCID\"", []),
])
def test_single_quotes_delay_expansion(text, expanded):
    assert unquoted_vars(text) == expanded


def test_echo_in_the_batch_shell_is_not_flagged():
    script = parse_script("#!/bin/bash\n#SBATCH -N2 --ntasks-per-node=1\necho $SLURM_PROCID\nsrun hostname\n")
    assert findings_of(script) == []


def test_signal_with_b_is_clean():
    script = parse_script("#!/bin/bash\n#SBATCH -N1 --signal=B:USR1@60\ntrap 'x' USR1\nsrun hostname & wait\n")
    assert findings_of(script) == []
