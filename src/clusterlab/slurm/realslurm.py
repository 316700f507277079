"""A real Slurm cluster on one machine: munged, slurmctld and four slurmd, all in a temporary directory.

clusterlab's Slurm is a simulation; this module starts the real thing next to it,
from Debian's ``slurm-wlm`` and ``munge`` packages, so that the two can be compared
(``tests/realslurm``) and so that a reader can try real ``srun`` on a laptop::

    sudo python -m clusterlab.slurm.realslurm          # prints `export SLURM_CONF=...`; Ctrl-C stops it

What runs, and why it needs nothing from ``/etc``:

* **munged** with its own key, socket, pid and log files in the directory; Slurm
  finds the socket through ``AuthInfo=socket=...`` in the generated slurm.conf.
* **slurmctld**, the controller, on a free port of 127.0.0.1.
* **one slurmd per node** (``node001`` ... ``node004``), each in a UTS namespace of
  its own (``hostname`` says ``node002`` there, so slurmd finds its ``NodeName``) and a
  mount namespace of its own, where a private ``hosts`` file listing every node is
  bind-mounted over ``/etc/hosts`` (clusterlab's scheme: node k at ``127.0.1.k``, as in a
  simulated job): the machine's own file is never touched. All nodes share the host
  network; slurmctld reaches every slurmd at 127.0.0.1, each on a free port of its own.
* the configuration clusterlab's simulation follows: ``select/cons_tres`` with
  ``CR_Core``, 64 CPUs and 8 GPUs per node (``gres/gpu``, backed by character
  devices made with ``mknod``, major 195, as ``/dev/nvidia0`` is: slurmd ignores a
  plain file and then never sets ``CUDA_VISIBLE_DEVICES``), ``proctrack/linuxproc``
  and ``task/none`` (no cgroups), one partition ``debug`` holding every node.
  ``SlurmdParameters=config_overrides`` lets a 2-core machine claim 64 CPUs.

Clients (``srun``, ``sbatch``, ``scontrol``) find the cluster through ``SLURM_CONF``:
:attr:`Cluster.env` holds it. :meth:`Cluster.stop` stops every daemon by its pid
(slurmd first, so its job steps end with it) and removes nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import config, hosts

#: The packages' daemons and clients this module needs, by the package that ships them.
BINARIES = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "scontrol": "slurm-wlm", "srun": "slurm-wlm",
            "sbatch": "slurm-wlm", "munged": "munge", "unshare": "util-linux"}
NODES = ("node001", "node002", "node003", "node004")
GPUS_PER_NODE = hosts.GPUS_PER_NODE
#: How long the cluster may take to come up (all nodes idle) before start() gives up.
START_TIMEOUT = 30.0


def unavailable() -> str | None:
    """Why a real cluster cannot start here (one line naming the fix), or None if it can."""
    if not sys.platform.startswith("linux"):
        return "a real Slurm cluster needs Linux (namespaces, mknod)"
    if os.geteuid() != 0:
        return "a real Slurm cluster needs root (slurmd, mknod and namespaces); run as root"
    missing = sorted({pkg for exe, pkg in BINARIES.items() if not _which(exe)})
    if missing:
        return f"missing package(s) {', '.join(missing)}; install them: apt-get install {' '.join(missing)}"
    return None


def _which(exe: str) -> str | None:
    return shutil.which(exe, path=os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin")


def _program(exe: str) -> str:
    """The path of ``exe``, which :func:`unavailable` has checked is installed."""
    path = _which(exe)
    if path is None:
        raise RuntimeError(f"{exe} disappeared after the check; install {BINARIES[exe]}")
    return path


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that nothing listens on right now."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def slurm_conf(root: str, ctld_port: int, node_ports: dict[str, int], munge_socket: str) -> str:
    """The cluster's slurm.conf (slurm.conf(5)): the simulation's plugins and node shape
    (:mod:`clusterlab.slurm.config`), with every path under ``root`` and free ports."""
    host = socket.gethostname().split(".")[0]
    lines = [
        *config.plugin_lines(),
        f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={ctld_port}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log", f"SlurmdLogFile={root}/log/slurmd-%n.log",
        f"PlugStackConfig={root}/plugstack.conf",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "SchedulerType=sched/builtin", "ReturnToService=2",
        "SlurmdParameters=config_overrides",  # a 2-core machine may claim 64 CPUs per node
        "MinJobAge=2", "SlurmctldTimeout=30", "SlurmdTimeout=30", "MessageTimeout=10", "InactiveLimit=0",
        "FirstJobId=700001",  # job ids that cannot be mistaken for task ids when outputs are compared
    ]
    for name, port in node_ports.items():
        lines.append(config.node_line(name, f"NodeHostname={name} NodeAddr=127.0.0.1 Port={port} "))
    lines.append(f"PartitionName={config.PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


@dataclass
class Cluster:
    """A running real cluster: its directory, its client environment, and its daemons' pids."""

    root: str
    conf: str
    nodes: tuple[str, ...] = NODES
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> process, in start order

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.daemons.items()}

    @property
    def env(self) -> dict[str, str]:
        """What a client needs on top of its environment: ``SLURM_CONF``."""
        return {"SLURM_CONF": self.conf}

    def run(self, *argv: str, timeout: float = 30, env: dict[str, str] | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client (``scontrol``, ``srun``...) against this cluster, output captured."""
        full = {**os.environ, **(env or {}), **self.env}
        return subprocess.run(list(argv), env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    def log(self, daemon: str) -> str:
        """A daemon's log (``slurmctld``, ``slurmd-node001``, ``munged``), for error messages."""
        try:
            with open(os.path.join(self.root, "log", f"{daemon}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop every daemon by pid (SIGTERM, then SIGKILL after 5 s): slurmds, slurmctld, munged.

        A slurmd's job steps run under slurmstepd processes slurmd started in its namespaces;
        they are stopped with their step (scancel) before the daemons, and any still alive
        after that are killed by pid too (found by their parent: init or this process).
        """
        ctld = self.daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            self.run("scancel", "--full", "--user", "root", timeout=10)
        for name in reversed(list(self.daemons)):
            _stop(self.daemons[name])
        for pid in _stepds(self.root):
            _stop_pid(pid)
        self.daemons.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM a daemon we started, wait up to ``grace`` seconds, SIGKILL it; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid``, wait up to ``grace`` seconds, SIGKILL it; reap it if it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if _reaped_or_gone(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while not _reaped_or_gone(pid):
        time.sleep(0.05)


def _reaped_or_gone(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:  # not our child: gone once kill(0) fails, or a zombie of someone else
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True


def _stepds(root: str) -> list[int]:
    """Pids of slurmstepd processes of this cluster (their environment names our SLURM_CONF)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(b"slurmstepd"):
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"SLURM_CONF={root}/slurm.conf".encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _spawn(argv: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(what: str, check, timeout: float, cluster: Cluster, logs: tuple[str, ...]) -> None:
    """Poll ``check()`` until it is true; after ``timeout`` s raise with ``what`` and the daemons' logs."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            tails = "\n".join(f"--- {name}.log ---\n" + "\n".join(cluster.log(name).splitlines()[-15:])
                              for name in logs)
            raise RuntimeError(f"real Slurm: {what} not reached within {timeout:g}s\n{tails}")
        time.sleep(0.05)


def start(root: str, nodes: tuple[str, ...] = NODES) -> Cluster:
    """Start munged, slurmctld and one slurmd per node under ``root`` (an empty directory); wait
    until every node is idle. On failure every daemon started so far is stopped again."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    root = os.path.abspath(root)
    for sub in ("state", "log", "spool", "dev", "munge"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.chmod(os.path.join(root, "munge"), 0o700)
    # munge's key: 1 KiB of random bytes, readable by its owner only (munged checks).
    key = os.path.join(root, "munge", "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    sock = os.path.join(root, "munge", "munge.socket")
    # Fake GPUs: character devices with NVIDIA's major number 195, minor = GPU index.
    gpus = []
    for i in range(GPUS_PER_NODE):
        path = os.path.join(root, "dev", f"nvidia{i}")
        if not os.path.exists(path):
            os.mknod(path, 0o666 | 0o020000, os.makedev(195, i))
        gpus.append(path)
    ctld_port, *node_ports = free_ports(1 + len(nodes))
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(slurm_conf(root, ctld_port, dict(zip(nodes, node_ports)), sock))
    with open(os.path.join(root, "gres.conf"), "w") as f:
        f.write(f"AutoDetect=off\nNodeName={nodes[0][:4]}[{nodes[0][4:]}-{nodes[-1][4:]}] Name=gpu "
                f"File={root}/dev/nvidia[0-{GPUS_PER_NODE - 1}]\n")
    with open(os.path.join(root, "plugstack.conf"), "w") as f:
        f.write("# no SPANK plugins\n")
    hosts = os.path.join(root, "hosts")
    with open(hosts, "w") as f:  # the simulation's scheme (clusterlab.host): node k at 127.0.1.k
        f.write(_hosts_file(nodes))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "CLUSTERLAB_TEST_TAG"))}
    env["SLURM_CONF"] = conf
    env["PATH"] = env.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    cluster = Cluster(root, conf, tuple(nodes))
    try:
        log = os.path.join(root, "log")
        munged = _spawn([_program("munged"), "-F", "-f", f"--key-file={key}", f"--socket={sock}",
                         f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed",
                         f"--log-file={log}/munged.log"], env, f"{log}/munged.out")
        cluster.daemons["munged"] = munged
        _wait("munged's socket", lambda: os.path.exists(sock), 10, cluster, ("munged",))
        ctld = _spawn([_program("slurmctld"), "-D", "-i", "-f", conf], env, f"{log}/slurmctld.out")
        cluster.daemons["slurmctld"] = ctld
        for name in nodes:
            # A UTS namespace (hostname = node name) and a private mount namespace (our hosts file
            # over /etc/hosts); unshare execs the shell, which execs slurmd: one pid all along.
            script = (f'hostname {name} && mount --bind "$0" /etc/hosts && '
                      f'exec "$1" -D -N {name} -f "$2"')
            proc = _spawn([_program("unshare"), "--uts", "--mount", "--propagation", "private", "/bin/sh", "-c",
                           script, hosts, _program("slurmd"), conf], env, f"{log}/slurmd-{name}.out")
            cluster.daemons[f"slurmd-{name}"] = proc
        _wait("every node idle", lambda: _all_idle(cluster), START_TIMEOUT, cluster,
              ("slurmctld", *(f"slurmd-{n}" for n in nodes)))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _hosts_file(nodes: tuple[str, ...]) -> str:
    """The nodes' ``/etc/hosts``: clusterlab's own (:func:`clusterlab.host.hosts_text`, node k at
    ``127.0.1.k``, then the machine's lines), so a task sees the same addresses on both sides;
    this machine's name at 127.0.0.1, where slurmctld listens."""
    from .. import host

    try:
        with open("/etc/hosts") as f:
            machine = f.read()
    except OSError:
        machine = "127.0.0.1\tlocalhost\n"
    return host.hosts_text(list(nodes), machine) + f"127.0.0.1\t{socket.gethostname()}\n"


def _all_idle(cluster: Cluster) -> bool:
    r = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", timeout=10)
    states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
    return r.returncode == 0 and all(states.get(n) == "idle" for n in cluster.nodes)


def main(argv: list[str] | None = None) -> int:
    """``python -m clusterlab.slurm.realslurm [DIR]``: start a cluster, print how to use it, wait for Ctrl-C."""
    import tempfile

    argv = sys.argv[1:] if argv is None else argv
    reason = unavailable()
    if reason:
        print(f"realslurm: {reason}", file=sys.stderr)
        return 2
    root = argv[0] if argv else tempfile.mkdtemp(prefix="realslurm-")
    t0 = time.monotonic()
    cluster = start(root)
    print(f"real Slurm up in {time.monotonic() - t0:.1f}s: nodes {','.join(cluster.nodes)}\n"
          f"  export SLURM_CONF={cluster.conf}\n  srun -N2 -n4 -l hostname\nCtrl-C stops it.", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
