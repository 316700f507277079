"""The environment contract, against torchrun's documented variables and each launcher's names."""

import os
import re

import pytest

from clusterlab.env import read_env, worker_env
from clusterlab.errors import UsageError
from clusterlab.layout import ClusterLayout

# The variables torch/distributed/run.py documents for every worker (plus the lab's NODE_RANK).
TORCHRUN_VARS = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS",
}


def test_worker_env_is_torchruns_contract():
    env = worker_env(ClusterLayout(2, 4), 1, 2, master_addr="node0", master_port=29500, run_id="job7",
                     restart_count=1, max_restarts=3)
    assert TORCHRUN_VARS | {"NODE_RANK"} <= set(env)
    assert env["RANK"] == "6" and env["LOCAL_RANK"] == "2" and env["WORLD_SIZE"] == "8"
    assert env["LOCAL_WORLD_SIZE"] == "4" and env["GROUP_RANK"] == "1" and env["GROUP_WORLD_SIZE"] == "2"
    assert env["ROLE_RANK"] == "6" and env["ROLE_WORLD_SIZE"] == "8" and env["ROLE_NAME"] == "default"
    assert env["MASTER_ADDR"] == "node0" and env["MASTER_PORT"] == "29500"
    assert env["TORCHELASTIC_RESTART_COUNT"] == "1" and env["TORCHELASTIC_MAX_RESTARTS"] == "3"
    assert env["TORCHELASTIC_RUN_ID"] == "job7" and env["OMP_NUM_THREADS"] == "1" and env["NODE_RANK"] == "1"
    assert env["TORCHELASTIC_USE_AGENT_STORE"] == "False"


def test_omp_threads_kept_when_set():
    env = worker_env(ClusterLayout(1, 2), 0, 0, master_addr="a", master_port=1, omp_num_threads="8")
    assert env["OMP_NUM_THREADS"] == "8"


def test_round_trip_through_read_env():
    env = worker_env(ClusterLayout(2, 4), 1, 3, master_addr="10.0.0.1", master_port=29400)
    view = read_env(env)
    assert (view.rank, view.local_rank, view.world_size, view.node_rank, view.nnodes) == (7, 3, 8, 1, 2)
    assert (view.master_addr, view.master_port, view.launcher) == ("10.0.0.1", 29400, "torchrun")


def test_seed_manual_exports():
    env = {"NODE_RANK": "1", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "MASTER_ADDR": "localhost", "MASTER_PORT": "23456"}
    view = read_env(env, nproc_per_node=4)
    assert (view.rank, view.node_rank, view.nnodes, view.launcher) == (6, 1, 2, "manual exports")
    with pytest.raises(UsageError, match="LOCAL_WORLD_SIZE"):
        read_env(env)


def test_openmpi_names():
    env = {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    view = read_env(env)
    assert (view.rank, view.local_rank, view.node_rank, view.nnodes, view.launcher) == (5, 1, 1, 2, "OpenMPI")


def test_deepspeed_names():
    # deepspeed/launcher/launch.py sets these for every process
    env = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_SIZE": "4", "CROSS_RANK": "1",
           "CROSS_SIZE": "2", "MASTER_ADDR": "worker-0", "MASTER_PORT": "29500"}
    view = read_env(env)
    assert (view.rank, view.node_rank, view.nnodes, view.local_world_size, view.launcher) == (5, 1, 2, 4, "DeepSpeed")


def test_slurm_names():
    env = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NODEID": "1",
           "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "node[001-002]",
           "SLURM_JOB_ID": "123456"}
    view = read_env(env)
    assert (view.rank, view.local_rank, view.node_rank, view.local_world_size) == (5, 1, 1, 4)
    assert view.master_addr == "node001"
    assert view.master_port == 15000 + 3456


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "no launcher variables found"),
        ({"RANK": "x", "WORLD_SIZE": "8", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
        ({"RANK": "9", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, "RANK=9 is outside 0..7"),
        ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"},
         "inconsistent ranks: RANK=5"),
        ({"RANK": "1", "WORLD_SIZE": "8"}, "LOCAL_RANK is not set"),
        ({"RANK": "1", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_PORT": "70000"},
         "MASTER_PORT=70000 is not a TCP port"),
        ({"NODE_RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}, "NODE_RANK=2 is outside"),
    ],
)
def test_bad_environments_name_the_variable(env, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_env(env)


def _deepspeed_ranks():
    import json
    from pathlib import Path

    recorded = json.loads((Path(__file__).parent / "data" / "deepspeed_env_3_2.json").read_text())
    return [r["env"] for r in recorded["ranks"]]


@pytest.mark.parametrize("env", _deepspeed_ranks(), ids=lambda e: f"rank{e['RANK']}")
def test_what_deepspeeds_launch_py_really_exports_is_read_as_deepspeed_means_it(env):
    """The environments DeepSpeed 0.19.8's launch.py gave a 3+2 hostfile (tests/data, recorded from the
    real launcher): LOCAL_RANK = RANK % LOCAL_SIZE, so ranks 3 and 4 read local ranks 1 and 0. Read as is,
    not held to the even numbering DeepSpeed does not promise (issue 15: rank 4 was refused)."""
    view = read_env(env)
    assert view.launcher == "DeepSpeed"
    assert (view.rank, view.local_rank, view.local_world_size) == (int(env["RANK"]), int(env["LOCAL_RANK"]),
                                                                    int(env["LOCAL_SIZE"]))
    assert (view.node_rank, view.nnodes, view.world_size) == (int(env["CROSS_RANK"]), 2, 5)


def test_clusterlab_env_accepts_rank_4_of_a_3_plus_2_hostfile():
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")},
           **_deepspeed_ranks()[4]}
    res = subprocess.run([sys.executable, "-m", "clusterlab", "env"], env=env, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    assert "launcher: DeepSpeed" in res.stdout
    assert re.search(r"local_rank = 0 +<- LOCAL_RANK", res.stdout) and re.search(r"node_rank = 1 +<- CROSS_RANK", res.stdout)
