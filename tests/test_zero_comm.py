"""ZeRO traffic accounting: the paper's 2 psi / 3 psi, gradient accumulation, and alpha-beta times by hand."""

from __future__ import annotations

import pytest

from clusterlab.errors import UsageError
from clusterlab.zero import comm


@pytest.mark.parametrize(
    "stage, ga, psi_units",
    [(0, 1, 2), (1, 1, 2), (2, 1, 2), (3, 1, 3),  # the paper, section 7
     (0, 4, 2), (1, 4, 2), (2, 4, 5), (3, 4, 12)],  # accumulation: boundary-only vs every micro-step
)
def test_volume_per_stage(stage, ga, psi_units):
    assert comm.volume_psi(stage, ga) == psi_units


def test_ring_bytes_are_the_paper_volume_times_p_minus_1_over_p():
    # 264 params, 8 ranks, fp16: 2 psi -> 2 * 7/8 * 264 * 2 B = 924 B; 3 psi -> 1386 B
    assert comm.ring_bytes_per_rank(264, 1, 8) == 924
    assert comm.ring_bytes_per_rank(264, 3, 8) == 1386
    assert comm.ring_bytes_per_rank(264, 3, 1) == 0


def test_alpha_beta_by_hand():
    link_i, link_e = comm.Link(100e9, 1e-6), comm.Link(10e9, 5e-6)
    n = 8e9  # bytes
    # one node of 8: 7 steps of (1us + 1e9/100e9 s)
    assert comm.collective_time(n, 1, 8, link_i, link_e) == pytest.approx(7 * (1e-6 + 0.01))
    # flat ring over 2 x 4: 7 steps paced by the inter-node hop
    assert comm.collective_time(n, 2, 4, link_i, link_e) == pytest.approx(7 * (5e-6 + 1e9 / 10e9))
    # hierarchical: 3 steps of n/4 inside, then 1 step of n/4/2 across
    assert comm.collective_time(n, 2, 4, link_i, link_e, hierarchical=True) == pytest.approx(
        3 * (1e-6 + 2e9 / 100e9) + 1 * (5e-6 + 1e9 / 10e9)
    )


def test_zero3_slows_when_nodes_are_added_and_the_cross_node_link_is_the_bottleneck():
    psi = 7_500_000_000
    one = comm.step_cost(psi, 3, 1, 8)
    two = comm.step_cost(psi, 3, 2, 8)
    assert two.seconds > 5 * one.seconds  # 450 GB/s NVLink vs 50 GB/s per NIC
    assert comm.step_cost(psi, 3, 2, 8, hierarchical=True).seconds < two.seconds
    assert comm.step_cost(psi, 3, 2, 8).seconds == pytest.approx(1.5 * comm.step_cost(psi, 2, 2, 8).seconds)


def test_share_of_bytes_leaving_a_node():
    assert comm.inter_node_share(1, 8) == 0
    assert comm.inter_node_share(2, 4) == pytest.approx(1 / 4)  # 2 of 8 ring hops cross
    # hierarchical, 2 x 4: inside 2 nodes * 3 units, across 1 unit -> 1/7
    assert comm.inter_node_share(2, 4, hierarchical=True) == pytest.approx(1 / 7)


def test_defaults_come_from_the_cited_hardware():
    assert comm.NVLINK4.bandwidth == 900e9 / 2
    assert comm.IB_NDR.bandwidth == 400e9 / 8


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: comm.volume_psi(5), "stage=5"),
        (lambda: comm.volume_psi(2, 0), "grad_accum=0"),
        (lambda: comm.ring_bytes_per_rank(0, 1, 8), "num_params=0"),
        (lambda: comm.collective_time(1e9, 0, 8), "nodes=0"),
        (lambda: comm.Link(-1, 0), "bandwidth=-1"),
    ],
)
def test_bad_inputs(call, fragment):
    with pytest.raises(UsageError, match=fragment):
        call()
