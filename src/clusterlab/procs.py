"""Worker processes: start them so that they can always be stopped.

Each worker starts in a session (and process group) of its own, so that a
signal to the group reaches the worker *and* anything it started (data loader
processes, shells). On Linux each worker also asks the kernel for
``PR_SET_PDEATHSIG``: if its agent dies, even by SIGKILL, the worker is killed
too and never outlives the job. util-linux's ``setpriv --pdeathsig KILL`` sets it
right before exec'ing the worker, so a worker starts with :func:`os.posix_spawn`
(a vfork); without setpriv, a ``preexec_fn`` sets it, which forces a full fork of
the agent and runs Python in the child: 3.4 ms of CPU per worker against 2.0 ms
(docs/performance.md).

Stopping follows torchrun's shape: SIGTERM to every group, a grace period, then
SIGKILL to whatever is still alive, including descendants that left the group
(found with psutil).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = None
_setpriv: list[str] | None = None  # ["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"], or [] without one


def _prctl(option: int, arg: int) -> None:
    """Linux ``prctl(option, arg)`` through libc (loaded once); a no-op elsewhere."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, arg, 0, 0, 0)


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no-op elsewhere)."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


def set_subreaper(on: bool = True) -> None:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``; no-op elsewhere).

    A worker's child that calls ``setsid()`` leaves the worker's process group, and
    once the worker exits it is re-parented to init, out of reach of any signal to
    the group or of a walk from the worker's pid. With this set, it is re-parented
    to the agent instead, so :func:`sweep` still finds it.
    """
    _prctl(_PR_SET_CHILD_SUBREAPER, int(on))


def kill_tagged(name: str, value: str, wait: float = 2.0) -> int:
    """SIGKILL every live process (but this one) whose environment has ``name=value``, wait for
    them, and return how many there were.

    What slurmd does at the end of a job or step: whatever still carries the job's
    mark is killed, wherever it went (a ``setsid`` child, a daemonised helper).
    """
    import psutil

    tagged = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(name) == value and p.status() != psutil.STATUS_ZOMBIE:
                tagged.append(p)
        except (psutil.Error, OSError):
            continue
    kill_all(tagged)
    psutil.wait_procs(tagged, timeout=wait)
    return len(tagged)


def _child_pids(pid: int) -> list[int] | None:
    """``pid``'s children from ``/proc/PID/task/*/children`` (Linux), or None where that is unreadable.

    psutil finds children by reading the parent of *every* process on the machine;
    this reads one small file per thread. It lets the common case - nothing to
    sweep - skip importing psutil (20-30 ms) and the scan (3+ ms, more on a busy
    machine), once per agent and once in the launcher (see docs/performance.md).
    """
    try:
        found = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(x) for x in f.read().split()]
        return found
    except (OSError, ValueError):
        return None


def sweep(keep: set[int]) -> None:
    """SIGKILL every descendant of this process except the children in ``keep`` (and theirs); reap them."""
    children = _child_pids(os.getpid())
    if children is not None and set(children) <= keep:
        return
    import psutil

    try:
        roots = [c for c in psutil.Process().children() if c.pid not in keep]
        found = roots + [d for r in roots for d in _descendants_of(r)]
    except psutil.Error:
        return
    kill_all(found)
    psutil.wait_procs(roots, timeout=1.0)  # our own children: reap them, leave no zombie


def _descendants_of(proc) -> list:
    import psutil

    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _child_setup(parent: int) -> None:
    set_pdeathsig()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())  # as posix_spawn's setsigmask: nothing blocked


def _which(program: str, path: str) -> str | None:
    """What ``execvpe`` would run for ``program``: ``shutil.which`` without importing shutil,
    which (with the compression modules it loads) costs the launcher ~3 ms per job."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) and not os.path.isdir(program) else None
    for d in path.split(os.pathsep):
        candidate = os.path.join(d or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def setpriv_prefix() -> list[str]:
    """The ``setpriv --pdeathsig KILL --`` prefix if this machine's setpriv has the option, else ``[]``.

    Looked up once per process (util-linux before 2.33, e.g. RHEL 8's, lacks ``--pdeathsig``);
    ``clusterlab simulate`` looks before forking its agents, so they inherit the answer.
    """
    global _setpriv
    if _setpriv is None:
        _setpriv = []
        path = _which("setpriv", os.environ.get("PATH", os.defpath)) if sys.platform.startswith("linux") else None
        if path and _has_option(path, b"--pdeathsig"):
            _setpriv = [path, "--pdeathsig", "KILL", "--"]
    return _setpriv


def _has_option(path: str, option: bytes) -> bool:
    """Whether the program at ``path`` knows ``option``: its usage text, compiled into the binary,
    names it. Reading 60 KB costs ~0.1 ms; running ``setpriv --pdeathsig KILL -- true`` to find
    out cost every launch ~2.5 ms before its first worker could start."""
    try:
        with open(path, "rb") as f:
            return option in f.read(1 << 22)
    except OSError:
        return False


class Process:
    """A started worker: the part of :class:`subprocess.Popen` clusterlab uses.

    Workers are started with :func:`os.posix_spawn` (a vfork and an exec, as
    ``Popen`` does) rather than through :mod:`subprocess`, whose import - with
    threading and selectors - cost the start-up of every job ~4 ms
    (docs/performance.md). Where ``popen`` is given (the ``prctl`` fallback),
    it does the reaping.
    """

    def __init__(self, pid: int, args: list[str], stdout, stderr, popen=None) -> None:
        self.pid, self.args, self.stdout, self.stderr, self._popen = pid, args, stdout, stderr, popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status (``-N`` for signal N) if the process has exited, else None."""
        if self.returncode is None:
            self._reap(block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; :class:`TimeoutError` if it does not come within ``timeout`` seconds."""
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while self.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"process {self.pid} is still running after {timeout:g}s")
                _sleep_until_exit(self.pid, left)
        while self.returncode is None:
            self._reap(block=True)
        return self.returncode

    def _reap(self, block: bool) -> None:
        if self._popen is not None:
            self.returncode = self._popen.wait() if block else self._popen.poll()
            return
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (srun reads statuses with waitid): as Popen does, 0
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)


def _sleep_until_exit(pid: int, timeout: float) -> None:
    """Sleep until ``pid`` exits or ``timeout`` seconds pass (on a pidfd where there is one)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        time.sleep(min(timeout, 0.01))
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


#: signals Python ignores for itself that a worker must start with at their default action
_DEFAULT_SIGNALS = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n))


def spawn(argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = (), cwd: str | None = None) -> Process:
    """Start one worker in its own session, stdout and stderr piped to us, stdin closed.

    What :class:`subprocess.Popen` does with ``start_new_session=True``,
    ``pass_fds`` and ``restore_signals``, plus ``PR_SET_PDEATHSIG``; a missing
    or non-executable program is an :class:`OSError` here, not an exit status later.
    """
    program = argv[0]
    if cwd is not None and os.sep in program and not os.path.isabs(program):
        program = os.path.join(cwd, program)  # Popen's rule: a relative path is relative to cwd
    path = _which(program, env.get("PATH", os.defpath))
    if path is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    prefix = setpriv_prefix()
    if cwd is not None or (not prefix and sys.platform.startswith("linux")):
        # Python's posix_spawn has no chdir action, and changing this process's directory
        # around the spawn would change it for everything else in the process too
        return _spawn_with_popen(path, argv, env, pass_fds, cwd, prefix)
    # Not covered: an agent killed in the ~1 ms between the spawn and setpriv's prctl. Under
    # `simulate` the launcher, a subreaper, adopts and sweeps such a worker.
    program, args = (prefix[0], [*prefix, *argv]) if prefix else (path, list(argv))
    _no_fd_leaks()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    try:
        for fd in pass_fds:
            os.set_inheritable(fd, True)
        pid = os.posix_spawn(program, args, env, file_actions=actions, setsid=True,
                             setsigmask=(), setsigdef=_DEFAULT_SIGNALS)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)
        os.close(out_w)
        os.close(err_w)
    return Process(pid, args, open(out_r, "rb", buffering=0), open(err_r, "rb", buffering=0))


_fds_checked = False


def _no_fd_leaks() -> None:
    """Make every descriptor this process inherited (beyond 0-2) close on exec, once.

    Python opens its own descriptors close-on-exec (PEP 446), but a shell or
    ``make`` may hand the launcher inheritable ones, and unlike ``Popen``'s
    ``close_fds``, posix_spawn would pass them on to every worker (a pipe held
    open by a worker never reports EOF to its reader).
    """
    global _fds_checked
    if _fds_checked:
        return
    _fds_checked = True
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass


def _spawn_with_popen(path: str, argv: list[str], env: dict[str, str], pass_fds: tuple[int, ...],
                      cwd: str | None, prefix: list[str]) -> Process:
    """With a working directory (srun's ``--chdir``), or without setpriv's ``--pdeathsig``:
    :class:`subprocess.Popen`, which changes directory in the child. Without setpriv, a
    ``preexec_fn`` calls ``prctl`` in the forked child: that forces a full fork of the agent and
    runs Python in it, 3.4 ms of CPU per worker against 2.0 ms (docs/performance.md)."""
    import subprocess

    preexec = None
    if prefix:
        path, argv = prefix[0], [*prefix, path, *argv[1:]]
    elif sys.platform.startswith("linux"):
        if _libc is None:
            set_pdeathsig(0)  # load libc here, once, not in the forked child
        parent = os.getpid()
        preexec = lambda: _child_setup(parent)  # noqa: E731
    popen = subprocess.Popen(list(argv), executable=path, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
                             start_new_session=True, preexec_fn=preexec)
    return Process(popen.pid, list(argv), popen.stdout, popen.stderr, popen)


def signal_group(proc: Process, sig: int) -> None:
    """Send ``sig`` to the worker's whole process group (it leads its own)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pids: list[int]) -> list:
    """Every live descendant of ``pids`` (psutil.Process objects), for a final sweep."""
    if all(_child_pids(pid) == [] for pid in pids):
        return []
    import psutil

    found = []
    for pid in pids:
        try:
            found += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            continue
    return found


def kill_all(procs) -> None:
    """SIGKILL psutil processes, ignoring those already gone."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def kill_trees(pids: list[int], wait: float = 5.0) -> None:
    """SIGKILL each of ``pids`` (session leaders), its process group and every descendant, then wait
    up to ``wait`` seconds for them to be gone: what a watchdog does to a command that overran."""
    import psutil

    family = descendants(pids)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    kill_all(family)
    psutil.wait_procs(family, timeout=wait)


def stop(procs: list[Process], grace: float = 5.0) -> None:
    """Blocking helper: SIGTERM every group, wait up to ``grace`` seconds, SIGKILL the rest."""
    live = [p for p in procs if p.poll() is None]
    family = descendants([p.pid for p in live])
    for p in live:
        signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            signal_group(p, signal.SIGKILL)
            p.wait()
    kill_all(family)


def describe_exit(returncode: int) -> str:
    """``-9`` -> ``"signal 9 (SIGKILL)"``, ``3`` -> ``"exit code 3"``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown"
        return f"signal {-returncode} ({name})"
    return f"exit code {returncode}"
