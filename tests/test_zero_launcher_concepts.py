"""DeepSpeed hostfiles, include/exclude filters and the ds_config batch rule (runner.py / config.py semantics)."""

from __future__ import annotations

import json

import pytest

from clusterlab.errors import UsageError
from clusterlab.zero.ds_config import check_config, read_config
from clusterlab.zero.hostfile import filter_resources, parse_hostfile, read_hostfile, world_layout

HOSTFILE = """\
# two nodes, four GPUs each
worker-0 slots=4

worker-1 slots=4   # trailing text after slots=N is ignored, as in DeepSpeed
"""


def pool():
    return parse_hostfile(HOSTFILE)


def test_parse_keeps_order_and_ignores_comments():
    assert list(pool().items()) == [("worker-0", 4), ("worker-1", 4)]


@pytest.mark.parametrize(
    "include, exclude, num_nodes, num_gpus, expected",
    [
        ("", "", -1, -1, {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3]}),
        ("worker-0@worker-1:0,2", "", -1, -1, {"worker-0": [0, 1, 2, 3], "worker-1": [0, 2]}),  # runner.py docstring
        ("worker-1:2,0", "", -1, -1, {"worker-1": [0, 2]}),
        ("worker-1@worker-0:1", "", -1, -1, {"worker-0": [1], "worker-1": [0, 1, 2, 3]}),  # hostfile order wins
        ("", "worker-1:0", -1, -1, {"worker-0": [0, 1, 2, 3], "worker-1": [1, 2, 3]}),  # runner.py docstring
        ("", "worker-0", -1, -1, {"worker-1": [0, 1, 2, 3]}),
        ("", "", 1, -1, {"worker-0": [0, 1, 2, 3]}),
        ("", "", -1, 2, {"worker-0": [0, 1], "worker-1": [0, 1]}),
        ("worker-1:+1,2", "", -1, -1, {"worker-1": [1, 2]}),  # int("+1") == 1, as in parse_node_config
        ("worker-1:2@worker-1", "", -1, -1, {"worker-1": [2]}),  # a host named twice: the union of its slot lists
        ("", "", 0, 0, {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3]}),  # 0 alone changes nothing
    ],
)
def test_filters(include, exclude, num_nodes, num_gpus, expected):
    assert dict(filter_resources(pool(), include, exclude, num_nodes, num_gpus)) == expected


def test_world_layout_env():
    ranks = world_layout(filter_resources(pool(), include="worker-0:1,3@worker-1"))
    # launch.py: LOCAL_RANK = RANK % LOCAL_SIZE, so worker-1's ranks 2..5 get 2, 3, 0, 1
    assert [(r.host, r.rank, r.local_rank, r.index_on_host, r.cross_rank, r.local_size) for r in ranks] == [
        ("worker-0", 0, 0, 0, 0, 2), ("worker-0", 1, 1, 1, 0, 2),
        ("worker-1", 2, 2, 0, 1, 4), ("worker-1", 3, 3, 1, 1, 4), ("worker-1", 4, 0, 2, 1, 4), ("worker-1", 5, 1, 3, 1, 4),
    ]
    assert ranks[0].visible_devices == (1, 3)
    assert ranks[3].env() == {"RANK": "3", "LOCAL_RANK": "3", "WORLD_SIZE": "6", "CROSS_RANK": "1", "CROSS_SIZE": "2",
                              "LOCAL_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "MASTER_ADDR": "127.0.0.1",
                              "MASTER_PORT": "29500"}


def test_slots_zero_is_an_empty_node_and_a_filter_drops_it():
    pool = parse_hostfile("a slots=2\nb slots=0\nc slots=1\n")
    active = filter_resources(pool)
    assert dict(active) == {"a": [0, 1], "b": [], "c": [0]}
    assert [(r.rank, r.cross_rank, r.cross_size) for r in world_layout(active)] == [(0, 0, 3), (1, 0, 3), (2, 2, 3)]
    assert dict(filter_resources(pool, exclude="a:0")) == {"a": [1], "c": [0]}


def test_hostfile_lines_end_only_where_readlines_ends_them():
    # \x0c, \x85 and \u2028 do not end a line for readlines(): the rest of the line is ignored after slots=N
    assert dict(parse_hostfile("a slots=1\x0cb slots=2\rc slots=3\u2028d slots=4\r\n")) == {"a": 1, "c": 3}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("worker-0 slots=4\nworker-0 slots=2\n", "listed twice"),
        ("worker-0 slots=4\nworker-1\n", "line 2: 'worker-1' is not 'HOST slots=N'"),
        ("worker-0 slot=4\n", "is not 'HOST slots=N'"),
        ("worker-0 slots=four\n", "is not 'HOST slots=N'"),
        ("# only comments\n\n", "lists no hosts"),
        ("worker-0 slots=0\n", "every host has slots=0"),
    ],
)
def test_bad_hostfiles(text, fragment):
    with pytest.raises(UsageError, match=fragment):
        filter_resources(parse_hostfile(text))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"include": "worker-0", "exclude": "worker-1"}, "mutually exclusive"),
        ({"include": "worker-0", "num_nodes": 1}, "cannot be combined"),
        ({"exclude": "worker-0", "num_gpus": 0}, "cannot be combined"),
        ({"include": "worker-0:\u00b2"}, "slot '\u00b2'"),
        ({"include": "worker-0:1:2"}, "more than one ':'"),
        ({"include": "worker-9"}, "'worker-9' is not in the hostfile"),
        ({"include": "worker-1:7"}, "no slot 7 on host 'worker-1'"),
        ({"include": "worker-1:a"}, "slot 'a'"),
        ({"include": "worker-1:"}, "slot '' on 'worker-1' is not a number"),
        ({"exclude": "worker-0@worker-1"}, "leaves none"),
    ],
)
def test_bad_filters(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        filter_resources(pool(), **kwargs)


def test_hostfile_path_with_spaces_and_quotes(tmp_path):
    d = tmp_path / "my 'odd' dir"
    d.mkdir()
    path = d / "host file"
    path.write_text(HOSTFILE)
    assert list(read_hostfile(str(path))) == ["worker-0", "worker-1"]
    with pytest.raises(UsageError, match="cannot read hostfile"):
        read_hostfile(str(d / "missing"))


@pytest.mark.parametrize(
    "cfg, world, expected",
    [
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4}, 8, (64, 4, 2)),  # GA derived
        ({"train_batch_size": 64, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),  # micro derived
        ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),  # global derived
        ({"train_batch_size": 32}, 8, (32, 4, 1)),
        ({"train_micro_batch_size_per_gpu": 3}, 4, (12, 3, 1)),
        ({"train_batch_size": 64.0, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 8, (64, 4, 2)),
    ],
)
def test_batch_rule(cfg, world, expected):
    b = check_config(cfg, world).batch
    assert (b["train_batch_size"], b["train_micro_batch_size_per_gpu"], b["gradient_accumulation_steps"]) == expected


@pytest.mark.parametrize(
    "cfg, world, fragment",
    [
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 12,
         r"64 != 4 \* 2 \* 12 .*set train_batch_size to 96"),
        ({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4}, 4, r"30 != 4 \* 1 \* 4"),  # 30 // 4 // 4 = 1
        ({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4}, 8, "gradient_accumulation_steps=0"),
        ({}, 8, "set train_batch_size or train_micro_batch_size_per_gpu"),
        ({"train_batch_size": "64"}, 8, "train_batch_size='64' must be a whole number"),
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 0}, 8,
         "train_micro_batch_size_per_gpu=0 must be greater than 0"),
        ({"train_batch_size": 64, "gradient_accumulation_steps": 0}, 8, "gradient_accumulation_steps=0 must be"),
        ({"train_batch_size": True}, 8, "refuses a boolean batch size on purpose"),
        ({"train_batch_size": 8, "zero_optimization": {"stage": True}}, 8, "refuses it on purpose"),
        ({"train_batch_size": 8, "zero_optimization": {"overlap_com": True}}, 8, "did you mean 'overlap_comm'"),
        ({"train_batch_size": 8, "zero_optimization": {"reduce_bucket_size": 5.5}}, 8, "not a whole number"),
        ({"train_batch_size": 8, "zero_optimization": {"offload_param": {"device": "gpu"}}}, 8, "not an offload device"),
        ({"train_batch_size": 8, "zero_optimization": {"stage": 4}}, 8, "stage=4 is not a ZeRO stage"),
        ({"train_batch_size": 8, "zero_optimization": 2}, 8, "must be an object"),
        ([1, 2], 8, "must be a JSON object"),
    ],
)
def test_bad_configs(cfg, world, fragment):
    with pytest.raises(UsageError, match=fragment):
        check_config(cfg, world)


def test_stage_keys_are_explained(tmp_path):
    path = tmp_path / "ds config.json"
    path.write_text(json.dumps({"train_batch_size": 8, "zero_optimization": {"stage": 1, "offload_param": {"device": "cpu"}}}))
    text = str(read_config(str(path), 8))
    assert "offload_param" in text and "no effect below stage 3" in text
    path.write_text("{not json")
    with pytest.raises(UsageError, match="is not valid JSON"):
        read_config(str(path), 8)


@pytest.mark.parametrize("value, stage", [("3", 3), (3.0, 3), (" 2", 2), ("1.0", 1)])
def test_stage_is_read_as_deepspeed_reads_it(value, stage):
    assert check_config({"train_batch_size": 8, "zero_optimization": {"stage": value}}, 8).stage == stage


def test_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"train_batch_size": 8, "train_batch_size": 16}')
    with pytest.raises(UsageError, match="'train_batch_size' appears twice"):
        read_config(str(path), 8)


@pytest.mark.parametrize(
    "args, config, fragment",
    [
        (["hostfile", "examples/zero/hostfile", "--include", "worker-0:\u00b2"], None, "slot '\u00b2' on 'worker-0'"),
        (["hostfile", "examples/zero/hostfile", "--include", "worker-0", "--num_nodes", "0"], None, "--num_nodes=0"),
        (["hostfile", "examples/zero/hostfile", "--exclude", "worker-0", "--num_gpus", "0"], None, "--num_gpus=0"),
        (["config"], {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu=0"),
        (["config"], {"train_batch_size": 64, "gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        (["config"], {"train_batch_size": 8, "zero_optimization": {"overlap_com": True}}, "overlap_com"),
        (["config"], {"train_batch_size": 8, "zero_optimization": {"stage": True}}, "on purpose"),
    ],
)
def test_issue_15_bad_inputs_give_one_line_and_exit_2(tmp_path, args, config, fragment):
    """The bad inputs of issue 15, through the real CLI: one line naming the value, exit status 2."""
    from helpers import clusterlab

    if config is not None:
        path = tmp_path / "ds_config.json"
        path.write_text(json.dumps(config))
        args = [*args, str(path)]
    r = clusterlab("zero", *args)
    assert r.returncode == 2, r
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1 and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_plus_one_is_a_slot_as_in_deepspeed():
    from helpers import clusterlab

    r = clusterlab("zero", "hostfile", "examples/zero/hostfile", "--include", "worker-0:+1")
    assert r.returncode == 0 and "active:   worker-0:1" in r.stdout
