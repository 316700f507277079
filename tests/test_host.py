"""Simulated nodes are hosts (clusterlab.host): names, addresses, namespaces, and no leftovers.

References: the address scheme against :mod:`ipaddress`; inside a node, glibc's own
resolver (``getent hosts`` = gethostbyname, ``getent ahosts`` = C getaddrinfo),
``hostname``/``hostname -i`` (net-tools), Python's :mod:`socket` and torch's c10d
store (the real engine) must all give the node's name and the scheme's addresses.
Both ways in (a forked agent; keepers + nsenter) run as root and as an unprivileged
user (``setpriv --reuid 65534``), and with user namespaces refused by the kernel
(``user.max_user_namespaces=0`` inside a private user namespace: the machine's own
sysctl is never touched). The driver is ``tests/host_driver.py``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, free_port

from clusterlab import host
from clusterlab.errors import UsageError
from clusterlab.keepers import KEEPERS_ENV, Keepers

LINUX = sys.platform.startswith("linux")
ROOT_ONLY = pytest.mark.skipif(not LINUX or os.geteuid() != 0, reason="the privileged path needs root on Linux")
NODES = ("node001", "node002")
EXPECTED = {"node001": "127.0.1.1", "node002": "127.0.1.2"}
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


# ------------------------------------------------------------------ pure parts
def test_node_address_scheme():
    assert [host.node_address(k) for k in (1, 2, 254, 255, 256, 508, 509)] == [
        "127.0.1.1", "127.0.1.2", "127.0.1.254", "127.0.2.1", "127.0.2.2", "127.0.2.254", "127.0.3.1"]
    addresses = [ipaddress.IPv4Address(host.node_address(k)) for k in range(1, 1000)]
    assert len(set(addresses)) == 999  # up to 999 nodes (the simulated cluster's node[001-999])
    assert all(a.is_loopback and a != ipaddress.IPv4Address("127.0.0.1") for a in addresses)
    assert all(0 < a.packed[3] < 255 for a in addresses)


@pytest.mark.parametrize("bad", [0, -1, 254 * 254 + 1, "3", 2.0])
def test_node_address_rejects(bad):
    with pytest.raises(UsageError, match=f"node number {bad!r} has no simulated address"):
        host.node_address(bad)


MACHINE = """127.0.0.1\tlocalhost
127.0.1.1\tbuildbox.example.org buildbox
# a comment that stays
10.0.0.7 node002 storage   # names a node of the job, and another host
10.0.0.8 node001
::1 localhost ip6-localhost ip6-loopback
"""


def _parse(text: str) -> dict[str, list[str]]:
    """What glibc's files backend (with ``multi on``) would answer for each name."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            found.setdefault(name, []).append(fields[0])
    return found


def test_hosts_text_maps_every_node_and_keeps_the_machine():
    text = host.hosts_text(["node001", "node002", "gpu-a.cluster"], MACHINE)
    found = _parse(text)
    assert found["node001"] == ["127.0.1.1"] and found["node002"] == ["127.0.1.2"]
    assert found["gpu-a.cluster"] == ["127.0.1.3"]
    assert found["localhost"] == ["127.0.0.1", "::1"] and found["buildbox"] == ["127.0.1.1"]
    assert found["storage"] == ["10.0.0.7"]  # the other name on a shadowed line survives
    assert "# a comment that stays" in text and "# (a node of this job now) 10.0.0.8 node001" in text
    # the nodes come first: a reverse lookup of 127.0.1.1 finds node001, not the machine's name
    assert text.index("127.0.1.1\tnode001") < text.index("buildbox")


@pytest.mark.parametrize("names, needle", [
    (["node 1"], "'node 1' cannot be a host name"),
    (["node001", ""], "'' cannot be a host name"),
    (["a" * 65], "cannot be a host name"),
    (["-node"], "'-node' cannot be a host name"),
    (["node001", "node001"], "['node001'] appear twice"),
    ([], "at least one node name"),
])
def test_hosts_text_rejects_bad_names(names, needle):
    with pytest.raises(UsageError) as err:
        host.hosts_text(names, "")
    assert needle in str(err.value)


def test_mode_is_checked_and_off_changes_nothing():
    with pytest.raises(UsageError, match=r"--hosts='on' is not one of auto, namespaces, off"):
        host.plan(NODES, "on")
    hosts = host.plan(NODES, "off")
    assert (hosts.via, hosts.note, str(hosts)) == ("off", "", "hosts: off")
    keepers = Keepers.start(hosts)  # no process at all
    assert keepers.enter_argv(1) == [] and keepers.pids == ()
    keepers.close()


def test_keepers_environ_round_trip():
    keepers = Keepers(NODES, "userns", (101, 102), (4026531001, 4026531002), 4026531000)
    again = Keepers.from_environ(keepers.environ())
    assert (again.names, again.via, again.pids, again.inodes, again.userns) == (
        NODES, "userns", (101, 102), (4026531001, 4026531002), 4026531000)
    assert Keepers.from_environ({}) is None
    with pytest.raises(host.HostsError, match="is malformed"):
        Keepers.from_environ({KEEPERS_ENV: "root;1;node001=12"})


# ------------------------------------------------------------------ real processes
# What a process inside a node reports, as one JSON line: every resolver's answer.
PROBE = r"""
import ctypes, errno, json, os, socket, subprocess, sys
names = sys.argv[1:]
def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout
libc = ctypes.CDLL(None)
sig = ctypes.c_int()
libc.prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
try:
    open("/etc/hosts", "a").close()
    hosts_write = "allowed"
except OSError as exc:
    hosts_write = errno.errorcode[exc.errno]
print(json.dumps({
    "hostname": run("hostname").strip(), "hostname_i": run("hostname", "-i").strip(),
    "python": socket.gethostname(), "fqdn": socket.getfqdn(),
    "getent": {n: run("getent", "hosts", n).split()[:1] for n in names},
    "ahosts": {n: sorted({l.split()[0] for l in run("getent", "ahosts", n).splitlines()}) for n in names},
    "getaddrinfo": {n: sorted({a[4][0] for a in socket.getaddrinfo(n, 80, type=socket.SOCK_STREAM)}) for n in names},
    "reverse": socket.gethostbyaddr("127.0.1.1")[0],
    "uid": os.getuid(), "cwd": os.getcwd(), "pdeathsig": sig.value, "hosts_write": hosts_write,
    "net": os.stat("/proc/self/ns/net").st_ino,
}))
"""


@pytest.fixture(scope="module")
def kit():
    """The driver, the package and the probe in a directory every uid can read (/root may be 0700)."""
    where = Path(tempfile.mkdtemp(prefix="clusterlab-host-"))
    try:
        shutil.copytree(ROOT / "src" / "clusterlab", where / "src" / "clusterlab",
                        ignore=shutil.ignore_patterns("__pycache__"))
        (where / "tests").mkdir()
        shutil.copy(ROOT / "tests" / "host_driver.py", where / "tests")
        (where / "probe.py").write_text(PROBE)
        (where / "a dir with 'quotes' and spaces").mkdir()
        for path in [where, *where.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield where
    finally:
        shutil.rmtree(where)


def _python_for(prefix: list[str]) -> str | None:
    """An interpreter that ``prefix`` (an unprivileged uid) may run: the venv's, or the system's."""
    for python in (sys.executable, "/usr/bin/python3"):
        check = 'test -x "$0" && exec "$0" -c "import sys; assert sys.version_info >= (3, 10)"'
        if subprocess.run([*prefix, "sh", "-c", check, python], capture_output=True, timeout=30).returncode == 0:
            return python
    return None


@pytest.fixture(params=["root", "user"])
def who(request):
    """Run the driver as root, or as an unprivileged user (setpriv when the tests run as root)."""
    if not LINUX:
        pytest.skip("namespaces are Linux-only")
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the privileged path needs root")
        return [], sys.executable, True
    prefix = NOBODY if os.geteuid() == 0 else []
    python = _python_for(prefix)
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    return prefix, python, False


def driver(kit, who, *args, timeout=60, env=None) -> subprocess.CompletedProcess:
    """Run the driver to the end; ``.pid`` is its pid, the tag of the job's mounts."""
    prefix, python = who[:2]
    with subprocess.Popen([*prefix, python, str(kit / "tests" / "host_driver.py"), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=kit, env=env) as proc:
        out, err = proc.communicate(timeout=timeout)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def by_node(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        name, _, rest = line.partition("] ")
        out.setdefault(name.lstrip("["), []).append(rest)
    return out


def leftovers(launcher: int) -> list[str]:
    """Every process that still has a hosts file of the job of ``launcher`` mounted."""
    found = []
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            if f" clusterlab-hosts-{launcher} " in mountinfo.read_text():
                found.append(mountinfo.parent.name)
        except OSError:
            continue
    return found


def check_node(report: dict, name: str, cwd: str) -> None:
    assert report["hostname"] == report["python"] == report["fqdn"] == name
    assert report["hostname_i"] == EXPECTED[name]
    for resolver in ("getent", "ahosts", "getaddrinfo"):
        assert report[resolver] == {n: [a] for n, a in EXPECTED.items()}, resolver
    assert report["reverse"] == "node001"
    assert report["cwd"] == cwd and report["pdeathsig"] == signal.SIGKILL
    assert report["hosts_write"] in ("EROFS", "EACCES")
    assert report["net"] == os.stat("/proc/self/ns/net").st_ino  # the network is shared, by design


@pytest.mark.parametrize("way", ["fork", "keepers"])
def test_nodes_are_hosts(kit, who, way):
    cwd = str(kit / "a dir with 'quotes' and spaces")
    done = driver(kit, who, way, "--cwd", cwd, *NODES, "--", who[1], str(kit / "probe.py"), *NODES)
    assert done.returncode == 0, done.stderr
    mode = done.stderr.splitlines()[0]
    if mode == "hosts: off":  # a kernel that refuses user namespaces: the fallback and its one line
        assert not who[2] and "node names such as node001 do not resolve" in done.stderr
        return
    assert mode == "hosts: namespaces (as root)" if who[2] else "hosts: namespaces (in a user namespace)"
    out = by_node(done.stdout)
    assert sorted(out) == list(NODES) and all(len(lines) == 1 for lines in out.values()), done.stdout + done.stderr
    reports = {n: json.loads(lines[0]) for n, lines in out.items()}
    for name in NODES:
        check_node(reports[name], name, cwd)
    # the user stays the user; keepers map it to root in their user namespace (see Keepers)
    uid = 0 if who[2] or way == "keepers" else os.geteuid() or 65534
    assert {r["uid"] for r in reports.values()} == {uid}
    assert leftovers(done.pid) == []


TCP = r"""
import errno, os, socket, sys, time
me, port, wild = int(os.environ["NODE_INDEX"]), int(sys.argv[1]), int(sys.argv[2])
mine = socket.gethostbyname(socket.gethostname())
if me == 0:
    server = socket.create_server((mine, port))       # node001's own address
    hold = socket.create_server(("0.0.0.0", wild))     # and a wildcard bind
    server.settimeout(30)
    conn, peer = server.accept()
    conn.sendall(("hello from " + socket.gethostname() + " to " + conn.recv(100).decode()).encode())
    conn.recv(100)                                      # node002 is done with the wildcard port: exit
    print("served", peer[0])
else:
    same = socket.create_server((mine, port))          # the same port on node002's address: no collision
    print("bound", mine, port)
    deadline = time.monotonic() + 30
    while True:                                         # wait for node001's server to listen
        try:
            client = socket.create_connection(("node001", port), timeout=5)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    client.sendall(socket.gethostname().encode())
    print(client.recv(100).decode())
    try:
        socket.create_server(("0.0.0.0", wild))
        print("wildcard: no collision")
    except OSError as exc:
        print("wildcard:", errno.errorcode[exc.errno])
    client.sendall(b"bye")
"""


@ROOT_ONLY
def test_tcp_by_name_and_own_addresses(kit):
    (kit / "tcp.py").write_text(TCP)
    done = driver(kit, ([], sys.executable, True), "fork", *NODES, "--", sys.executable, str(kit / "tcp.py"),
                  str(free_port()), str(free_port()))
    assert done.returncode == 0, done.stderr
    out = by_node(done.stdout)
    assert sorted(out) == list(NODES), done.stdout + done.stderr
    assert out["node001"] == ["served 127.0.0.1"]  # a connection leaves from 127.0.0.1 (shared network)
    assert out["node002"][0].startswith("bound 127.0.1.2 ")
    assert out["node002"][1:] == ["hello from node001 to node002", "wildcard: EADDRINUSE"]


NESTED = r"""
import os, subprocess, sys
from clusterlab.host import HostsError
from clusterlab.keepers import Keepers
keepers = Keepers.from_environ()
other = 1 - int(os.environ["NODE_INDEX"])
if sys.argv[1:] == ["kill"] and other == 1:
    import select
    dying = os.pidfd_open(keepers.pids[other])
    os.kill(keepers.pids[other], 9)
    select.select([dying], [], [], 30)  # readable once it has exited
try:
    argv = keepers.enter_argv(other, "/") + ["sh", "-c", "echo on $(hostname) as $(id -u)"]
    print(subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip())
except HostsError as exc:
    print("HostsError:", exc)
"""


@pytest.mark.parametrize("self_map", [False, True])
def test_enter_another_node_from_inside(kit, who, self_map):
    """srun in a batch script: a process on node001 starts one on node002."""
    (kit / "nested.py").write_text(NESTED)
    flags = ["--self-map"] if self_map else []
    done = driver(kit, who, "keepers", *flags, *NODES, "--", "env", f"PYTHONPATH={kit / 'src'}",
                  who[1], str(kit / "nested.py"))
    assert done.returncode == 0, done.stderr
    if done.stderr.startswith("hosts: off"):
        return
    out = by_node(done.stdout)
    if self_map and not who[2]:
        assert out["node001"] == ["HostsError: cannot enter node002 from inside the job: its user namespace maps "
                                  "you to yourself, without the capability to enter another node (start the "
                                  "keepers nestable)"]
    else:
        assert (out["node001"], out["node002"]) == (["on node002 as 0"], ["on node001 as 0"])
    assert leftovers(done.pid) == []


@ROOT_ONLY
def test_a_dead_keeper_is_named(kit):
    (kit / "nested.py").write_text(NESTED)
    done = driver(kit, ([], sys.executable, True), "keepers", *NODES, "--", "env", f"PYTHONPATH={kit / 'src'}",
                  sys.executable, str(kit / "nested.py"), "kill")
    assert done.returncode == 0, done.stderr
    assert by_node(done.stdout)["node001"][0].startswith("HostsError: the keeper of node002 (pid ")
    assert leftovers(done.pid) == []


def _hold(kit, who) -> tuple[subprocess.Popen, list[psutil.Process]]:
    prefix, python = who[:2]
    proc = subprocess.Popen([*prefix, python, str(kit / "tests" / "host_driver.py"), "keepers", "--hold", *NODES,
                             "--", "true"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=kit, start_new_session=True)
    line = proc.stdout.readline().split()  # the driver prints KEEPERS once every node is set up
    if not line:
        proc.wait(30)
        if "hosts: off" in proc.stderr.read():
            pytest.skip("user namespaces are refused here (the fallback is tested on its own)")
        raise AssertionError("the driver did not start its keepers")
    assert line[0] == "KEEPERS", line
    pids = [int(p) for p in line[1:line.index("INODES")]]
    return proc, [psutil.Process(p) for p in pids]


def _namespaces_gone(launcher: int, keepers: list[psutil.Process]) -> None:
    """The keepers are gone and no process holds the job's mounts: its namespaces are freed.
    (Namespace inode numbers are reused by the kernel, so they cannot prove it.)"""
    _gone, alive = psutil.wait_procs(keepers, timeout=10)
    assert not alive, f"keepers still alive: {alive}"
    assert leftovers(launcher) == []


@pytest.mark.parametrize("how", ["SIGKILL the launcher", "Ctrl-C", "SIGKILL a keeper, then close"])
def test_nothing_left_behind(kit, who, how):
    proc, keepers = _hold(kit, who)
    assert len(leftovers(proc.pid)) >= 2  # while the job runs, its nodes hold their /etc/hosts
    if how == "SIGKILL the launcher":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "Ctrl-C":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the whole foreground group
    else:
        keepers[1].kill()  # then the driver reads EOF on stdin (communicate closes it) and closes the job
    proc.communicate(timeout=30)
    assert proc.returncode == {"SIGKILL the launcher": -9, "Ctrl-C": 130}.get(how, 0)
    _namespaces_gone(proc.pid, keepers)


REFUSE = r"""
import os, sys
# As root: a private user namespace whose own user.max_user_namespaces is 0, then uid 65534 in it.
r, w = os.pipe()
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:
        os._exit(3)
    os.write(w, b"u")
    os.read(go_r, 1)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    os.execv(sys.argv[1], sys.argv[1:])
os.read(r, 1)
for name in ("uid_map", "gid_map"):
    with open(f"/proc/{pid}/{name}", "w") as f:
        f.write("0 0 4294967295")
os.write(go_w, b"g")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@ROOT_ONLY
@pytest.mark.parametrize("way", ["fork", "keepers"])
def test_refused_namespaces_fall_back_with_one_line(kit, way):
    (kit / "refuse.py").write_text(REFUSE)
    python = _python_for(NOBODY)
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    refused = ([sys.executable, str(kit / "refuse.py")], python, False)
    auto = driver(kit, refused, way, *NODES, "--", "hostname")
    assert auto.returncode == 0, auto.stderr
    assert auto.stderr.splitlines() == [
        "hosts: off",
        "hosts: off, the kernel allows no more user namespaces (unshare: No space left on device): node names "
        "such as node001 do not resolve inside this job; run as root, or allow user namespaces (sysctl "
        "user.max_user_namespaces), or connect to 127.0.0.1"]
    assert by_node(auto.stdout) == {n: [socket.gethostname()] for n in NODES}  # today's behaviour
    forced = driver(kit, refused, way, "--mode", "namespaces", *NODES, "--", "hostname")
    assert forced.returncode == 2 and forced.stdout == ""
    assert forced.stderr == ("host_driver: error: --hosts=namespaces: the kernel allows no more user namespaces "
                             "(unshare: No space left on device); use --hosts=auto to run without them\n")
    assert os.path.exists("/proc/sys/user/max_user_namespaces") and int(
        Path("/proc/sys/user/max_user_namespaces").read_text()) > 0  # the machine's own limit is untouched


GLOO = r"""
import os
from datetime import timedelta
import torch, torch.distributed as dist
rank = int(os.environ["NODE_INDEX"])
dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))  # env://, MASTER_ADDR=node001
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"rank {rank} on {os.uname().nodename}: sum {t.item():g}")
dist.destroy_process_group()
"""


@ROOT_ONLY
def test_torch_gloo_meets_at_a_node_name(kit):
    """The issue's failure: MASTER_ADDR=node001 and init_process_group('gloo') from two nodes."""
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    (kit / "gloo.py").write_text(GLOO)
    env = dict(os.environ, MASTER_ADDR="node001", MASTER_PORT=str(free_port()))
    done = driver(kit, ([], sys.executable, True), "fork", *NODES, "--", sys.executable, str(kit / "gloo.py"),
                  timeout=110, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = by_node(done.stdout)
    assert out["node001"][-1] == "rank 0 on node001: sum 3" and out["node002"][-1] == "rank 1 on node002: sum 3"
    assert leftovers(done.pid) == []
