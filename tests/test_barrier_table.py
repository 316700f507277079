"""The barrier's decisions, without processes: release, mismatch, timeout."""

from hypothesis import given
from hypothesis import strategies as st

from clusterlab.barrier import GatherTable
from clusterlab.layout import ClusterLayout


def test_release_only_when_every_rank_arrived():
    table = GatherTable(ClusterLayout(2, 2))
    for rank in (3, 0, 2):
        assert table.arrive(rank, 0, "step", 10, rank * 10, now=0.0) is None
    out = table.arrive(1, 0, "step", 10, 10, now=0.0)
    assert out.error is None and out.data == [0, 10, 20, 30] and out.ranks == (0, 1, 2, 3)


def test_rounds_are_independent():
    table = GatherTable(ClusterLayout(1, 2))
    assert table.arrive(0, 0, "a", 10, None, 0) is None
    assert table.arrive(0, 1, "b", 10, None, 0) is None  # rank 0 ran ahead? it cannot; but the table keeps rounds apart
    assert table.arrive(1, 0, "a", 10, None, 0).data == [None, None]


def test_mismatch_names_both_barriers_and_their_ranks():
    table = GatherTable(ClusterLayout(2, 2))
    table.arrive(0, 0, "epoch", 10, None, 0)
    table.arrive(1, 0, "epoch", 10, None, 0)
    out = table.arrive(2, 0, "eval", 10, None, 0)
    assert "rank 0-1 on node0 reached 'epoch'" in out.error and "rank 2 on node1 reached 'eval'" in out.error
    assert set(out.ranks) == {0, 1, 2}
    late = table.arrive(3, 0, "eval", 10, None, 0)  # a late rank gets the same error, at once
    assert late.error == out.error and late.ranks == (3,)


def test_timeout_names_missing_ranks_and_nodes():
    table = GatherTable(ClusterLayout(2, 2))
    table.arrive(0, 0, "step", 2.0, None, now=100.0)
    table.arrive(1, 0, "step", 5.0, None, now=100.5)
    assert table.next_deadline() == 102.0
    assert table.expire(101.9) == []
    (out,) = table.expire(102.0)
    assert "timed out after 2s" in out.error and "rank 2-3 on node1 never arrived" in out.error
    assert "2 of 4 ranks did" in out.error and out.ranks == (0, 1)
    assert table.next_deadline() == float("inf")


def test_a_rank_that_exited_fails_the_rounds_it_never_entered():
    table = GatherTable(ClusterLayout(2, 2))
    table.arrive(0, 0, "step", 60, None, 0)
    (out,) = table.leave(3)
    assert out.ranks == (0,) and "can never complete: rank 3 on node1 already exited" in out.error
    late = table.arrive(1, 0, "step", 60, None, 0)  # a rank arriving afterwards hears it at once
    assert late.error == out.error
    assert table.arrive(0, 1, "next", 60, None, 0).error.startswith("barrier 'next' (collective call #1) can never")


# A node's agent reports "these ranks entered barrier seq" as one arrival
# (GatherTable.arrive_ranks); the reference is the same arrivals one rank at a time.
_events = st.lists(st.one_of(
    st.tuples(st.just("node"), st.integers(0, 2), st.integers(0, 2), st.sampled_from(["a", "b"]), st.sampled_from([5.0, 9.0])),
    st.tuples(st.just("rank"), st.integers(0, 5), st.integers(0, 2), st.sampled_from(["a", "b"]), st.sampled_from([None, 7])),
    st.tuples(st.just("leave"), st.integers(0, 5)),
), max_size=12)


def _same(outcomes):
    return [(o.seq, sorted(o.ranks), o.data, o.error) for o in outcomes]


@given(_events)
def test_ranks_arriving_as_a_block_are_ranks_arriving_one_by_one(events):
    layout = ClusterLayout(3, 2)
    fast, ref = GatherTable(layout), GatherTable(layout)
    for now, event in enumerate(events):
        if event[0] == "node":
            _, node, seq, name, timeout = event
            ranks = list(layout.ranks_on(node))
            got = fast.arrive_ranks(ranks, seq, name, timeout, float(now))
            want = [o for r in ranks if (o := ref.arrive(r, seq, name, timeout, None, float(now)))]
        elif event[0] == "rank":
            _, rank, seq, name, data = event
            got = [o for o in [fast.arrive(rank, seq, name, 5.0, data, float(now))] if o]
            want = [o for o in [ref.arrive(rank, seq, name, 5.0, data, float(now))] if o]
        else:
            got, want = fast.leave(event[1]), ref.leave(event[1])
        assert _same(got) == _same(want)
        assert fast.next_deadline() == ref.next_deadline()
    assert _same(fast.expire(1e9)) == _same(ref.expire(1e9))
