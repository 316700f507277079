"""Rank mapping against the formula torchrun documents, written out by hand."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterlab.errors import UsageError
from clusterlab.layout import ClusterLayout, format_ranks


def test_two_by_four_table_matches_the_lab():
    # node 0 -> ranks 0-3, node 1 -> ranks 4-7 (the seed's Part 2 picture)
    layout = ClusterLayout(2, 4)
    assert layout.world_size == 8
    assert list(layout.ranks_on(0)) == [0, 1, 2, 3]
    assert list(layout.ranks_on(1)) == [4, 5, 6, 7]
    assert layout.table() == [
        (0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 3, 3),
        (1, 0, 4), (1, 1, 5), (1, 2, 6), (1, 3, 7),
    ]
    assert layout.global_rank(1, 2) == 6
    assert layout.locate(6) == (1, 2)
    assert str(layout) == "2 node(s) x 4 process(es) = world size 8"


@given(st.integers(1, 64), st.integers(1, 16), st.data())
def test_formula_and_inverse(nnodes, nproc, data):
    layout = ClusterLayout(nnodes, nproc)
    node = data.draw(st.integers(0, nnodes - 1))
    local = data.draw(st.integers(0, nproc - 1))
    rank = layout.global_rank(node, local)
    assert rank == node * nproc + local
    assert layout.locate(rank) == (node, local)
    assert rank in layout.ranks_on(node)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ClusterLayout(0, 4), "nnodes=0 must be at least 1"),
        (lambda: ClusterLayout(2, -1), "nproc_per_node=-1 must be at least 1"),
        (lambda: ClusterLayout(2, 4).global_rank(0, 4), "local_rank=4 is outside 0..3"),
        (lambda: ClusterLayout(2, 4).global_rank(2, 0), "node_rank=2 is outside 0..1"),
        (lambda: ClusterLayout(2, 4).locate(8), "global_rank=8 is outside 0..7"),
        (lambda: ClusterLayout.from_world_size(10, 4), "world_size=10 is not divisible by nproc_per_node=4"),
        (lambda: ClusterLayout("2", 4), "nnodes='2' is not a whole number"),
    ],
)
def test_bad_layouts_name_the_value(call, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        call()


def test_format_ranks():
    assert format_ranks([5, 0, 1, 2, 7]) == "0-2,5,7"
    assert format_ranks([]) == ""
