"""Executable ZeRO: the model, the bytes held and the bytes sent, each against its own reference.

* model: the single-process numpy reference (:func:`reference_train`), tolerance
  ``launch.TOLERANCE`` (1e-3; fp16 gradient sums on the wire vs float64 sums);
* memory: the ZeRO paper's formula (``model_state_bytes``) for psi = 264, Nd = 8;
* traffic: the 2 psi / 3 psi accounting (``ring_bytes_per_rank``) and the flat ring's N/p cross-node share.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_zero_collectives import run_ring  # the thread-per-rank harness over socket pairs

from clusterlab.layout import ClusterLayout
from clusterlab.zero.launch import TOLERANCE, SimulationResult, check, launch
from clusterlab.zero.simulate import SimConfig, assemble_master, run_rank


def _threads(cfg: SimConfig, nnodes: int, nproc: int) -> SimulationResult:
    reports, _ = run_ring(ClusterLayout(nnodes, nproc), lambda ring: run_rank(cfg, ring, log=lambda _line: None))
    result = SimulationResult(nnodes, nproc, reports)
    result.checks = check(cfg, result)
    return result


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_real_processes_two_nodes_by_four(stage, capfd):
    cfg = SimConfig(stage=stage, steps=3)
    result = launch(cfg, 2, 4, timeout=90)
    assert result.ok, result.summary()
    out = capfd.readouterr().out
    assert "[node1 rank5 local1]" in out and "holds:" in out and "across nodes" in out
    held = {r["rank"]: r["held"]["total"] for r in result.reports}
    assert held == {r: {0: 4224, 1: 1452, 2: 990, 3: 528}[stage] for r in range(8)}  # 16psi, 4psi+12psi/8, ...


@pytest.mark.parametrize("ga", [1, 2])
def test_all_stages_agree_with_each_other_and_the_reference(ga):
    masters = {}
    for stage in range(4):
        cfg = SimConfig(stage=stage, steps=4, grad_accum=ga)
        result = _threads(cfg, 2, 4)
        assert result.ok, result.summary()
        masters[stage] = assemble_master(result.reports)
    for stage in (1, 2, 3):
        for a, b in zip(masters[stage], masters[0]):
            if ga == 1:  # same ring, same summation order: bit-identical
                np.testing.assert_array_equal(a, b)
            else:  # stages 2-3 reduce every micro-step, 0-1 at the boundary: fp16 rounding differs
                np.testing.assert_allclose(a, b, atol=TOLERANCE, rtol=0)


def test_gradient_accumulation_traffic_per_stage():
    for stage, per_step in {0: 924, 1: 924, 2: 3 * 462, 3: 6 * 462}.items():  # psi=264, p=8, ga=2
        result = _threads(SimConfig(stage=stage, steps=1, grad_accum=2), 2, 4)
        assert {s["intra"] + s["inter"] for r in result.reports for s in r["steps"]} == {per_step}


def test_other_layouts():
    assert _threads(SimConfig(stage=3, steps=2), 4, 2).ok
    assert _threads(SimConfig(stage=2, steps=2), 1, 1).ok


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterlab", "zero", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["simulate", "--nnodes", "1", "--nproc-per-node", "3", "--stage", "1"], "do not divide over world size 3"),
        (["simulate", "--stage", "5"], "stage=5 is not a ZeRO stage"),
        (["simulate", "--stage", "1", "--steps", "0"], "steps=0 must be at least 1"),
        (["simulate", "--stage", "1", "--nnodes", "0"], "--nnodes=0 must be at least 1"),
        (["estimate", "--params", "-5"], "--params='-5' is not a count"),
        (["estimate", "--params", "1e9", "--nodes", "0"], "--nodes=0 must be at least 1"),
        (["estimate", "--params", "1e9", "--stage", "1,x"], "--stage '1,x'"),
        (["comm", "--params", "1e9", "--nodes", "2,,4"], "--nodes='2,,4'"),
        (["comm", "--params", "1e9", "--inter-bw", "0"], "--inter-bw=0.0 must be greater than 0"),
        (["hostfile", "/nonexistent/hostfile"], "cannot read hostfile"),
        (["config", "/nonexistent/ds_config.json"], "cannot read ds_config"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, fragment):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_start_up_does_not_import_numpy():
    code = "import sys, clusterlab.cli as c; c.get_args_parser(); print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


def test_a_job_that_overruns_its_timeout_is_stopped_with_everything_it_started():
    from clusterlab.zero.launch import SimulationFailed

    with pytest.raises(SimulationFailed, match=r"did not finish within 0\.5s"):
        launch(SimConfig(stage=3, steps=200), 2, 4, timeout=0.5)
    # the autouse fixture fails this test if any launcher, agent or worker is still alive
