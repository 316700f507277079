"""ZeRO memory: the paper's Table 1 and Figure 1, and DeepSpeed's estimators against its documented sample.

References are typed in from the sources, not computed:
* Table 1 of Rajbhandari et al., arXiv:1910.02054 (per-device GB, GB = 1e9 bytes): the
  transcription is ``clusterlab.zero.memory.TABLE_1`` (strings as printed, with its digits);
* DeepSpeed docs/code-docs/source/memory.rst ("Memory Requirements").
"""

from __future__ import annotations

import pytest

from clusterlab.errors import UsageError
from clusterlab.zero import estimators
from clusterlab.zero.memory import (
    TABLE_1,
    decimals_of,
    format_estimate,
    format_gb,
    model_state_bytes,
    per_device_bytes,
    round_half_up,
    table_1_cell,
)


@pytest.mark.parametrize("psi", sorted(TABLE_1))
@pytest.mark.parametrize("nd", [1, 4, 16, 64, 256, 1024])
def test_table_1(psi, nd):
    """Every cell of the paper's Table 1, as printed there, is the formula rounded half up to the cell's digits."""
    for stage, paper in zip((1, 2, 3), TABLE_1[psi][nd]):
        ours = per_device_bytes(psi, nd, stage)
        assert format_gb(ours, decimals_of(paper)) == paper, (psi, nd, stage, ours / 1e9, paper)
        assert table_1_cell(psi, nd, stage) == paper


@pytest.mark.parametrize(
    "value, decimals, text",
    [(41.25, 1, "41.3"), (4187.5, 1, "4187.5"), (2218.75, 2, "2218.75"), (1.875, 2, "1.88"), (0.125, 2, "0.13"),
     (2.675, 2, "2.68"), (0.5, 0, "1")],  # 2.675 is 2.67499999... as a double, but prints 2.675: rounded as printed
)
def test_round_half_up(value, decimals, text):
    assert round_half_up(value, decimals) == text


def test_cli_prints_the_papers_cells():
    out = format_estimate(7_500_000_000, 1, 4)
    assert " 41.3" in out and "41.2" not in out  # Table 1: 7.5B, Nd = 4, P_os+g
    out = format_estimate(1_000_000_000_000, 8, 8)
    assert "4187.5" in out and "2218.75" in out and "4,188" not in out  # Table 1: 1T, Nd = 64


def test_figure_1_example():
    # 7.5B parameters, Nd = 64: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB for baseline, P_os, P_os+g, P_os+g+p.
    got = [per_device_bytes(7_500_000_000, 64, s) / 1e9 for s in range(4)]
    assert got[0] == 120
    assert round(got[1], 1) == 31.4
    assert round(got[2], 1) == 16.6
    assert round(got[3], 1) == 1.9


def test_categories_are_exact_integers_when_they_divide():
    m = model_state_bytes(264, 8, 2)
    assert (m.params, m.grads, m.optimizer) == (528, 66, 396)
    assert isinstance(m.total, int)


def test_deepspeed_zero3_documented_sample():
    # memory.rst: estimate_zero3_model_states_mem_needs_all_cold(total_params=2851e6,
    # largest_layer_params=32e6, num_gpus_per_node=8, num_nodes=1)
    documented = """\
Estimated memory needed for params, optim states and gradients for a:
HW: Setup with 1 node, 8 GPUs per node.
SW: Model with 2851M total params, 32M largest layer params.
  per CPU  |  per GPU |   Options
   71.69GB |   0.12GB | offload_param=cpu , offload_optimizer=cpu , zero_init=1
  127.45GB |   0.12GB | offload_param=cpu , offload_optimizer=cpu , zero_init=0
   63.72GB |   0.78GB | offload_param=none, offload_optimizer=cpu , zero_init=1
  127.45GB |   0.78GB | offload_param=none, offload_optimizer=cpu , zero_init=0
    1.43GB |   6.09GB | offload_param=none, offload_optimizer=none, zero_init=1
  127.45GB |   6.09GB | offload_param=none, offload_optimizer=none, zero_init=0"""
    assert estimators.format_zero3_estimates(2851e6, 32e6, 8, 1) == documented


def test_deepspeed_zero2_documented_sample(capsys):
    # memory.rst: estimate_zero2_model_states_mem_needs_all_cold(total_params=2851e6, num_gpus_per_node=8,
    # num_nodes=1) documents 127.45GB | 5.31GB with offload. Its no-offload row (15.93GB) predates the
    # current formula 2*psi + int(18*psi/total_gpus) in stage_1_and_2.py, which gives 11.28GB.
    estimators.estimate_zero2_model_states_mem_needs_all_cold(total_params=int(2851e6), num_gpus_per_node=8, num_nodes=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "Estimated memory needed for params, optim states and gradients for a:",
        "HW: Setup with 1 node, 8 GPUs per node.",
        "SW: Model with 2851M total params.",
        "  per CPU  |  per GPU |   Options",
    ]
    assert lines[4] == "  127.45GB |   5.31GB | offload_optimizer=cpu "
    assert lines[5] == "  127.45GB |  11.28GB | offload_optimizer=none"
    cpu, gpu = estimators.estimate_zero2_model_states_mem_needs(2851e6, 8, 1, cpu_offload=False)
    assert gpu == 2 * 2851e6 + int(18 * 2851e6 / 8)
    assert cpu == int(2851e6 * 4 * 8 * 1.5)


def test_deepspeed_zero3_gpu_cases_from_the_docs_discussion():
    # memory.rst, "GPU RAM", t5-large example with 4 GPUs: case1 3291MB, case2 125MB, case3 477MB.
    total, largest = 737_668_096, 32_899_072  # t5-large's params as the page reports (737.67M, 32.90M)
    case1 = estimators.estimate_zero3_model_states_mem_needs(total, largest, 4, 1, cpu_offload=False, cpu_offload_params=False)[1]
    case2 = estimators.estimate_zero3_model_states_mem_needs(total, largest, 4, 1, cpu_offload=True, cpu_offload_params=True)[1]
    case3 = estimators.estimate_zero3_model_states_mem_needs(total, largest, 4, 1, cpu_offload=True, cpu_offload_params=False)[1]
    assert (case1 >> 20, case2 >> 20, case3 >> 20) == (3291, 125, 477)


class _P:
    def __init__(self, n, ptr):
        self.n, self.ptr = n, ptr

    def numel(self):
        return self.n

    def data_ptr(self):
        return self.ptr


class _M:
    def __init__(self, own, children=()):
        self.own, self.children = own, list(children)

    def parameters(self, recurse=True):
        yield from self.own
        if recurse:
            for c in self.children:
                yield from c.parameters()

    def modules(self):
        yield self
        for c in self.children:
            yield from c.modules()


def test_model_to_params_counts_shared_parameters_once():
    shared = _P(100, 1)
    model = _M([], [_M([shared, _P(10, 2)]), _M([shared])])
    assert estimators.model_to_params(model) == (110, 110)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: model_state_bytes(0, 4, 1), "num_params=0"),
        (lambda: model_state_bytes(10, -2, 1), "dp_degree=-2"),
        (lambda: model_state_bytes(10, 4, 4), "stage=4"),
        (lambda: model_state_bytes(10, 4, True), "stage=True"),
        (lambda: model_state_bytes(10, 2.5, 1), "dp_degree=2.5"),
        (lambda: estimators.estimate_zero2_model_states_mem_needs(-1), "total_params=-1"),
        (lambda: estimators.estimate_zero3_model_states_mem_needs(10, 0), "largest_layer_params=0"),
        (lambda: estimators.estimate_zero2_model_states_mem_needs(10, num_gpus_per_node=0), "num_gpus_per_node=0"),
    ],
)
def test_bad_inputs(call, fragment):
    with pytest.raises(UsageError, match=fragment.replace(".", r"\.")):
        call()
