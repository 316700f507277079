"""Conformance of ``clusterlab zero`` against the real DeepSpeed (the ``deepspeed`` extra; CI installs it).

One subprocess (``tests/deepspeed_oracle.py``) asks DeepSpeed about every case below;
each test then asks clusterlab the same and compares VALUES: the same world, the
same environment per rank, the same bytes, the same batch numbers, or the same
rejection. A case where clusterlab differs on purpose names its entry of
:data:`clusterlab.zero.differences.DIFFERENCES`; any other difference fails.

Skipped, with the reason, where DeepSpeed is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clusterlab.errors import UsageError
from clusterlab.zero import estimators
from clusterlab.zero.differences import BY_ID
from clusterlab.zero.ds_config import check_config
from clusterlab.zero.ds_schema import OFFLOAD_OPTIMIZER_FIELDS, OFFLOAD_PARAM_FIELDS, ZERO_ALIASES, ZERO_FIELDS
from clusterlab.zero.hostfile import filter_resources, parse_hostfile, world_layout

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "data" / "deepspeed_env_3_2.json"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (pip install torch==2.13.0, then DS_BUILD_OPS=0 pip install "
           "--no-build-isolation deepspeed; .ci/run does both)",
)

EIGHT = "worker-0 slots=4\nworker-1 slots=4\n"


def _h(id, text, include="", exclude="", num_nodes=-1, num_gpus=-1, differs=None):
    return {"id": id, "text": text, "include": include, "exclude": exclude, "num_nodes": num_nodes,
            "num_gpus": num_gpus, "differs": differs}


HOSTFILES = [
    _h("4+4", EIGHT),
    _h("3+2", "worker-0 slots=3\nworker-1 slots=2\n"),
    _h("4+4 exclude worker-1:0", EIGHT, exclude="worker-1:0"),
    _h("include docstring", EIGHT, include="worker-0@worker-1:0,2"),
    _h("include one host", EIGHT, include="worker-1"),
    _h("include slots out of order", EIGHT, include="worker-1:2,0"),
    _h("include order follows the hostfile", EIGHT, include="worker-1@worker-0:1"),
    _h("include host twice", EIGHT, include="worker-1:2@worker-1"),
    _h("include +1", EIGHT, include="worker-0:+1"),
    _h("include superscript two", EIGHT, include="worker-0:\u00b2"),
    _h("include empty slot", EIGHT, include="worker-0:"),
    _h("include two colons", EIGHT, include="worker-0:1:2"),
    _h("include unknown host", EIGHT, include="worker-9"),
    _h("include missing slot", EIGHT, include="worker-1:7"),
    _h("include negative slot", EIGHT, include="worker-1:-1"),
    _h("exclude whole host", EIGHT, exclude="worker-0"),
    _h("exclude everything", EIGHT, exclude="worker-0@worker-1"),
    _h("exclude and include", EIGHT, include="worker-0", exclude="worker-1"),
    _h("num_nodes 1", EIGHT, num_nodes=1),
    _h("num_gpus 2", EIGHT, num_gpus=2),
    _h("num_gpus beyond slots", "a slots=2\nb slots=1\n", num_gpus=3),
    _h("num_nodes 0 alone", EIGHT, num_nodes=0),
    _h("num_nodes 0 with include", EIGHT, include="worker-0", num_nodes=0),
    _h("num_gpus 0 with exclude", EIGHT, exclude="worker-0", num_gpus=0),
    _h("slots=0 in the middle", "a slots=2\nb slots=0\nc slots=2\n"),
    _h("slots=0 excluded by a filter", "a slots=2\nb slots=0\nc slots=2\n", exclude="a:0"),
    _h("slots=0 with num_gpus", "a slots=2\nb slots=0\n", num_gpus=1),
    _h("slots=0 included", "a slots=2\nb slots=0\n", include="b:0"),
    _h("all slots=0", "a slots=0\nb slots=0\n", differs="all-slots-zero"),
    _h("comments and blanks", "# cluster\n\n  worker-0 slots=2   # two GPUs\n\nworker-1 slots=1 extra words\n"),
    _h("CRLF and CR line ends", "a slots=1\r\nb slots=2\rc slots=1\n"),
    _h("form feed is not a line end", "a slots=1\x0cb slots=2\nc slots=1\n"),
    _h("NEL and LINE SEPARATOR are not line ends", "a slots=1\x85b slots=2\u2028c slots=3\nd slots=1\n"),
    _h("arabic-indic digit", "a slots=\u0663\n"),
    _h("duplicate host", "a slots=1\na slots=2\n"),
    _h("bad line", "a slots=1\nb\n"),
    _h("slot= without s", "a slot=4\n"),
    _h("slots=x", "a slots=x\n"),
    _h("only comments", "# nothing\n\n"),
    _h("missing hostfile", None, differs="missing-hostfile"),
]

ESTIMATORS = [
    {"total": t, "largest": big, "gpus": g, "nodes": n, "factor": f}
    for t, big in ((2851e6, 32e6), (7.5e9, 0.5e9), (1e12, 4e9), (123_456_789, 1_234_567), (60e6, 16e6))
    for g in (1, 2, 8) for n in (1, 2, 16) for f in (1.0, 1.5)
]


def _c(config, world=8, differs=None):
    return {"config": config, "world": world, "differs": differs}


TB = "train_batch_size"
MB = "train_micro_batch_size_per_gpu"
GA = "gradient_accumulation_steps"
CONFIGS = [
    # the batch rule: every way to give one, two or three of the numbers, on several world sizes
    *[_c({TB: tb, MB: mb, GA: ga}, w) for tb in (1, 8, 12, 30, 64, 96) for mb in (1, 2, 3, 4) for ga in (1, 2, 3)
      for w in (1, 4, 8, 12)],
    *[_c({TB: tb, MB: mb}, w) for tb in (4, 8, 30, 64, 96) for mb in (1, 3, 4, 16) for w in (1, 4, 8, 12)],
    *[_c({TB: tb, GA: ga}, w) for tb in (4, 8, 30, 64, 96) for ga in (1, 2, 5) for w in (1, 4, 8, 12)],
    *[_c({MB: mb, GA: ga}, w) for mb in (1, 3) for ga in (1, 4) for w in (1, 8)],
    *[_c({TB: tb}, w) for tb in (1, 8, 30, 64) for w in (1, 8, 12)],
    *[_c({MB: mb}, w) for mb in (1, 5) for w in (1, 12)],
    _c({}), _c({GA: 2}),
    # zero, negative, float, bool, string batch values
    _c({TB: 64, MB: 0}), _c({TB: 64, GA: 0}), _c({TB: 64, MB: 4, GA: 0}), _c({TB: -64, MB: 4}), _c({TB: 0}),
    _c({TB: 64.0, MB: 4, GA: 2}), _c({TB: 64, MB: 4.0}), _c({TB: 64.5, MB: 4, GA: 2}),
    _c({TB: 8, MB: 0.5, GA: 2}, differs="fractional-batch"), _c({TB: 8, MB: True}, differs="boolean-batch"),
    _c({TB: "64"}), _c({TB: None, MB: 4}),
    # the zero_optimization section
    *[_c({TB: 8, "zero_optimization": {"stage": s}}) for s in (0, 1, 2, 3, 4, -1, "3", " 2", "3.0", 3.0, 2.5, "x", None)],
    _c({TB: 8, "zero_optimization": {"stage": True}}, differs="boolean-stage"),
    _c({TB: 8, "zero_optimization": {}}), _c({TB: 8, "zero_optimization": True}),
    _c({TB: 8, "zero_optimization": False}), _c({TB: 8, "zero_optimization": 2}),
    _c({TB: 8, "zero_optimization": None}), _c({TB: 8, "zero_optimization": [2]}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_com": True}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": "yes"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": "maybe"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": 2}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "contiguous_gradients": 0}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": 5.5}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": 0}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": "2e8"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "reduce_bucket_size": "1_000"}}),
    _c({TB: 8, "zero_optimization": {"stage": "1_0"}}), _c({TB: 8, "zero_optimization": {"stage": "+3"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": " yes"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": "ON"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "overlap_comm": 1.0}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": "nan"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": "0.5"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "compute_grad_norm": False}}),
    _c({TB: 8, "zero_optimization": {"stage": 1, "compute_grad_norm": "off"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "allgather_bucket_size": 0}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "allgather_bucket_size": -1}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto"}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1e9}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "max_live_parameters": 1e9}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "stage3_param_persistance_threshold": 1e4}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": True}}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_param": {"devise": "cpu"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_param": None}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "offload_param": "cpu"}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme", "nvme_path": "/nvme"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 1.5}}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": "0.5"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "buffer_count": -1}}}),
    _c({TB: 8, "zero_optimization": {"stage": 1, "offload_param": {"device": "cpu"}}}),
    _c({TB: 8, "zero_optimization": {"stage": 2, "sub_group_size": 1e9, "round_robin_gradients": "on"}}),
    _c({TB: 8, "zero_optimization": {"stage": 3, "zero_hpz_partition_size": 8, "zero_quantized_weights": "false"}}),
]


@pytest.fixture(scope="module")
def deepspeed_answers(tmp_path_factory):
    """DeepSpeed's answer to every case, from one run of tests/deepspeed_oracle.py."""
    tmp = tmp_path_factory.mktemp("deepspeed")
    cases, answers = tmp / "cases.json", tmp / "answers.json"
    cases.write_text(json.dumps({"hostfiles": HOSTFILES, "estimators": ESTIMATORS, "configs": CONFIGS}))
    r = subprocess.run([sys.executable, str(HERE / "deepspeed_oracle.py"), str(cases), str(answers)],
                       capture_output=True, text=True, timeout=240)
    if r.returncode != 0:
        pytest.fail(f"deepspeed_oracle.py exited {r.returncode}:\n{r.stderr[-3000:]}")
    return json.loads(answers.read_text())


# ---- hostfiles, filters and launch.py's environment ---------------------------------------


def _ours(case: dict) -> dict:
    if case["text"] is None:
        return {"error": "missing"}
    try:
        active = filter_resources(parse_hostfile(case["text"]), case["include"], case["exclude"],
                                  case["num_nodes"], case["num_gpus"])
    except UsageError as exc:
        return {"error": str(exc)}
    ranks = [{"env": r.env(), "argv": [f"--local_rank={r.local_rank}"]} for r in world_layout(active)]
    return {"world_info": {h: list(s) for h, s in active.items()}, "ranks": ranks}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", range(len(HOSTFILES)), ids=[c["id"] for c in HOSTFILES])
def test_hostfile_filters_and_environment(deepspeed_answers, index):
    case, ds = HOSTFILES[index], deepspeed_answers["hostfiles"][index]
    ours = _ours(case)
    if case["differs"]:
        assert case["differs"] in BY_ID
        assert "error" in ours and ("error" not in ds), (ds, ours)  # both listed differences: DeepSpeed runs, we refuse
        return
    assert "launch_exit" not in ds, ds
    if "error" in ds:
        assert "error" in ours, f"DeepSpeed refuses ({ds['error']}), clusterlab accepts: {ours}"
        return
    assert "error" not in ours, f"DeepSpeed accepts ({ds['world_info']}), clusterlab refuses: {ours['error']}"
    assert ours["world_info"] == ds["world_info"]
    assert ours["ranks"] == ds["ranks"]  # every variable launch.py sets, and --local_rank, rank by rank


@pytest.mark.timeout(300)
def test_fixture_is_what_launch_py_gives_a_3_plus_2_hostfile(deepspeed_answers):
    """tests/data/deepspeed_env_3_2.json (for read_env of DeepSpeed environments) is launch.py's real output."""
    ds = deepspeed_answers["hostfiles"][[c["id"] for c in HOSTFILES].index("3+2")]
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["hostfile"] == HOSTFILES[1]["text"]
    assert fixture["ranks"] == ds["ranks"]
    assert [r["env"]["LOCAL_RANK"] for r in fixture["ranks"]] == ["0", "1", "2", "1", "0"]


# ---- estimators ---------------------------------------------------------------------------


def _printed_ours(c: dict) -> str:
    return (estimators.format_zero2_estimates(c["total"], c["gpus"], c["nodes"], c["factor"]) + "\n"
            + estimators.format_zero3_estimates(c["total"], c["largest"], c["gpus"], c["nodes"], c["factor"]) + "\n")


@pytest.mark.timeout(300)
def test_estimators_equal_deepspeeds(deepspeed_answers):
    options = [(off, offp, init) for off in (True, False) for offp in (True, False) if off or not offp
               for init in (True, False)]
    results = lines = 0
    for c, ds in zip(ESTIMATORS, deepspeed_answers["estimators"]):
        ours2 = [list(estimators.estimate_zero2_model_states_mem_needs(c["total"], c["gpus"], c["nodes"], off, c["factor"]))
                 for off in (True, False)]
        ours3 = [list(estimators.estimate_zero3_model_states_mem_needs(c["total"], c["largest"], c["gpus"], c["nodes"],
                                                                        off, offp, init, c["factor"]))
                 for off, offp, init in options]
        assert ours2 == ds["zero2"], c
        assert ours3 == ds["zero3"], c
        results += 2 * 2 + 6 * 3
        # the printed tables: equal line by line, but for the offload label (differences: offload-label)
        theirs = ds["printed"].replace("OffloadDeviceEnum.cpu", "cpu ")
        assert _printed_ours(c) == theirs, c
        lines += theirs.count("\n")
    assert "offload-label" in BY_ID
    assert (results, lines) == (len(ESTIMATORS) * 22, len(ESTIMATORS) * 16)


# ---- ds_config: the batch rule and the zero_optimization schema ---------------------------


def _config_ours(c: dict) -> dict:
    try:
        r = check_config(json.loads(json.dumps(c["config"])), c["world"])
    except UsageError as exc:
        return {"error": str(exc)}
    b = r.batch
    return {"batch": [b["train_batch_size"], b["train_micro_batch_size_per_gpu"], b["gradient_accumulation_steps"]],
            "stage": r.stage or 0}


@pytest.mark.timeout(300)
def test_configs_equal_deepspeeds(deepspeed_answers):
    compared = equal = differ = quoted = 0
    for c, ds in zip(CONFIGS, deepspeed_answers["configs"]):
        ours = _config_ours(c)
        compared += 1
        if c["differs"]:
            assert c["differs"] in BY_ID and "error" in ours and "error" not in ds, (c, ds, ours)
            assert "on purpose" in ours["error"], ours  # a deliberate strictness says so
            differ += 1
            continue
        if "error" in ds:
            assert "error" in ours, f"{c}: DeepSpeed refuses ({ds['error']}), clusterlab accepts {ours}"
            whole = not any(isinstance(v, float) for v in c["config"].values())  # 64.5 is refused earlier
            if ds["error"].startswith("AssertionError: Check batch") and whole:  # the rule: DeepSpeed's words
                assert ds["error"].removeprefix("AssertionError: ") in ours["error"], (c, ds, ours)
                quoted += 1
        else:
            assert "error" not in ours, f"{c}: DeepSpeed accepts {ds}, clusterlab refuses: {ours['error']}"
            assert ours == ds, c
        equal += 1
    assert compared == len(CONFIGS) and differ == sum(1 for c in CONFIGS if c["differs"])
    assert quoted > 100  # most of the batch grid breaks the rule, each with DeepSpeed's own message


def _kind(field: dict) -> tuple:
    """DeepSpeed's pydantic field as (kind, bound, optional), the shape of ds_schema's tables."""
    ann, bounds = field["annotation"], field["bounds"]
    optional = ann.startswith("typing.Optional")
    kinds = {"ZeroStageEnum": "stage", "OffloadDeviceEnum": "device", "Path": "path", "bool": "bool", "int": "int",
             "float": "float", "DeepSpeedZeroOffloadParamConfig": "offload_param",
             "DeepSpeedZeroOffloadOptimizerConfig": "offload_optimizer"}
    kind = next((k for name, k in kinds.items() if name in ann), "object")
    ops = {"Gt": ">", "Ge": ">=", "Le": "<="}
    b = [(ops[n], v) for n, v in bounds]
    if len(b) == 2:
        bound = ("in", b[0][1], b[1][1])
    else:
        bound = b[0] if b else None
    return kind, bound, optional


def test_zero_schema_is_deepspeeds(deepspeed_answers):
    schema = deepspeed_answers["schema"]
    for ours, theirs in ((ZERO_FIELDS, schema["zero"]), (OFFLOAD_PARAM_FIELDS, schema["offload_param"]),
                         (OFFLOAD_OPTIMIZER_FIELDS, schema["offload_optimizer"])):
        assert set(ours) == set(theirs)
        for name, field in theirs.items():
            kind, bound, optional = _kind(field)
            assert ours[name][0] == kind, name
            assert (ours[name][1] and tuple(ours[name][1])) == bound, name
            assert ours[name][2] == optional or (kind == "bool" and name in ("cpu_offload_param",)), name
    assert ZERO_ALIASES == {f["alias"]: n for n, f in schema["zero"].items() if f["alias"]}
