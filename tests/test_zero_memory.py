"""ZeRO memory: the paper's Table 1 and Figure 1, and DeepSpeed's estimators against its documented sample.

References are typed in from the sources, not computed:
* Table 1 of Rajbhandari et al., arXiv:1910.02054 (per-device GB, GB = 1e9 bytes); all 54
  cells checked on 2026-11-24 against two independent text copies of the paper (arXiv
  itself was unreachable from the build machine);
* DeepSpeed docs/code-docs/source/memory.rst ("Memory Requirements").
"""

from __future__ import annotations

import pytest

from clusterlab.errors import UsageError
from clusterlab.zero import estimators
from clusterlab.zero.memory import model_state_bytes, per_device_bytes

# Table 1 of the ZeRO paper: DP degree -> (P_os, P_os+g, P_os+g+p) per-device GB, per model size.
PAPER_TABLE_1 = {
    7.5e9: {
        1: (120, 120, 120),
        4: (52.5, 41.3, 30),
        16: (35.6, 21.6, 7.5),
        64: (31.4, 16.6, 1.88),
        256: (30.4, 15.4, 0.47),
        1024: (30.1, 15.1, 0.12),
    },
    128e9: {
        1: (2048, 2048, 2048),
        4: (896, 704, 512),
        16: (608, 368, 128),
        64: (536, 284, 32),
        256: (518, 263, 8),
        1024: (513, 257, 2),
    },
    1e12: {
        1: (16000, 16000, 16000),
        4: (7000, 5500, 4000),
        16: (4750, 2875, 1000),
        64: (4187, 2218, 250),
        256: (4046, 2054, 62.5),
        1024: (4011, 2013, 15.6),
    },
}


def _printed_precision(value: float) -> float:
    """One unit in the last digit the paper printed (it truncates large values to integers)."""
    text = repr(value)
    if "." in text and not text.endswith(".0"):
        return 10.0 ** -len(text.split(".")[1])
    return 1.0


@pytest.mark.parametrize("psi", sorted(PAPER_TABLE_1))
@pytest.mark.parametrize("nd", [1, 4, 16, 64, 256, 1024])
def test_table_1(psi, nd):
    for stage, paper_gb in zip((1, 2, 3), PAPER_TABLE_1[psi][nd]):
        ours = per_device_bytes(int(psi), nd, stage) / 1e9
        assert abs(ours - paper_gb) < _printed_precision(paper_gb), (psi, nd, stage, ours, paper_gb)


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
