"""What makes a simulated node a host: its own name, and a job-wide ``/etc/hosts``.

On a cluster, ``hostname`` on node002 prints ``node002`` and ``node001`` resolves on
every node; scripts rely on it (``MASTER_ADDR=$(scontrol show hostnames ... | head -n 1)``,
then torch's c10d store calls ``getaddrinfo("node001")``). Here each simulated node gets
two Linux namespaces (namespaces(7)), shared by its agent, its tasks and all they start:

- a **UTS namespace**, whose host name is the node's name (sethostname(2));
- a **mount namespace**, with a job-private hosts file bind-mounted over ``/etc/hosts``:
  every node of the job at its own loopback address (:func:`node_address`: node k ->
  ``127.0.1.k``; Linux routes all of ``127.0.0.0/8`` to ``lo``, no set-up needed), then
  the machine's own lines. ``hostname -i``, ``getent hosts``, Python's :mod:`socket` and
  C's ``getaddrinfo()`` then agree inside a node.

**The network stays shared** (the simplest design, and open to every user): binds of
one port on two nodes' own addresses do not collide, two wildcard binds do, and a
connection leaves from ``127.0.0.1`` unless it binds its node's address first.

**How** (``--hosts auto | namespaces | off``): as root, ``unshare(CLONE_NEWUTS |
CLONE_NEWNS)``; as a normal user, the same inside a new user namespace (user_namespaces(7)),
whose creator holds every capability in it until it execs: enough to set the name and
mount the file; the workers then run as the user, with none. Where neither works,
``auto`` runs the job as before and says so in one line (:attr:`JobHosts.note`);
``namespaces`` refuses with that line.

Every mount is first made a *slave* (mount_namespaces(7)): the node sees the machine's
later mounts, the machine never sees the node's. The file lives on a tmpfs that exists
only inside the node, never on disk; namespaces and mounts vanish with the node's last
process. Two ways in: :func:`become` in a freshly forked child (``simulate``'s agent),
or :class:`Keepers`, one process per node holding its namespaces for the job, entered
per task through an ``nsenter(1)`` prefix (``srun``, the batch shell of ``sbatch``):
:mod:`clusterlab.keepers`. Keepers die with their launcher, even on SIGKILL.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from collections import namedtuple

from .errors import ClusterlabError, UsageError

MODES = ("auto", "namespaces", "off")
_MAX_NODES = 254 * 254
_WAIT = 10.0  # seconds a probe or a keeper may take to set a node up (it takes about a millisecond)

# <sched.h> and <sys/mount.h>
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWUSER = 0x00020000, 0x04000000, 0x10000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_SLAVE, _MNT_DETACH = 1, 32, 4096, 16384, 1 << 19, 2


class HostsError(ClusterlabError, RuntimeError):
    """A node's namespaces could not be set up or entered (not a user mistake)."""


# ------------------------------------------------------------------ the addresses and the file
def node_address(k: int) -> str:
    """The loopback address of the job's node number ``k`` (1-based, in the job's node order).

    ``1 -> 127.0.1.1`` ... ``254 -> 127.0.1.254``, then ``255 -> 127.0.2.1``: the last
    byte never is 0 or 255, which read as "network" and "broadcast" elsewhere.
    """
    if not (isinstance(k, int) and 1 <= k <= _MAX_NODES):
        raise UsageError(f"node number {k!r} has no simulated address; number nodes 1..{_MAX_NODES}")
    return f"127.0.{1 + (k - 1) // 254}.{1 + (k - 1) % 254}"


def hosts_text(names: list[str] | tuple[str, ...], machine: str) -> str:
    """The job's ``/etc/hosts``: each of ``names`` at its :func:`node_address`, then the
    lines of the machine's own ``/etc/hosts`` (``machine``), minus any name of the job
    they also list (glibc's ``multi on`` would otherwise give a node two addresses)."""
    names = tuple(names)
    if not names:
        raise UsageError("a job needs at least one node name, e.g. node001")
    for name in names:
        if not _is_host_name(name):
            raise UsageError(f"node name {name!r} cannot be a host name; use letters, digits and '-' "
                             "(at most 64 characters), e.g. node001")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise UsageError(f"node name(s) {twice} appear twice in the job; every node needs its own name")
    ours = set(names)
    lines = ["# The simulated nodes of this clusterlab job (clusterlab.host), each at its own address:"]
    lines += [f"{node_address(k)}\t{name}" for k, name in enumerate(names, 1)]
    lines.append("# This machine's /etc/hosts:")
    for line in machine.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and ours & set(fields[1:]):
            kept = [f for f in fields[1:] if f not in ours]
            line = f"{fields[0]}\t{' '.join(kept)}" if kept else f"# (a node of this job now) {line}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _is_host_name(name) -> bool:
    """RFC 1123 host names: dot-separated labels of letters, digits and inner '-'; sethostname(2)'s 64 bytes."""
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isascii():
        return False
    return all(label and label[0] != "-" and label[-1] != "-" and label.replace("-", "").isalnum()
               for label in name.split("."))


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else the one-line :class:`UsageError`."""
    if mode not in MODES:
        raise UsageError(f"--hosts={mode!r} is not one of {', '.join(MODES)}; use auto (the default)")
    return mode


# ------------------------------------------------------------------ the decision, once per job
class JobHosts(namedtuple("JobHosts", "names via text note tag", defaults=("", "0"))):
    """The hosts of one job: its node names, how they become hosts, and its /etc/hosts.

    ``via`` is ``"root"`` (plain namespaces), ``"userns"`` (inside a user namespace)
    or ``"off"``; ``note`` is the one line to print at job start when ``auto`` fell
    back to ``off``, else ``""``; ``tag`` (the launcher's pid) names the job's mounts,
    ``clusterlab-hosts-TAG`` in ``/proc/PID/mountinfo``. (A named tuple, not a dataclass: importing
    dataclasses costs every launch a few milliseconds, see docs/performance.md.)
    """

    __slots__ = ()

    def address(self, name: str) -> str:
        """The address ``name`` resolves to inside the job."""
        if name not in self.names:
            raise UsageError(f"{name!r} is not a node of this job ({', '.join(self.names[:4])}...)")
        return node_address(self.names.index(name) + 1)

    def __str__(self) -> str:
        """For the launcher's first line: ``hosts: namespaces (as root)``."""
        return {"root": "hosts: namespaces (as root)", "userns": "hosts: namespaces (in a user namespace)",
                "off": "hosts: off"}[self.via]


def plan(names: list[str] | tuple[str, ...], mode: str = "auto", etc_hosts: str = "/etc/hosts") -> JobHosts:
    """Decide how ``names`` become hosts, trying it in a forked child (about a millisecond).

    ``namespaces`` raises a one-line :class:`UsageError` where they are impossible;
    ``auto`` then falls back to ``off`` and sets :attr:`JobHosts.note`.
    """
    check_mode(mode)
    try:
        with open(etc_hosts) as f:
            machine = f.read()
    except OSError:
        machine = ""
    text, tag = hosts_text(names, machine), str(os.getpid())
    if mode == "off":
        return JobHosts(tuple(names), "off", text, "", tag)
    via, why = _probe(names[0], text, tag)
    if via:
        return JobHosts(tuple(names), via, text, "", tag)
    if mode == "namespaces":
        raise UsageError(f"--hosts=namespaces: {why}; use --hosts=auto to run without them")
    note = (f"hosts: off, {why}: node names such as {names[0]} do not resolve inside this job; run as root, "
            "or allow user namespaces (sysctl user.max_user_namespaces), or connect to 127.0.0.1")
    return JobHosts(tuple(names), "off", text, note, tag)


# ------------------------------------------------------------------ the kernel calls
_libc = None


def _load_libc():
    """libc through ctypes, loaded once, in the launcher: a forked child must not import."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
        _libc.get_errno = ctypes.get_errno  # type: ignore[attr-defined]
    return _libc


def _call(name: str, *args) -> None:
    """``libc.name(*args)``; an :class:`OSError` naming the call if it fails."""
    libc = _load_libc()
    if getattr(libc, name)(*args) != 0:
        err = libc.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())  # one write(2): the kernel takes an id map whole or not at all
    finally:
        os.close(fd)


def _become(name: str, text: str, via: str, tag: str, user_map: str = "self", join: int | None = None) -> None:
    """Make the calling (single-threaded, just forked) process node ``name``.

    ``via="userns"``: first a user namespace, new (the user mapped to itself, or to
    root with ``user_map="root"``) or, with ``join``, the one of process ``join``.
    """
    if via == "userns" and join is not None:
        fd = os.open(f"/proc/{join}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _call("setns", fd, _CLONE_NEWUSER)
        finally:
            os.close(fd)
    elif via == "userns":
        uid, gid = os.geteuid(), os.getegid()
        inner_uid, inner_gid = (0, 0) if user_map == "root" else (uid, gid)
        _call("unshare", _CLONE_NEWUSER)
        _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
        _write("/proc/self/uid_map", f"{inner_uid} {uid} 1")
        _write("/proc/self/gid_map", f"{inner_gid} {gid} 1")
    _call("unshare", _CLONE_NEWUTS | _CLONE_NEWNS)
    _call("mount", b"none", b"/", None, _MS_REC | _MS_SLAVE, None)  # nothing of the node reaches the machine
    _call("sethostname", name.encode(), len(name.encode()))
    # The file lives on a tmpfs mounted over /tmp for a moment, in this namespace only: once it
    # is bind-mounted over /etc/hosts the tmpfs is detached again, and nothing is on disk.
    _call("mount", f"clusterlab-hosts-{tag}".encode(), b"/tmp", b"tmpfs", 0, b"mode=755,size=4m")
    try:
        fd = os.open("/tmp/hosts", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        _call("mount", b"/tmp/hosts", b"/etc/hosts", None, _MS_BIND, None)
    finally:
        _call("umount2", b"/tmp", _MNT_DETACH)
    # read-only: one file shared by every node of the job; editing it on one would edit all
    _call("mount", None, b"/etc/hosts", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)


def _probe(name: str, text: str, tag: str) -> tuple[str, str]:
    """Try :func:`_become` in a forked child: ``("root" | "userns", "")`` or ``("", why not)``."""
    if not sys.platform.startswith("linux"):
        return "", f"namespaces are Linux-only, this is {sys.platform}"

    def probe(w: int) -> None:  # in the child: kernel calls only, then _exit, whatever happens
        answer = b"!unknown"
        try:
            for via in ["root", "userns"] if os.geteuid() == 0 else ["userns"]:
                try:
                    _become(name, text, via, tag)
                    answer = via.encode()
                    break
                except OSError as exc:
                    answer = f"!{exc.strerror}".encode()
            os.write(w, answer)
        finally:
            os._exit(0)

    pid, r = _fork(probe)
    answer = _answer(pid, r, "the namespace probe")
    _reap(pid, _WAIT)
    if not answer.startswith("!"):
        return answer, ""
    if "No space left" in answer:  # ENOSPC: user.max_user_namespaces is 0, or used up
        return "", f"the kernel allows no more user namespaces ({answer[1:]})"
    return "", f"the kernel refused the namespaces ({answer[1:]})"


def _fork(child) -> tuple[int, int]:
    """Fork; ``child(w)`` runs in the child (and must ``_exit``), writing one answer on ``w``.
    Returns the child's pid and the read end, for :func:`_answer`."""
    _load_libc()  # in the parent: a forked child must not import
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(w)
    os.close(w)
    return pid, r


def _answer(pid: int, r: int, what: str) -> str:
    """The answer of the child ``pid`` on ``r`` (closed after), waiting at most :data:`_WAIT` seconds."""
    try:
        if not select.select([r], [], [], _WAIT)[0]:
            os.kill(pid, signal.SIGKILL)
            raise HostsError(f"{what} (pid {pid}) did not answer within {_WAIT:g}s; it was killed")
        return os.read(r, 4096).decode(errors="replace") or "!it exited without an answer"
    finally:
        os.close(r)


def _reap(pid: int, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for child ``pid`` to exit, then SIGKILL it; reap it."""
    try:
        fd = os.pidfd_open(pid)
        try:
            select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
    except (AttributeError, OSError):
        pass
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# ------------------------------------------------------------------ way in 1: a forked child
def become(hosts: JobHosts, index: int) -> None:
    """Make this freshly forked process node ``hosts.names[index]`` (a no-op when ``off``).

    Call it first thing in the child of a fork (it must be single-threaded): the
    processes it starts afterwards inherit the node's host name and ``/etc/hosts``.
    """
    if hosts.via == "off":
        return
    try:
        _become(hosts.names[index], hosts.text, hosts.via, hosts.tag)
    except OSError as exc:
        raise HostsError(f"{hosts.names[index]}: {exc.strerror} (the probe had succeeded)") from None
