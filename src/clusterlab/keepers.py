"""Keepers: one process per simulated node holding its namespaces, so tasks can be started on it later.

``simulate`` forks one agent per node, which :func:`clusterlab.host.become` the node
itself. ``srun`` is different: one process starts the tasks of every node, so each
node's namespaces must be *held* by something for the job's lifetime - a keeper, a
small forked process that sets the node up (the same kernel calls as ``become``) and
then waits for its lifeline to close - and *entered* per task, through an
``nsenter(1)`` argv prefix (:meth:`Keepers.enter_argv`). Processes inside the job
(``srun`` in a batch script) find the keepers through one environment variable
(:meth:`Keepers.environ`, :meth:`Keepers.from_environ`).
"""

from __future__ import annotations

import os
import signal

from .host import _WAIT, HostsError, JobHosts, _answer, _become, _fork, _reap

#: Exported to a job's processes by the owner of its :class:`Keepers` (see :meth:`Keepers.environ`).
KEEPERS_ENV = "CLUSTERLAB_HOST_KEEPERS"


class Keepers:
    """One keeper process per node, holding the node's namespaces for the job's lifetime.

    The owner (the launcher) starts them with :meth:`start` and ends them with
    :meth:`close` (or ``with``); each task on node k is started through
    :meth:`enter_argv`. A process inside the job finds them through
    :meth:`environ` / :meth:`from_environ`. The keepers are the owner's children:
    it must not reap them with a wildcard ``wait()``.

    ``nestable`` (the default) lets a process *inside* the job start tasks on the
    other nodes (``srun`` in a batch script). As root that is free. In a user
    namespace the kernel requires a capability in it, which a user mapped to
    itself loses at exec; so there the user is mapped to root, as ``unshare
    --map-root-user`` does (``id -u`` prints 0 in the tasks; outside they stay the user).
    """

    def __init__(self, names: tuple[str, ...], via: str, pids: tuple[int, ...], inodes: tuple[int, ...],
                 userns: int = 0, lifeline: int | None = None) -> None:
        self.names, self.via, self.pids, self.inodes, self.userns = names, via, pids, inodes, userns
        self._lifeline = lifeline
        self._nsenter: str | None = None

    @classmethod
    def start(cls, hosts: JobHosts, nestable: bool = True) -> "Keepers":
        """Fork one keeper per node of ``hosts`` and wait until each holds its namespaces."""
        if hosts.via == "off":
            return cls(hosts.names, "off", (), ())
        user_map = "root" if nestable else "self"
        from .procs import set_pdeathsig  # imported here: a forked child must not import

        life_r, life_w = os.pipe()
        parent = os.getpid()
        pids: list[int] = []
        pending: list[tuple[str, int, int]] = []
        try:
            for name in hosts.names:
                join = pids[0] if pids else None  # in a user namespace, the first keeper's is the job's
                pid, r = _fork(lambda w: _keeper(name, hosts, user_map, join,  # noqa: B023 (called by _fork, now)
                                                 parent, life_r, w, set_pdeathsig))
                pids.append(pid)
                pending.append((name, pid, r))
                if len(pids) == 1 or name == hosts.names[-1]:  # the others are set up side by side
                    while pending:
                        name, pid, r = pending.pop(0)
                        answer = _answer(pid, r, f"the keeper of {name}")
                        if answer != "ok":
                            raise HostsError(f"the keeper of {name} could not set the node up: "
                                             f"{answer.lstrip('!')}")
            inodes = tuple(os.stat(f"/proc/{pid}/ns/uts").st_ino for pid in pids)
            userns = os.stat(f"/proc/{pids[0]}/ns/user").st_ino
        except BaseException:
            os.close(life_w)
            for _, _, r in pending:
                os.close(r)
            for pid in pids:
                _reap(pid, _WAIT)
            raise
        finally:
            os.close(life_r)
        return cls(hosts.names, hosts.via, tuple(pids), inodes, userns, life_w)

    def enter_argv(self, node: int | str, cwd: str | None = None) -> list[str]:
        """The argv prefix that starts a program on ``node`` (index or name), in ``cwd``
        (default: the current directory); ``[]`` when hosts are ``off``::

            procs.spawn(keepers.enter_argv(k, cwd) + argv, env, cwd=cwd)

        Usable after ``setpriv --pdeathsig KILL --`` (procs.spawn's prefix): nsenter
        execs the program in its own pid, and keeps the death signal.
        """
        if self.via == "off":
            return []
        index = node if isinstance(node, int) else self.names.index(node) if node in self.names else -1
        if not 0 <= index < len(self.names):
            raise HostsError(f"{node!r} is not a node of this job ({', '.join(self.names[:4])}...)")
        pid, name = self.pids[index], self.names[index]
        inside = self.via == "userns" and os.stat("/proc/self/ns/user").st_ino == self.userns
        if inside and os.geteuid() != 0:
            raise HostsError(f"cannot enter {name} from inside the job: its user namespace maps you to yourself, "
                             "without the capability to enter another node (start the keepers nestable)")
        try:  # a pid reused by another process would hold other namespaces
            alive = os.stat(f"/proc/{pid}/ns/uts").st_ino == self.inodes[index]
        except OSError:
            alive = False
        if not alive:
            raise HostsError(f"the keeper of {name} (pid {pid}) is gone: the node can no longer be entered")
        user = ["--user", "--preserve-credentials"] if self.via == "userns" and not inside else []
        if self._nsenter is None:
            import shutil

            self._nsenter = shutil.which("nsenter", path=os.environ.get("PATH", os.defpath) + ":/usr/bin:/bin")
            if self._nsenter is None:
                raise HostsError("nsenter (util-linux) is not installed; install util-linux, or use --hosts=off")
        wd = os.path.abspath(cwd or os.curdir)  # setns(CLONE_NEWNS) moves nsenter to "/": it must chdir back
        return [self._nsenter, f"--target={pid}", *user, "--uts", "--mount", f"--wd={wd}", "--"]

    def environ(self) -> dict[str, str]:
        """What to export to the job's processes so that :meth:`from_environ` finds the keepers:
        ``via;userns-inode;node001=pid/uts-inode,...`` (spelled here and parsed just below)."""
        nodes = ",".join(f"{n}={p}/{i}" for n, p, i in zip(self.names, self.pids, self.inodes))
        return {KEEPERS_ENV: f"{self.via};{self.userns};{nodes}"}

    @classmethod
    def from_environ(cls, env: dict[str, str] | None = None) -> "Keepers | None":
        """The keepers of the job this process runs in (not owned: :meth:`close` does nothing), or None."""
        raw = (os.environ if env is None else env).get(KEEPERS_ENV)
        if not raw:
            return None
        try:
            via, userns, nodes = raw.split(";")
            entries = [(n, *map(int, pi.split("/"))) for n, pi in (e.split("=") for e in nodes.split(",") if e)]
            names, pids, inodes = (tuple(c) for c in zip(*entries)) if entries else ((), (), ())
            return cls(names, via, pids, inodes, int(userns))
        except ValueError:
            raise HostsError(f"{KEEPERS_ENV}={raw!r} is malformed; it is written by clusterlab, not by hand") from None

    def close(self) -> None:
        """End the keepers (they exit at EOF on their lifeline) and reap them; idempotent."""
        if self._lifeline is None:
            return
        os.close(self._lifeline)
        self._lifeline = None
        for pid in self.pids:
            _reap(pid, _WAIT)

    def __enter__(self) -> "Keepers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _keeper(name: str, hosts: JobHosts, user_map: str, join: int | None, parent: int, life_r: int, w: int,
            set_pdeathsig) -> None:
    """A keeper's whole life, in the forked child: set the node up, say so, wait for EOF, exit."""
    try:
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:  # the launcher died before prctl took effect
            os._exit(1)
        signal.set_wakeup_fd(-1)  # the launcher's handlers and wake-up pipe are not the keeper's
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the launcher, which closes the lifeline
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _become(name, hosts.text, hosts.via, hosts.tag, user_map, join)
        os.chdir("/")
        os.write(w, b"ok")
        os.close(w)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, life_r)  # hold nothing of the launcher's: its pipes must see EOF without us
        os.closerange(life_r + 1, os.sysconf("SC_OPEN_MAX"))
        os.read(life_r, 1)  # blocks until the launcher closes the lifeline or dies
    except BaseException as exc:
        try:
            os.write(w, f"!{getattr(exc, 'strerror', None) or exc}".encode())
        except OSError:
            pass
    finally:
        os._exit(0)
