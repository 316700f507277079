"""`clusterlab srun` / `sbatch` on nodes that are hosts (--hosts, clusterlab.host + clusterlab.keepers).

References: glibc's resolver (``getent``), ``hostname`` (the UTS namespace), Python's
:mod:`socket` and torch's c10d TCPStore (C getaddrinfo), each asked inside the tasks; the
address scheme of clusterlab.host (node k at 127.0.1.k). Leaks are checked on the kernel's
side: no process may still have a hosts file of the job mounted (``/proc/PID/mountinfo``,
the mount's source names the launcher's pid) and no keeper may be alive, after success, a
crash, Ctrl-C, or SIGKILL of srun or sbatch. The unprivileged path runs as uid 65534
(``setpriv``), in a user namespace, or with user namespaces refused by the kernel.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import free_port
from test_host import NOBODY, REFUSE, leftovers

from clusterlab import host
from clusterlab.slurm.job import allocate
from clusterlab.slurm.options import parse
from clusterlab.slurm.sbatch import make_job_dir

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")


def _hosts_here() -> bool:
    return LINUX and host.plan(("node001",), "auto").via != "off"


HOSTS = pytest.mark.skipif(not _hosts_here(), reason="namespaces are not available here (the fallback is tested below)")


def clusterlab(*args, cwd=ROOT, timeout=60, prefix=(), **kw) -> subprocess.CompletedProcess:
    with subprocess.Popen([*prefix, sys.executable, "-m", "clusterlab", *args], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw) as proc:
        out, err = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid  # the launcher's pid names the job's mounts: clusterlab-hosts-PID
    return done


def _wait_gone(launcher: int, keepers: list[psutil.Process], timeout: float = 15) -> None:
    """The keepers exit and no process keeps the job's /etc/hosts mounted (its namespaces are gone)."""
    _gone, alive = psutil.wait_procs(keepers, timeout=timeout)
    assert not alive, f"keepers left behind: {[(p.pid, p.cmdline()) for p in alive]}"
    deadline = time.monotonic() + timeout  # a task killed by the watchdog may still be exiting
    while leftovers(launcher) and time.monotonic() < deadline:
        psutil.wait_procs([psutil.Process(int(p)) for p in leftovers(launcher) if psutil.pid_exists(int(p))],
                          timeout=0.5)
    assert leftovers(launcher) == []


# ------------------------------------------------------------------ what a task sees
@HOSTS
def test_srun_hostname_prints_the_node_names():
    r = clusterlab("srun", "-N2", "-n2", "hostname")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert sorted(r.stdout.split()) == ["node001", "node002"]
    assert leftovers(r.pid) == []


PROBE = r"""
import os, socket, subprocess
me = os.environ["SLURMD_NODENAME"]
getent = subprocess.run(["getent", "hosts", "node001", "node002"], capture_output=True, text=True).stdout.split()
print(me, "hostname", subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip(),
      "hostname-i", subprocess.run(["hostname", "-i"], capture_output=True, text=True).stdout.strip(),
      "getent", " ".join(getent), "python", socket.gethostname(),
      socket.gethostbyname("node001"), socket.gethostbyname("node002"),
      "simulated", os.environ.get("CLUSTERLAB_SIMULATED_HOSTS", "-"), flush=True)
"""


@HOSTS
def test_every_resolver_agrees_inside_the_tasks(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    r = clusterlab("srun", "-N2", "--ntasks-per-node=2", "python", str(tmp_path / "probe.py"))
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    expected = {name: f"{name} hostname {name} hostname-i {addr} getent 127.0.1.1 node001 127.0.1.2 node002 "
                      f"python {name} 127.0.1.1 127.0.1.2 simulated -"
                for name, addr in (("node001", "127.0.1.1"), ("node002", "127.0.1.2"))}
    assert lines == [expected["node001"]] * 2 + [expected["node002"]] * 2


STORE = r"""
import os, socket
from datetime import timedelta
from torch.distributed import TCPStore
rank, port = int(os.environ["SLURM_PROCID"]), int(os.environ["PORT"])
store = TCPStore("node001", port, 2, rank == 0, timedelta(seconds=30))  # C getaddrinfo("node001")
store.set(f"host{rank}", socket.gethostname())
print(f"rank {rank} on {socket.gethostname()} sees", store.get(f"host{1 - rank}").decode(), flush=True)
store.wait(["host0", "host1"])
if rank == 1:
    store.set("done", "1")
else:
    store.wait(["done"])
"""


@HOSTS
def test_torch_c10d_store_meets_at_a_node_name(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    (tmp_path / "store.py").write_text(STORE)
    r = clusterlab("srun", "-N2", "-n2", "python", str(tmp_path / "store.py"), timeout=90,
                   env={**os.environ, "PORT": str(free_port())})
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.splitlines()) == ["rank 0 on node001 sees node002", "rank 1 on node002 sees node001"]


BATCH = """#!/bin/bash
#SBATCH -N2 --ntasks-per-node=1
echo "batch shell on $(hostname)"
srun bash -c 'echo "task $SLURM_PROCID on $(hostname)"'
getent hosts node099; echo "getent node099: exit $?"
python -c "import socket; socket.create_connection(('node099', 29500), timeout=5)" 2>&1 | tail -n 1
"""


@HOSTS
def test_sbatch_runs_the_batch_shell_on_the_first_node_and_a_stranger_fails_fast(tmp_path):
    (tmp_path / "job.sbatch").write_text(BATCH)
    t0 = time.monotonic()
    r = clusterlab("sbatch", "job.sbatch", cwd=tmp_path)
    took = time.monotonic() - t0
    assert r.returncode == 0 and r.stderr == "", r.stderr  # no note: the nodes are hosts
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Submitted batch job ") and len(lines) == 6, lines  # all real sbatch prints, then the job
    assert lines[1] == "batch shell on node001" and sorted(lines[2:4]) == ["task 0 on node001", "task 1 on node002"]
    # a host outside the job is unknown at once, as on a cluster: no retry loop, no DNS wait
    assert lines[4:] == ["getent node099: exit 2", "socket.gaierror: [Errno -2] Name or service not known"]
    assert took < 30
    assert leftovers(r.pid) == []


@HOSTS
def test_explain_shows_the_mode():
    r = clusterlab("sbatch", "--explain", "examples/slurm/task_per_gpu.sbatch")
    assert r.returncode == 0
    assert "  hosts: namespaces (as root): hostname is the node's name, node001 resolves to 127.0.1.1" in \
        r.stdout.splitlines() or "  hosts: namespaces (in a user namespace)" in r.stdout


# ------------------------------------------------------------------ the fallback and the choice
def test_hosts_off_is_todays_behaviour(tmp_path):
    r = clusterlab("srun", "--hosts=off", "-N2", "-n2", "sh", "-c", "echo $(hostname) $CLUSTERLAB_SIMULATED_HOSTS")
    assert r.returncode == 0 and r.stderr == ""  # chosen, not fallen back: no note
    assert r.stdout.splitlines() == [f"{socket.gethostname()} 1"] * 2


@pytest.mark.parametrize("argv, message", [
    (["srun", "--hosts=on", "hostname"], "--hosts='on' is not one of auto, namespaces, off; use auto (the default)"),
    (["sbatch", "--hosts", "yes", "job.sbatch"], "--hosts='yes' is not one of auto, namespaces, off"),
    (["sbatch", "directive.sbatch"], "line 2: --hosts is clusterlab's own option, which real sbatch rejects; give it "
                                     "on the command line: clusterlab sbatch --hosts=off directive.sbatch"),
    (["sbatch", "inner.sbatch"], "srun: --hosts=off inside a job: the job's nodes are already chosen"),
])
def test_bad_hosts_option_one_line(tmp_path, argv, message):
    (tmp_path / "job.sbatch").write_text("#!/bin/bash\ntouch MARK\n")
    (tmp_path / "directive.sbatch").write_text("#!/bin/bash\n#SBATCH --hosts=off\ntouch MARK\n")
    (tmp_path / "inner.sbatch").write_text("#!/bin/bash\nsrun --hosts=off touch MARK\n")
    r = clusterlab(*argv, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "MARK").exists()


@pytest.fixture
def nobody():
    """``(prefix, work directory)`` to run clusterlab as uid 65534: a world-readable copy of the
    package and its pure dependencies, run by a system interpreter that uid may execute (this
    interpreter may live under a 0700 home), in a directory that uid may write."""
    import importlib.util
    import shutil
    import tempfile

    if not LINUX or os.geteuid() != 0:
        pytest.skip("drops to uid 65534 with setpriv, which needs root")
    where = Path(tempfile.mkdtemp(prefix="clusterlab-slurm-hosts-"))
    try:
        kit = where / "kit"
        shutil.copytree(ROOT / "src" / "clusterlab", kit / "clusterlab", ignore=shutil.ignore_patterns("__pycache__"))
        for module in ("hostlist", "psutil"):
            origin = Path(importlib.util.find_spec(module).origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, kit / module, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, kit)
        (where / "work").mkdir()
        for path in [where, *where.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o755)
        prefix = [*NOBODY, "env", f"PYTHONPATH={kit}"]
        for python in ("/usr/bin/python3", sys.executable):
            check = [*prefix, "sh", "-c", '"$0" -c "import clusterlab.slurm.cli, psutil"', python]
            if subprocess.run(check, capture_output=True, timeout=30, cwd="/").returncode == 0:
                yield [*prefix, python], where / "work"
                return
        pytest.skip("no interpreter that uid 65534 may run with this package")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def as_nobody(nobody, *args) -> subprocess.CompletedProcess:
    prefix, work = nobody
    with subprocess.Popen([*prefix, "-m", "clusterlab", *args], cwd=work, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def test_unprivileged_srun_and_sbatch_use_a_user_namespace_or_say_why_not(nobody):
    (nobody[1] / "job.sbatch").write_text("#!/bin/bash\n#SBATCH -N2\nsrun hostname\n")
    r = as_nobody(nobody, "srun", "-N2", "-n2", "hostname")
    assert r.returncode == 0, r.stderr
    if r.stderr:  # a kernel that refuses user namespaces: the fallback and its one line
        assert r.stderr.startswith("srun: hosts: off, ") and len(r.stderr.splitlines()) == 1
        return
    assert sorted(r.stdout.split()) == ["node001", "node002"]
    b = as_nobody(nobody, "sbatch", "job.sbatch")  # srun inside the job enters the other node
    assert b.returncode == 0 and b.stderr == "", b.stderr
    assert sorted(b.stdout.splitlines()[1:]) == ["node001", "node002"]
    assert leftovers(r.pid) == leftovers(b.pid) == []


def test_refused_namespaces_fall_back_with_one_line_on_stderr(nobody):
    prefix, work = nobody
    (work / "refuse.py").write_text(REFUSE)
    (work / "job.sbatch").write_text("#!/bin/bash\n#SBATCH -N2\nsrun hostname\n")
    # as root: a private user namespace whose own user.max_user_namespaces is 0, then uid 65534 in it
    refused = ([sys.executable, str(work / "refuse.py"), "/usr/bin/env", *prefix[len(NOBODY) + 1:]], work)
    note = ("hosts: off, the kernel allows no more user namespaces (unshare: No space left on device): node names "
            "such as node001 do not resolve inside this job; run as root, or allow user namespaces (sysctl "
            "user.max_user_namespaces), or connect to 127.0.0.1")
    b = as_nobody(refused, "sbatch", "job.sbatch")
    assert b.returncode == 0, b.stderr
    assert b.stderr.splitlines() == [f"sbatch: {note}"]
    assert b.stdout.splitlines()[1:] == [socket.gethostname()] * 2  # today's behaviour, and it still runs
    forced = as_nobody(refused, "srun", "--hosts=namespaces", "-N2", "hostname")
    assert forced.returncode == 2 and forced.stdout == ""
    assert forced.stderr.startswith("clusterlab srun: error: --hosts=namespaces: the kernel allows no more user "
                                    "namespaces") and len(forced.stderr.splitlines()) == 1


# ------------------------------------------------------------------ nothing left behind
def _keepers_of(launcher: psutil.Process) -> list[psutil.Process]:
    """The launcher's children that hold a node (a keeper: a fork of it, in another UTS namespace)."""
    mine = os.stat("/proc/self/ns/uts").st_ino
    found = []
    for child in launcher.children():
        try:
            if child.cmdline() == launcher.cmdline() and os.stat(f"/proc/{child.pid}/ns/uts").st_ino != mine:
                found.append(child)
        except OSError:
            continue
    return found


def _start(argv: list[str], cwd: Path, files: list[Path]) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Start a job that writes ``files`` once it runs; return it and its keepers."""
    proc = subprocess.Popen([sys.executable, "-m", "clusterlab", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not all(f.exists() and f.read_text().strip() for f in files):  # the job is running
        assert time.monotonic() < deadline and proc.poll() is None, "the job did not start within 30 s"
        time.sleep(0.02)
    keepers = _keepers_of(psutil.Process(proc.pid))
    assert len(keepers) == 2 and len(leftovers(proc.pid)) >= 2  # while it runs, its nodes hold their /etc/hosts
    return proc, keepers


JOB = "#!/bin/bash\n#SBATCH -N2\necho $$ > batch.pid\nsrun bash -c 'echo $$ > task.$SLURM_PROCID.pid; exec sleep 300'\n"


@HOSTS
@pytest.mark.parametrize("how", ["SIGKILL sbatch", "Ctrl-C sbatch", "SIGKILL srun", "Ctrl-C srun"])
def test_nothing_left_behind_when_stopped(tmp_path, how):
    (tmp_path / "job.sbatch").write_text(JOB)
    files = [tmp_path / name for name in ("task.0.pid", "task.1.pid")]
    if "sbatch" in how:
        argv, files = ["sbatch", "job.sbatch"], [tmp_path / "batch.pid", *files]
    else:
        argv = ["srun", "-N2", "bash", "-c", "echo $$ > task.$SLURM_PROCID.pid; exec sleep 300"]
    proc, keepers = _start(argv, tmp_path, files)
    job = [psutil.Process(int(f.read_text())) for f in files]
    if how.startswith("SIGKILL"):
        proc.kill()
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
    proc.wait(timeout=30)
    _gone, alive = psutil.wait_procs(job, timeout=15)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    _wait_gone(proc.pid, keepers)


@HOSTS
def test_nothing_left_behind_after_a_crash(tmp_path):
    r = clusterlab("srun", "-N2", "-n4", "-K", "bash", "-c", "[ $SLURM_PROCID = 3 ] && kill -SEGV $$; exec sleep 60")
    # -K stops the others with SIGTERM; srun's status is 128 + the highest signal (15 > 11)
    assert r.returncode == 128 + signal.SIGTERM and "task 3: Segmentation fault" in r.stderr
    assert leftovers(r.pid) == []


# ------------------------------------------------------------------ torchrun without torch
def test_torchrun_stand_in_runs_clusterlab_launch(tmp_path):
    """Where torch is absent, the job's `torchrun` and `python -m torch.distributed.run` are clusterlab
    launch with the same (static) arguments, and say so on stderr."""
    values, _ = parse(["-N2"], "sbatch")
    job_dir = make_job_dir(allocate(values, 4242, str(tmp_path), "x"), torch=False)
    port = str(free_port())
    env = {**os.environ, "PATH": f"{job_dir}/bin:{os.environ['PATH']}"}
    common = ["--nnodes", "2", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
              str(ROOT / "examples" / "hello_ranks.py")]
    starts = [["torchrun", "--node_rank", "0", *common], ["python", "-m", "torch.distributed.run", "--node-rank", "1",
                                                           *common]]
    procs = [subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in starts]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for _out, err in outs:
        assert err.splitlines()[0] == ("torchrun: torch is not installed here; running `clusterlab launch` with the "
                                       "same arguments instead (pip install torch==2.13.0 for the real torchrun)")
    ranks = sorted(int(line.split("global_rank=")[1].split()[0]) for out, _ in outs for line in out.splitlines()
                   if "global_rank=" in line)
    assert ranks == [0, 1, 2, 3]
    assert "python -m torch.distributed.run" not in Path(job_dir, "bin", "python").read_text().split("\n")[-2]
    import shutil

    shutil.rmtree(job_dir)


GONE = """#!/bin/bash
#SBATCH -N2
keeper=$(echo "$CLUSTERLAB_HOST_KEEPERS" | sed 's/.*node002=\\([0-9]*\\).*/\\1/')
kill -9 "$keeper"
while [ -e "/proc/$keeper/ns/uts" ]; do sleep 0.01; done  # gone (a zombie has no namespaces left)
srun -N2 hostname
echo "srun exit $?"
"""


@HOSTS
def test_a_node_that_cannot_be_entered_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "job.sbatch").write_text(GONE)
    r = clusterlab("sbatch", "job.sbatch", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert r.stdout.splitlines()[1:] == ["srun exit 1"]
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("srun: error: the keeper of node002 (pid ")
    assert r.stderr.rstrip().endswith("is gone: the node can no longer be entered")
    assert leftovers(r.pid) == []
