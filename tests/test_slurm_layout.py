"""Task layouts against layouts written out from Slurm's documentation, plus property tests.

References (not this code's output):
* srun(1), -m/--distribution: "an allocation of three nodes each with two cpus. A four-task
  block distribution request will distribute those tasks to the nodes with tasks one and two on
  the first node, task three on the second node, and task four on the third node"; cyclic: "tasks
  one and four on the first node, task two on the second node, and task three on the third node".
* srun(1), EXAMPLES 1: `srun -n8 -l hostname` on two-CPU nodes: 0,1 dev0; 2,3 dev1; 4,5 dev2; 6,7 dev3.
* dist_plane.html, figure 2: `srun -N4 -n21 -m plane=4`: 0-3,16-19 | 4-7,20 | 8-11 | 12-15.
* slurm_step_layout.c comments: cyclic on CPUs 4,2,4,2; plane=2 with 6 tasks on CPUs 4,1,1.
* srun(1), OUTPUT ENVIRONMENT VARIABLES: "SLURM_TASKS_PER_NODE=2(x3),1".
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterlab.errors import UsageError
from clusterlab.slurm import hosts
from clusterlab.slurm.layout import Distribution, compress_counts, expand_counts, step_layout

N4 = ["node001", "node002", "node003", "node004"]


def ids(layout):
    return [list(t) for t in layout.task_ids]


@pytest.mark.parametrize("dist, slots, ntasks, nodes, expected", [
    ("block", [2, 2, 2], 4, 3, [[0, 1], [2], [3]]),                       # srun(1) -m block
    ("cyclic", [2, 2, 2], 4, 3, [[0, 3], [1], [2]]),                      # srun(1) -m cyclic
    ("block", [2, 2, 2, 2], 8, 4, [[0, 1], [2, 3], [4, 5], [6, 7]]),      # srun(1) example 1
    ("plane=4", None, 21, 4, [[0, 1, 2, 3, 16, 17, 18, 19], [4, 5, 6, 7, 20], [8, 9, 10, 11], [12, 13, 14, 15]]),
    ("plane=2", [4, 1, 1], 6, 3, [[0, 1, 4, 5], [2], [3]]),               # slurm_step_layout.c
    ("cyclic", [4, 2, 4, 2], 16, 4, [[0, 4, 8, 10, 12], [1, 5, 13], [2, 6, 9, 11, 14], [3, 7, 15]]),
    ("block", None, 10, 4, [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]),        # 10 on 4: 3(x2),2(x2)
    ("cyclic", None, 10, 4, [[0, 4, 8], [1, 5, 9], [2, 6], [3, 7]]),
])
def test_layouts_from_the_documentation(dist, slots, ntasks, nodes, expected):
    layout = step_layout(N4[:nodes], ntasks, slots, Distribution.parse(dist))
    assert ids(layout) == expected


def test_ten_tasks_on_four_nodes_tasks_per_node():
    assert compress_counts(step_layout(N4, 10).counts) == "3(x2),2(x2)"
    assert compress_counts(step_layout(N4, 21, None, Distribution.parse("plane=4")).counts) == "8,5,4(x2)"


def test_default_distribution_is_block_when_tasks_exceed_nodes_else_cyclic():
    assert step_layout(N4, 10).distribution.kind == "block"
    assert step_layout(N4, 4).distribution.kind == "cyclic"
    assert ids(step_layout(N4, 10)) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]


def test_tasks_per_node_format_from_the_man_page():
    assert compress_counts([2, 2, 2, 1]) == "2(x3),1"
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]


def test_cyclic_local_ids_are_not_rank_div_tasks_per_node():
    layout = step_layout(N4, 10, None, Distribution.parse("cyclic"))
    assert layout.locate(4) == (0, 1)  # task 4 is the second task on node 0


@pytest.mark.parametrize("bad", ["plane", "plane=0", "plane=x", "arbitrary", "spread"])
def test_bad_distribution(bad):
    with pytest.raises(UsageError, match="distribution"):
        Distribution.parse(bad)


def test_fewer_tasks_than_nodes_is_an_error():
    with pytest.raises(UsageError, match="can't run 2 tasks on 4 nodes"):
        step_layout(N4, 2)


layouts = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(n, 40),
    st.sampled_from(["block", "cyclic", "plane=1", "plane=2", "plane=3", "plane=5", "*"]),
    st.one_of(st.none(), st.lists(st.integers(1, 9), min_size=n, max_size=n))))


@settings(max_examples=200, deadline=None)
@given(layouts)
def test_every_task_placed_once_local_ids_dense_counts_consistent(case):
    nnodes, ntasks, dist, slots = case
    layout = step_layout(hosts.simulated_names(nnodes), ntasks, slots, Distribution.parse(dist))
    placed = sorted(t for node in layout.task_ids for t in node)
    assert placed == list(range(ntasks))
    assert all(len(node) >= 1 for node in layout.task_ids)
    per_node = {}
    for _task, _name, node, local in layout.table():
        per_node.setdefault(node, []).append(local)
    assert all(sorted(v) == list(range(len(v))) for v in per_node.values())
    assert expand_counts(compress_counts(layout.counts)) == [len(v) for v in layout.task_ids]
    if slots is None:  # roomy nodes: Slurm's counting is balanced for block and cyclic
        if layout.distribution.kind in ("block", "cyclic"):
            assert max(layout.counts) - min(layout.counts) <= 1
    if layout.distribution.kind == "block":
        flat = [t for node in layout.task_ids for t in node]
        assert flat == list(range(ntasks))


names = st.lists(st.tuples(st.sampled_from(["node", "gpu", "n-a", "login"]), st.integers(0, 120),
                           st.sampled_from([0, 2, 3])), min_size=1, max_size=30, unique=True)


@settings(max_examples=200, deadline=None)
@given(names)
def test_hostlist_compress_then_expand_keeps_names_and_order(parts):
    hostnames = list(dict.fromkeys(f"{p}{i:0{w}d}" if w else f"{p}{i}" for p, i, w in parts))
    assert hosts.expand(hosts.compress(hostnames)) == hostnames


def test_hostlist_zero_padding_ranges_and_groups():
    assert hosts.expand("node[001-003],gpu[1,3],login1") == [
        "node001", "node002", "node003", "gpu1", "gpu3", "login1"]
    assert hosts.compress(["node001", "node002", "node004"]) == "node[001-002,004]"


@pytest.mark.parametrize("bad", ["node[001-", "node[3-1]", "", "node[a-b]", "a]b"])
def test_bad_hostlists(bad):
    with pytest.raises(UsageError, match="hostlist"):
        hosts.expand(bad)


def test_resolve_simulated():
    env = {hosts.SIMULATED_ENV: "1", hosts.SIMULATED_NODES_ENV: "node[001-002]"}
    assert hosts.resolve_simulated("node002", env) == "127.0.0.1"
    assert hosts.resolve_simulated("example.org", env) == "example.org"
    assert hosts.resolve_simulated("node002", {}) == "node002"
