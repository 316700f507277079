"""clusterlab srun / sbatch / scontrol end to end: real processes, real pipes, Slurm's exit statuses.

Every run has a timeout; the autouse fixture in conftest.py fails a test that leaves a process behind.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "slurm"


def clusterlab(*args, cwd=ROOT, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "clusterlab", *args], cwd=cwd, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


def test_srun_packs_shared_nodes_as_slurm_22_05():
    r = clusterlab("srun", "-N2", "-n4", "-l", "printenv", "SLURMD_NODENAME")
    assert sorted(r.stdout.splitlines()) == ["0: node001", "1: node001", "2: node001", "3: node002"]


def test_srun_block_layout_with_labels():
    r = clusterlab("srun", "-N4", "-n10", "--exclusive", "-l", "bash", "-c", "echo $SLURMD_NODENAME $SLURM_LOCALID")
    assert r.returncode == 0, r.stderr
    got = sorted(r.stdout.splitlines(), key=lambda line: int(line.split(":")[0]))
    assert got == ["0: node001 0", "1: node001 1", "2: node001 2", "3: node002 0", "4: node002 1",
                   "5: node002 2", "6: node003 0", "7: node003 1", "8: node004 0", "9: node004 1"]


def test_srun_cyclic_layout():
    r = clusterlab("srun", "-N4", "-n10", "-m", "cyclic", "--exclusive", "-l", "printenv", "SLURM_NODEID")
    nodes = dict(line.split(": ") for line in r.stdout.splitlines())
    assert [nodes[str(t)] for t in range(10)] == ["0", "1", "2", "3"] * 2 + ["0", "1"]


def test_label_width_follows_the_largest_task_id():
    r = clusterlab("srun", "-n11", "-l", "echo", "x")
    assert " 0: x" in r.stdout.splitlines() and "10: x" in r.stdout.splitlines()


def test_exit_status_is_the_highest_exit_code():
    r = clusterlab("srun", "-n3", "bash", "-c", "exit $SLURM_PROCID")
    assert r.returncode == 2
    assert "srun: error: node001: task 2: Exited with exit code 2" in r.stderr


def test_exit_status_is_128_plus_signal():
    r = clusterlab("srun", "-n2", "bash", "-c", "[ $SLURM_PROCID = 1 ] && kill -9 $$; exit 3")
    assert r.returncode == 128 + 9
    assert "task 1: Killed" in r.stderr


def test_kill_on_bad_exit_stops_the_step():
    r = clusterlab("srun", "-n3", "-K", "bash", "-c", "[ $SLURM_PROCID = 1 ] && exit 3; exec sleep 60", timeout=30)
    assert "task 1: Exited with exit code 3" in r.stderr and "Terminating StepId=" in r.stderr
    assert r.returncode == 128 + 15  # the others were stopped by SIGTERM, and a signal outranks exit codes


def test_without_kill_on_bad_exit_the_others_finish():
    r = clusterlab("srun", "-n2", "bash", "-c", "[ $SLURM_PROCID = 0 ] && exit 3; echo done")
    assert r.returncode == 3 and "done" in r.stdout


def test_wait_stops_the_rest_after_the_first_exit():
    r = clusterlab("srun", "-n2", "-W", "1", "bash", "-c", "[ $SLURM_PROCID = 0 ] && exit 0; exec sleep 60",
                   timeout=30)
    assert "srun: First task exited 1s ago" in r.stderr and r.returncode == 128 + 9  # -W ends the step with SIGKILL
    assert "srun: error: node001: task 1: Killed" in r.stderr


def test_background_children_do_not_outlive_the_step(tmp_path):
    pidfile = tmp_path / "pid"
    r = clusterlab("srun", "-n1", "bash", "-c", f"setsid sleep 60 & echo $! > {pidfile}")
    assert r.returncode == 0
    pid = int(pidfile.read_text())
    import psutil
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_scontrol_show_hostnames_keeps_order():
    r = clusterlab("scontrol", "show", "hostnames", "node[003-004],gpu1,node001")
    assert r.stdout.split() == ["node003", "node004", "gpu1", "node001"]


BAD = [
    (["srun", "--bogus", "touch", "MARK"], "unrecognized option '--bogus'"),
    (["srun", "-m", "plane=0", "touch", "MARK"], "plane size"),
    (["srun", "-w", "node[001-", "touch", "MARK"], "hostlist 'node[001-' is malformed"),
    (["srun", "-N", "0", "touch", "MARK"], "-N=0 is not a node count"),
    (["srun", "-n", "abc", "touch", "MARK"], "-n='abc' is not a whole number"),
    (["srun"], "no command given"),
    (["sbatch", "no-such-script.sbatch"], "not found"),
    (["sbatch", "BADSCRIPT"], "line 2: sbatch: unrecognized option '--frobnicate'"),
    (["scontrol", "show", "hostnames", "n[1-"], "malformed"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_launched(tmp_path, argv, message):
    (tmp_path / "SCRIPT").write_text("#!/bin/bash\ntouch MARK\n")
    (tmp_path / "BADSCRIPT").write_text("#!/bin/bash\n#SBATCH --frobnicate=1\ntouch MARK\n")
    r = clusterlab(*argv, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert not (tmp_path / "MARK").exists()


REFUSED = [  # what real Slurm 22.05 refuses, with its words and exit status 1 (tests/conformance)
    (["srun", "-c", "100", "touch", "MARK"], "srun: error: CPU count per node can not be satisfied"),
    (["srun", "--gpus-per-node=16", "touch", "MARK"], "Requested node configuration is not available"),
    (["sbatch", "--nodes=2", "--ntasks=10", "--ntasks-per-node=2", "SCRIPT"],
     "sbatch: error: Batch job submission failed: Requested node configuration is not available"),
]


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a)[:40] for a, _ in REFUSED])
def test_refused_as_slurm_refuses_one_line_exit_1(tmp_path, argv, message):
    (tmp_path / "SCRIPT").write_text("#!/bin/bash\ntouch MARK\n")
    r = clusterlab(*argv, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "MARK").exists()


def test_missing_command_fails_in_every_task_as_execve_does():
    r = clusterlab("srun", "-n2", "-l", "no-such-command-xyz")
    assert r.returncode == 2  # slurmstepd exits with execve's errno, ENOENT
    assert sorted(r.stderr.splitlines())[:2] == [
        "0: slurmstepd-node001: error: execve(): no-such-command-xyz: No such file or directory",
        "1: slurmstepd-node001: error: execve(): no-such-command-xyz: No such file or directory"]
    assert "srun: error: node001: tasks 0-1: Exited with exit code 2" in r.stderr


def test_ntasks_per_node_that_disagrees_is_dropped_with_slurms_warning():
    r = clusterlab("srun", "-N2", "-n10", "--ntasks-per-node=4", "printenv", "SLURMD_NODENAME")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 10
    assert "srun: Warning: can't honor --ntasks-per-node set to 4" in r.stderr


def test_sbatch_step_ids_count_up_even_in_parallel(tmp_path):
    script = tmp_path / "steps.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -N2\nfor i in 1 2 3; do srun -n1 printenv SLURM_STEP_ID; done\n"
                      "srun -n1 printenv SLURM_STEP_ID & srun -n1 printenv SLURM_STEP_ID & wait\n")
    r = clusterlab("sbatch", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ids = [line for line in r.stdout.splitlines() if line.isdigit()]
    assert ids[:3] == ["0", "1", "2"] and sorted(ids[3:]) == ["3", "4"]


def test_sbatch_output_file_and_batch_environment(tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --job-name=envcheck -N 2\n#SBATCH -o out-%x-%j.log\n"
                      "echo $SLURMD_NODENAME $SLURM_PROCID $SLURM_JOB_NODELIST $0\n")
    r = clusterlab("sbatch", str(script), cwd=tmp_path)
    job = re.search(r"Submitted batch job (\d+)", r.stdout).group(1)
    text = (tmp_path / f"out-envcheck-{job}.log").read_text().split()
    assert text[:3] == ["node001", "0", "node[001-002]"] and text[3].endswith("slurm_script")


def test_pattern_b_one_task_per_gpu_end_to_end():
    r = clusterlab("sbatch", str(EXAMPLES / "task_per_gpu.sbatch"))
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if " rank " in line]
    seen = {}
    for line in lines:
        m = re.match(r"(node\d+): rank (\d)/4 local_rank (\d) node (\d)/2 .*-> cuda:(\d)", line)
        seen[int(m.group(2))] = (m.group(1), int(m.group(3)), int(m.group(4)), int(m.group(5)))
    assert seen == {0: ("node001", 0, 0, 0), 1: ("node001", 1, 0, 1),
                    2: ("node002", 0, 1, 0), 3: ("node002", 1, 1, 1)}


def test_pattern_a_one_launcher_per_node_end_to_end():
    r = clusterlab("sbatch", str(EXAMPLES / "torchrun_per_node.sbatch"), timeout=90)
    assert r.returncode == 0, r.stderr
    ranks = sorted(int(m.group(1)) for m in re.finditer(r"rank (\d)/4", r.stdout))
    assert ranks == [0, 1, 2, 3]


def test_sigkilled_sbatch_leaves_nothing_running(tmp_path):
    """issue 14, item 4: a SIGKILLed `clusterlab sbatch` left its batch script and its srun steps
    running with ppid 1. Its watchdog now ends the job, as slurmd would."""
    import time

    import psutil

    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH -N2\necho $$ > batch.pid\n"
                      "srun bash -c 'echo $$ > task.$SLURM_PROCID.pid; exec sleep 300' &\nsleep 300 &\nwait\n")
    proc = subprocess.Popen([sys.executable, "-m", "clusterlab", "sbatch", str(script)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files = [tmp_path / name for name in ("batch.pid", "task.0.pid", "task.1.pid")]
    deadline = time.monotonic() + 30
    while not all(f.exists() and f.read_text().strip() for f in files):  # the job is running
        assert time.monotonic() < deadline and proc.poll() is None, "the job did not start within 30 s"
        time.sleep(0.02)
    job = [psutil.Process(int(f.read_text())) for f in files]
    job += [c for p in job for c in p.children(recursive=True)]  # srun, the background sleep
    proc.kill()
    proc.wait()
    _gone, alive = psutil.wait_procs(job, timeout=15)
    assert not alive, f"left running after sbatch was SIGKILLed: {[(p.pid, p.cmdline()) for p in alive]}"


def test_sbatch_reads_a_script_from_a_pipe():
    """`sbatch /dev/stdin <<EOF` is a common idiom; copying the pipe to slurm_script raised a traceback."""
    r = subprocess.run([sys.executable, "-m", "clusterlab", "sbatch", "/dev/stdin"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, input="#!/bin/bash\n#SBATCH -N2\necho nodes $SLURM_JOB_NODELIST\n")
    assert r.returncode == 0 and "nodes node[001-002]" in r.stdout, r.stderr
