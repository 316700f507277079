"""A task's environment field by field, the batch environment, and #SBATCH parsing.

Expected values are written out from srun(1)/sbatch(1) (OUTPUT ENVIRONMENT VARIABLES) and what
a real Slurm 22.05 gave for the same request (tests/conformance), for a step `srun -N4 -n10 -c2`
in a job of `--exclusive -N4 -n10 -c2 --gpus-per-node=2` (block: node001 0-2, node002 3-5,
node003 6-7, node004 8-9).
"""

import pytest

from clusterlab import read_env
from clusterlab.errors import UsageError
from clusterlab.slurm import options
from clusterlab.slurm.environ import batch_env, fallback_env, task_env
from clusterlab.slurm.job import allocate, plan_step
from clusterlab.slurm.sbatch import merge, parse_script


def request(*argv):
    values, _rest = options.parse(list(argv), "srun")
    return values


def test_task_environment_field_by_field():
    alloc = allocate(request("-N4", "-n10", "-c", "2", "--gpus-per-node=2", "-J", "train", "--exclusive"), 4242,
                     "/sub", "x")
    step = plan_step(alloc, request("-N4", "-n10", "-c", "2"), 3)
    env = task_env(step, 7)
    expected = {
        "SLURM_JOB_ID": "4242", "SLURM_JOBID": "4242", "SLURM_JOB_NAME": "train",
        "SLURM_JOB_NODELIST": "node[001-004]", "SLURM_NODELIST": "node[001-004]",
        "SLURM_STEP_NODELIST": "node[001-004]", "SLURM_JOB_NUM_NODES": "4", "SLURM_NNODES": "4",
        "SLURM_STEP_NUM_NODES": "4", "SLURM_NTASKS": "10", "SLURM_NPROCS": "10", "SLURM_STEP_NUM_TASKS": "10",
        "SLURM_TASKS_PER_NODE": "3(x2),2(x2)", "SLURM_STEP_TASKS_PER_NODE": "3(x2),2(x2)",
        "SLURM_JOB_CPUS_PER_NODE": "64(x4)", "SLURM_JOB_CPUS_PER_NODE_PACK_GROUP_0": "64(x4)",
        "SLURM_STEP_ID": "3", "SLURM_STEPID": "3",
        "SLURM_PROCID": "7", "SLURM_LOCALID": "1", "SLURM_NODEID": "2", "SLURMD_NODENAME": "node003",
        "SLURM_GTIDS": "6,7", "SLURM_CPUS_PER_TASK": "2", "SLURM_CPUS_ON_NODE": "4",
        "SLURM_GPUS_ON_NODE": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "SLURM_STEP_GPUS": "0,1,2,3,4,5,6,7",
        "SLURM_TOPOLOGY_ADDR": "node003", "SLURM_JOB_PARTITION": "debug", "SLURM_NODE_ALIASES": None,
        "SLURM_DISTRIBUTION": "block", "SLURM_SUBMIT_DIR": "/sub", "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1",
        # the fallback's mark is the launcher's to add, only where nodes are not hosts (fallback_env)
        "CLUSTERLAB_SIMULATED_HOSTS": None, "CLUSTERLAB_SIMULATED_NODES": None,
    }
    for key, value in expected.items():
        assert env.get(key) == value, key
    assert fallback_env(alloc) == {"CLUSTERLAB_SIMULATED_HOSTS": "1", "CLUSTERLAB_SIMULATED_NODES": "node[001-004]"}


def test_shared_nodes_pack_the_first_node():
    """Real Slurm 22.05 (cons_tres, shared nodes) gives `-N2 -n4` 3 tasks on node001, 1 on node002."""
    alloc = allocate(request("-N2", "-n4"), 1, "/", "x")
    assert (alloc.tasks_per_node, alloc.cpus_per_node) == ((3, 1), (3, 1))
    step = plan_step(alloc, request("-N2", "-n4"), 0, standalone=True)
    assert step.layout.task_ids == ((0, 1, 2), (3,))
    assert "SLURM_DISTRIBUTION" not in task_env(step, 0)  # srun sets it only when -m is given
    for fix in (("--ntasks-per-node=2",), ("--exclusive",)):
        alloc = allocate(request("-N2", "-n4", *fix), 1, "/", "x")
        assert alloc.tasks_per_node == (2, 2), fix


def test_cpus_per_task_only_when_given():
    alloc = allocate(request("-N2", "-n4"), 1, "/", "x")
    env = task_env(plan_step(alloc, request(), 0), 0)
    assert "SLURM_CPUS_PER_TASK" not in env and "SLURM_GPUS_ON_NODE" not in env
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_gpus_per_task_binds_each_task_to_its_own_gpu():
    """Real 22.05, `srun -N2 -n4 --gpus-per-task=1`: tasks 0-2 on node001 see GPU 0, 1, 2; task 3 its node's 0."""
    alloc = allocate(request("-N2", "-n4", "--gpus-per-task=1"), 1, "/", "x")
    step = plan_step(alloc, request("-N2", "-n4", "--gpus-per-task=1"), 0, standalone=True)
    assert [task_env(step, t)["CUDA_VISIBLE_DEVICES"] for t in range(4)] == ["0", "1", "2", "0"]
    assert task_env(step, 0)["SLURM_GPUS_ON_NODE"] == "3"


def test_batch_environment_is_task_zero_on_the_first_node():
    alloc = allocate(request("-N2", "--ntasks-per-node=4", "--gpus-per-node=4"), 77, "/s", "job.sbatch")
    env = batch_env(alloc)
    assert (env["SLURM_PROCID"], env["SLURM_NODEID"], env["SLURM_LOCALID"]) == ("0", "0", "0")
    assert env["SLURMD_NODENAME"] == "node001"
    assert env["SLURM_TASKS_PER_NODE"] == "4(x2)" and env["SLURM_NTASKS"] == "8"
    assert "SLURM_STEP_ID" not in env
    assert env["SLURM_JOB_GPUS"] == env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


def test_ntasks_not_exported_when_only_nodes_given():
    env = batch_env(allocate(request("-N3"), 1, "/", "x"))
    assert "SLURM_NTASKS" not in env and env["SLURM_TASKS_PER_NODE"] == "1(x3)"


def test_read_env_understands_a_cyclic_task():
    alloc = allocate(request("-N2", "-n4", "-m", "cyclic"), 1234, "/", "x")
    env = task_env(plan_step(alloc, request("-n4", "-m", "cyclic"), 0), 1)
    view = read_env(env)
    assert (view.rank, view.local_rank, view.node_rank, view.world_size, view.nnodes) == (1, 0, 1, 4, 2)
    # the first host of the node list, as on a cluster: the nodes are hosts, node001 resolves
    assert view.master_addr == "node001" and view.master_port == 15000 + 1234
    assert view.sources["master_addr"] == "first host of SLURM_JOB_NODELIST"
    # where they are not (--hosts=off), node001 is this machine
    view = read_env({**env, **fallback_env(alloc)})
    assert view.master_addr == "127.0.0.1"
    assert view.sources["master_addr"] == "first host of SLURM_JOB_NODELIST (a simulated node: this machine)"


SCRIPT = """#!/bin/bash
# a comment
#SBATCH --nodes=2
#SBATCH -n 4
#SBATCH --job-name demo   # trailing comment
#SBATCH -c2

# SBATCH --gpus-per-node=8
echo first command
#SBATCH --time=1:00:00
"""


def test_directives_long_short_equals_space_and_where_they_stop():
    script = parse_script(SCRIPT)
    d = {k: v.value for k, v in script.directives.items()}
    assert d == {"nodes": "2", "ntasks": 4, "job_name": "demo", "cpus_per_task": 2}
    assert script.directives["ntasks"].source == "line 4"
    assert script.first_command == 9 and script.ignored_directives == (10,)


def test_precedence_command_line_over_environment_over_directives():
    script = parse_script("#!/bin/bash\n#SBATCH -J from-directive\n#SBATCH --gpus-per-node=1\ntrue\n")
    env = {"SBATCH_JOB_NAME": "from-env", "SBATCH_GPUS_PER_NODE": "2"}
    cli, _ = options.parse(["--gpus-per-node=4", "x.sbatch"], "sbatch")
    merged = merge(script, env, cli)
    assert merged["job_name"].value == "from-env" and merged["job_name"].source == "SBATCH_JOB_NAME"
    assert merged["gpus_per_node"].value == "4"
    assert merge(script, {}, {})["job_name"].value == "from-directive"


@pytest.mark.parametrize("text, match", [
    ("echo hi\n", "first line must start with #!"),
    ("#!/bin/bash\n#SBATCH --nodes\n", r"line 2: --nodes needs a value"),
    ("#!/bin/bash\n#SBATCH --frobnicate=1\n", r"line 2: sbatch: unrecognized option '--frobnicate'"),
    ("#!/bin/bash\n#SBATCH -n two\n", r"line 2: -n='two' is not a whole number"),
    ("#!/bin/bash\n#SBATCH --job-name='unclosed\n", "line 2.*close the quote"),
    ("#!/bin/bash\n#SBATCH --label\n", "option of srun, not of sbatch"),
])
def test_malformed_directives_name_the_line(text, match):
    with pytest.raises(UsageError, match=match):
        parse_script(text)
