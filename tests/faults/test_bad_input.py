"""Bad input everywhere: one clear line naming the bad value, a non-zero exit, never a traceback.

One table covers every subcommand and parser (the launcher flags, hostlists,
srun options, #SBATCH directives, DeepSpeed hostfiles and ds_config files). The
cases run in-process through :func:`clusterlab.cli.main` (milliseconds each);
an escaping exception other than ``SystemExit`` is a traceback the user would
have seen. A few run end to end through ``python -m clusterlab`` as well. The
CLI validation of ``launch``/``simulate`` is also fuzzed with hypothesis.

"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import socket
from pathlib import Path

import pytest
from helpers import ROOT, clusterlab
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterlab.cli import main
from clusterlab.config import add_launch_args, config_from_args, node_rank_from_args
from clusterlab.errors import UsageError

DATA = Path(__file__).resolve().parent / "data"
HELLO = str(ROOT / "examples" / "hello_ranks.py")


# (command line, a fragment the error line must contain: the bad value, echoed)
CASES = [
    # ---- launch / simulate (torchrun's flags)
    (f"simulate --nnodes 0 {HELLO}", "nnodes=0"),
    (f"simulate --nnodes two {HELLO}", "--nnodes='two'"),
    (f"simulate --nnodes 1:4 {HELLO}", "--nnodes=1:4"),
    (f"simulate --nproc-per-node -2 {HELLO}", "-2"),
    (f"simulate --nproc-per-node gpu {HELLO}", "--nproc-per-node=gpu"),
    (f"simulate --master-port 70000 {HELLO}", "--master-port=70000"),
    (f"simulate --master-port -1 {HELLO}", "--master-port=-1"),
    (f"simulate --master-port http {HELLO}", "'http'"),
    (f"simulate --master-addr no.such.host.invalid {HELLO}", "'no.such.host.invalid'"),
    (f"simulate --master-addr {'a' * 70}.example {HELLO}", "'" + "a" * 70),
    (f"simulate --max-restarts -1 {HELLO}", "--max-restarts=-1"),
    (f"simulate --rdzv-timeout 0 {HELLO}", "--rdzv-timeout=0"),
    (f"simulate --rdzv-timeout nan {HELLO}", "--rdzv-timeout=nan"),
    (f"simulate --term-timeout nan {HELLO}", "--term-timeout=nan"),
    (f"simulate --term-timeout -5 {HELLO}", "--term-timeout=-5"),
    (f"simulate --redirects 7 --log-dir x {HELLO}", "--redirects='7'"),
    (f"simulate --tee both {HELLO}", "--tee='both'"),
    (f"simulate --redirects 3 {HELLO}", "--redirects 3"),
    (f"simulate --local-ranks-filter 0,x {HELLO}", "'0,x'"),
    (f"simulate --nproc-per-node 2 --local-ranks-filter 5 {HELLO}", "[5]"),
    (f"simulate --no-python -m {HELLO}", "--no-python and -m"),
    ("simulate 'no such script.py'", "'no such script.py'"),
    ("simulate", "script"),
    (f"launch --nnodes 2 --node-rank 2 {HELLO}", "--node-rank=2"),
    (f"launch --nnodes 2 --node-rank -1 {HELLO}", "--node-rank=-1"),
    (f"launch --node-rank one {HELLO}", "'one'"),
    (f"launch --standalone --nproc-per-node 0 {HELLO}", "nproc_per_node=0"),
    ("launch --bogus-flag x", "--bogus-flag"),
    # ---- env
    ("env --nproc-per-node x", "'x'"),
    # ---- scontrol (hostlists)
    ("scontrol show hostnames node[1-", "'node[1-'"),
    ("scontrol show hostnames node[3-1]", "'node[3-1]'"),
    ("scontrol show hostnames node[a-b]", "'node[a-b]'"),
    ("scontrol show hostnames node[1-100000000]", "'node[1-100000000]'"),
    ("scontrol show hostnames ,,,", "',,,'"),
    ("scontrol show hostnames node]1[", "'node]1['"),
    ("scontrol show bogus x", "'bogus'"),
    # ---- srun (options, distributions, hostlists)
    ("srun -N abc hostname", "-N=abc"),
    ("srun -N 0 hostname", "-N=0"),
    ("srun -N 3-1 hostname", "-N=3-1"),
    ("srun -n -1 hostname", "'-1'"),
    ("srun -n 0 hostname", "-n=0"),
    ("srun -m zigzag hostname", "'zigzag'"),
    ("srun -m plane=0 hostname", "'plane=0'"),
    ("srun -w node[1- hostname", "'node[1-'"),
    ("srun -c x hostname", "'x'"),
    ("srun --gpus-per-node=x hostname", "--gpus-per-node=x"),
    ("srun --gres=gpu:x hostname", "--gres=gpu:x"),
    ("srun -D /nonexistent/dir hostname", "'/nonexistent/dir'"),
    # (`srun no-such-command-xyz` is no longer a usage error: as under real Slurm, every task fails with
    # execve's error and exit status 2 - tests/test_slurm_cli.py and tests/conformance check it)
    ("srun", "no command given"),
    pytest.param("srun -N 99999999999999999999 hostname", "99999999999999999999"),
    # ---- sbatch (#SBATCH directives)
    ("sbatch missing.sbatch", "'missing.sbatch'"),
    (f"sbatch {DATA}/bad_nodes.sbatch", "--nodes=abc (line 2)"),
    (f"sbatch {DATA}/bad_nodelist.sbatch", "'node[1-'"),
    (f"sbatch {DATA}/bad_distribution.sbatch", "'zigzag'"),
    (f"sbatch {DATA}/negative_ntasks.sbatch", "'-3'"),
    (f"sbatch --explain {DATA}/bad_nodes.sbatch", "--nodes=abc"),
    (f"sbatch --lint {DATA}/bad_nodelist.sbatch", "'node[1-'"),
    (f"sbatch {DATA}/binary.hostfile", "binary.hostfile"),
    # ---- zero (parameter counts, hostfiles, ds_config)
    ("zero estimate --params x", "--params='x'"),
    ("zero estimate --params -5", "--params='-5'"),
    ("zero estimate --params 1e999", "--params='1e999'"),
    ("zero estimate --params nan", "--params='nan'"),
    ("zero estimate --params 7B --nodes 0", "--nodes=0"),
    ("zero estimate --params 7B --stage 9", "stage=9"),
    ("zero estimate --params 7B --stage x", "'x'"),
    ("zero estimate --params 7B --device-memory -1", "--device-memory=-1"),
    ("zero comm --params 7B --nodes x,y", "'x,y'"),
    ("zero comm --params 7B --intra-bw 0", "--intra-bw=0"),
    ("zero comm --params 7B --grad-accum 0", "--grad-accum=0"),
    ("zero simulate --stage 9", "stage=9"),
    ("zero simulate --nnodes 0 --stage 1", "--nnodes=0"),
    ("zero simulate --lr nan --stage 1", "lr=nan"),
    ("zero simulate --timeout 0 --stage 1", "--timeout=0"),
    ("zero hostfile missing.hostfile", "'missing.hostfile'"),
    (f"zero hostfile {DATA}/bad_slots.hostfile", "'worker-1 slots=x'"),
    (f"zero hostfile {DATA}/duplicate.hostfile", "'worker-0' is listed twice"),
    pytest.param(f"zero hostfile {DATA}/binary.hostfile", "binary.hostfile"),
    ("zero config missing.json", "'missing.json'"),
    (f"zero config {DATA}/broken.json", "broken.json is not valid JSON"),
    (f"zero config {DATA}/list.json", "got list"),
    (f"zero config {DATA}/string_batch.json", "train_batch_size='x'"),
    (f"zero config {DATA}/list.json --world-size x", "'x'"),
]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in [k for k in __import__("os").environ if k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                       "NODE_RANK", "MASTER_", "CLUSTERLAB_CHANNEL"))]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("command, fragment", CASES)
def test_bad_input_is_one_clear_line(clean_env, command, fragment):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(shlex.split(command))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    lines = err.getvalue().strip().splitlines()
    assert code not in (0, None), f"exit status {code!r}; stderr: {err.getvalue()!r}"
    assert lines, f"no error message (stdout: {out.getvalue()[:300]!r})"
    last = lines[-1]
    assert last.startswith("clusterlab") and ": error: " in last, lines
    assert fragment in last, f"the error does not echo {fragment!r}: {last}"
    # a clusterlab error is exactly one line; argparse's own come after its usage lines
    assert len(lines) == 1 or lines[0].startswith("usage:"), lines


@pytest.mark.parametrize("args, fragment", [
    (["simulate", "--nnodes", "0", HELLO], "nnodes=0"),
    (["srun", "-m", "zigzag", "true"], "'zigzag'"),
    (["zero", "config", str(DATA / "broken.json")], "broken.json"),
])
def test_end_to_end_exit_status_and_one_line(args, fragment):
    res = clusterlab(*args, timeout=30)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and fragment in res.stderr, res.stderr


def test_port_in_use_for_launch_node0(clean_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["launch", "--nnodes", "2", "--master-port", str(port), HELLO])
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}: the port is already in use" in err.getvalue()


# ---------------------------------------------------------------- fuzzing the launcher's flags
def _parser(with_node_rank: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_launch_args(parser, with_node_rank=with_node_rank)
    return parser


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
_numberish = st.one_of(_text, st.integers(-10**12, 10**12).map(str), st.floats().map(str),
                       st.sampled_from(["0", "1", "2", "-1", "1:2", "2:2", "cpu", "auto", "gpu", "nan", "inf", "1e9", ""]))
_FLAGS = {
    "--nnodes": _numberish, "--nproc-per-node": _numberish, "--master-port": _numberish,
    "--max-restarts": _numberish, "--rdzv-timeout": _numberish, "--term-timeout": _numberish,
    "--redirects": _numberish, "--tee": _numberish, "--local-ranks-filter": _numberish,
    "--master-addr": st.one_of(_text, st.just("127.0.0.1"), st.just("a" * 64 + ".x")), "--rdzv-id": _text,
}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_FLAGS)), st.none(), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: _FLAGS[k] for k in keys})), st.booleans(), st.integers(-3, 3))
def test_fuzz_launch_flags(flags, launch, node_rank):
    """Any flag values: a valid config, or a UsageError / argparse error. Never anything else."""
    argv = [f"{k}={v}" for k, v in flags.items()]
    if launch:
        argv.append(f"--node-rank={node_rank}")
    argv.append(HELLO)
    try:
        args = _parser(launch).parse_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return  # argparse said which argument and value were wrong
    try:
        config = config_from_args(args)
        if launch:
            node_rank_from_args(args, config)
    except UsageError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert config.layout.world_size >= 1 and 0 <= config.master_port <= 65535
    assert config.term_timeout < float("inf") and config.rdzv_timeout > 0
