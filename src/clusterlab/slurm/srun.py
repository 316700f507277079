"""Run a step's tasks as real local processes, the way srun and slurmstepd do.

Phases of one step:

1. **Launch.** Every task is a process in a session (and process group) of its
   own, with the job's environment plus its own ``SLURM_PROCID``,
   ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURMD_NODENAME`` ... (see
   :mod:`clusterlab.slurm.environ`). If the command cannot be found, nothing is
   launched.
2. **Run.** One ``selectors`` loop reads every task's stdout and stderr, whole
   lines at a time (``-l/--label`` puts ``TASKID: `` in front, padded to the
   width of the largest id, as srun writes it), and watches each task's exit
   through a pidfd. No polling, no sleeping.
3. **Stop early** when srun is told to: ``-K/--kill-on-bad-exit`` after the first
   non-zero exit; ``-W/--wait=S`` S seconds after the first task exits (any exit
   status); a signal to srun itself is forwarded to every task. Stopping is
   SIGTERM to every task's group, then SIGKILL after :data:`KILL_WAIT` seconds.
4. **Clean up** like slurmstepd at the end of a step: whatever the tasks left
   running is killed - their process groups, and any process that still carries
   the step's tag in its environment (:data:`STEP_TAG_ENV`), even one that
   started a session of its own.

The exit status is srun's (srun(1), RETURN VALUE): the highest exit code of all
tasks, but if any task died by a signal, 128 + the highest signal number.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import time
from dataclasses import dataclass, field

from .. import procs
from ..errors import UsageError
from ..output import StreamPump
from .job import Step

#: Seconds between SIGTERM and SIGKILL when a step is stopped (slurm.conf KillWait; Slurm's default is 30).
KILL_WAIT = 5.0
#: Seconds to drain output after the last task exited.
DRAIN_WAIT = 2.0
#: Every task (and whatever it starts) inherits this tag; the cleanup finds stragglers by it.
STEP_TAG_ENV = "CLUSTERLAB_SLURM_STEP_TAG"


def label_width(ntasks: int) -> int:
    """srun's ``_wid``: digits of the largest task id, so labels line up (`` 9: `` ... ``10: ``)."""
    return len(str(max(ntasks - 1, 0)))


@dataclass
class _Task:
    task_id: int
    node: str
    proc: object
    pidfd: int | None
    pumps: list = field(default_factory=list)
    status: int | None = None  # exit code, or -signal


def find_command(command: list[str], env: dict[str, str], cwd: str | None) -> str:
    """Check the executable exists before anything is launched (srun's EXECUTABLE PATH RESOLUTION)."""
    if not command:
        raise UsageError("srun: no command given; write e.g. `clusterlab srun -N2 hostname`")
    exe = command[0]
    if "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(cwd or os.getcwd(), exe)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise UsageError(f"srun: {exe!r} is not an executable file; check the path or run `chmod +x {exe}`")
        return path
    found = shutil.which(exe, path=env.get("PATH", os.defpath))
    if not found:
        raise UsageError(f"srun: command {exe!r} not found on PATH; give its full path or fix PATH")
    return found


def run_step(step: Step, command: list[str], envs: list[dict[str, str]], *, label: bool = False,
             kill_on_bad_exit: bool = False, wait: int = 0, cwd: str | None = None,
             out_fd: int = 1, err_fd: int = 2) -> int:
    """Run ``command`` once per task with ``envs[task_id]``; return srun's exit status."""
    find_command(command, envs[0], cwd)
    tag_value = f"{step.alloc.job_id}.{step.step_id}.{os.getpid()}.{time.monotonic_ns()}"
    envs = [{**e, STEP_TAG_ENV: tag_value} for e in envs]
    width = label_width(step.layout.ntasks)
    sel = selectors.DefaultSelector()
    tasks: list[_Task] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    old_wakeup, old_handlers = None, {}
    try:
        try:  # a signal to srun wakes the loop at once (main thread only)
            old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                old_handlers[sig] = signal.signal(sig, lambda *_: None)
        except ValueError:
            old_wakeup = None
        sel.register(wake_r, selectors.EVENT_READ, ("wake", None))
        # Phase 1: launch, in task order.
        for task_id, node, _node_idx, _local in step.layout.table():
            proc = procs.spawn(list(command), envs[task_id], cwd=cwd)
            pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
            t = _Task(task_id, node, proc, pidfd)
            tag = f"{task_id:>{width}}: ".encode() if label else b""
            for stream, fd in ((proc.stdout, out_fd), (proc.stderr, err_fd)):
                pump = StreamPump(tag, fd, None)
                t.pumps.append(pump)
                os.set_blocking(stream.fileno(), False)
                sel.register(stream.fileno(), selectors.EVENT_READ, ("out", (t, stream, pump)))
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ, ("exit", t))
            tasks.append(t)
        return _loop(step, sel, tasks, kill_on_bad_exit, wait, err_fd, wake_r, tag_value)
    finally:
        _cleanup(tasks, tag_value)
        sel.close()
        if old_wakeup is not None:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, f"srun: {text}\n".encode())
    except OSError:
        pass


def _loop(step: Step, sel, tasks: list[_Task], kill_on_bad_exit: bool, wait: int, err_fd: int, wake_r: int,
          tag: str) -> int:
    step_name = f"StepId={step.alloc.job_id}.{step.step_id}"
    cancelled = False
    wait_deadline = kill_deadline = None
    open_streams = 2 * len(tasks)
    drain_deadline = None
    while True:
        live = [t for t in tasks if t.status is None]
        if not live and (open_streams == 0 or (drain_deadline and time.monotonic() >= drain_deadline)):
            break
        if not live and drain_deadline is None:
            _kill_leftovers(tasks, tag)  # slurmstepd ends the step: nothing of it may keep running
            drain_deadline = time.monotonic() + DRAIN_WAIT
        now = time.monotonic()
        if wait_deadline and now >= wait_deadline and live and not cancelled:
            _say(err_fd, f"First task exited {wait}s ago")
            _say(err_fd, f"Terminating {step_name}")
            cancelled, kill_deadline = True, _terminate(live, signal.SIGTERM)
        if kill_deadline and now >= kill_deadline:
            for t in live:
                procs.signal_group(t.proc, signal.SIGKILL)
            kill_deadline = None
        timeout = min([d - now for d in (wait_deadline, kill_deadline, drain_deadline) if d] + [1.0])
        for key, _ in sel.select(max(timeout, 0.0)):
            kind, data = key.data
            if kind == "wake":
                sig = _read_signal(wake_r)
                if sig and live:
                    _say(err_fd, f"forcing job termination ({signal.Signals(sig).name} received)")
                    cancelled = True
                    kill_deadline = _terminate(live, sig)
            elif kind == "out":
                t, stream, pump = data
                try:
                    chunk = os.read(stream.fileno(), 65536)
                except BlockingIOError:
                    continue
                if chunk:
                    pump.feed(chunk)
                else:
                    sel.unregister(stream.fileno())
                    pump.close()
                    open_streams -= 1
            elif kind == "exit":
                t = data
                sel.unregister(t.pidfd)
                t.status = _exit_status(t.proc.pid)
                first_exit = sum(x.status is not None for x in tasks) == 1
                if t.status != 0 and not cancelled:
                    _say(err_fd, f"error: {t.node}: task {t.task_id}: {_describe(t.status)}")
                if t.status != 0 and kill_on_bad_exit and not cancelled:
                    _say(err_fd, f"Terminating {step_name}")
                    cancelled = True
                    kill_deadline = _terminate([x for x in tasks if x.status is None], signal.SIGTERM)
                if first_exit and wait > 0 and wait_deadline is None:
                    wait_deadline = time.monotonic() + wait
        if not any(t.pidfd is not None for t in tasks):  # no pidfds on this system: poll instead
            for t in tasks:
                if t.status is None and t.proc.poll() is not None:
                    t.status = t.proc.returncode
    return exit_code([t.status for t in tasks])


def _read_signal(fd: int) -> int | None:
    try:
        data = os.read(fd, 64)
    except BlockingIOError:
        return None
    return data[-1] if data else None


def _exit_status(pid: int) -> int:
    """The task's status without reaping it: a zombie keeps its process group id reserved for cleanup."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if info is None:
        return 0
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _terminate(live: list[_Task], sig: int) -> float:
    for t in live:
        procs.signal_group(t.proc, signal.SIGCONT)
        procs.signal_group(t.proc, sig)
    return time.monotonic() + KILL_WAIT


def _kill_leftovers(tasks: list[_Task], tag: str | None) -> None:
    """SIGKILL what is left of the step: every task's group, then any process carrying the step's tag."""
    for t in tasks:
        procs.signal_group(t.proc, signal.SIGKILL)
    if tag is not None:
        procs.kill_tagged(STEP_TAG_ENV, tag)


def _describe(status: int) -> str:
    if status < 0:
        return signal.strsignal(-status) or f"signal {-status}"
    return f"Exited with exit code {status}"


def exit_code(statuses: list[int | None]) -> int:
    """srun's RETURN VALUE: 128 + the highest signal if any task was signalled, else the highest exit code."""
    signals = [-s for s in statuses if s is not None and s < 0]
    if signals:
        return 128 + max(signals)
    return max([s for s in statuses if s is not None] + [0])


def _cleanup(tasks: list[_Task], tag: str | None) -> None:
    """Whatever happened above: no task, no child of a task, no fd is left behind."""
    live = [t for t in tasks if t.status is None]
    if live:
        procs.stop([t.proc for t in live], grace=KILL_WAIT)
    _kill_leftovers(tasks, tag)
    for t in tasks:
        try:
            t.proc.wait(timeout=KILL_WAIT)
        except Exception:
            procs.signal_group(t.proc, signal.SIGKILL)
        for stream in (t.proc.stdout, t.proc.stderr):
            if stream and not stream.closed:
                stream.close()
        if t.pidfd is not None:
            try:
                os.close(t.pidfd)
            except OSError:
                pass
