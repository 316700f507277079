"""Run a step's tasks as real local processes, the way srun and slurmstepd do.

Phases of one step:

1. **Launch.** Every task is a process in a session (and process group) of its
   own, started by :func:`start_task` - the one place that puts a task "on node
   k": inside node k's namespaces when the job's nodes are hosts
   (:class:`clusterlab.keepers.Keepers`, an ``nsenter`` prefix), so ``hostname``
   says ``node002`` there and every node name of the job resolves - with the
   job's environment plus its own ``SLURM_PROCID``,
   ``SLURM_LOCALID``, ``SLURMD_NODENAME`` ... (see :mod:`clusterlab.slurm.environ`)
   and its ``SLURM_TASK_PID``. A command that cannot be executed fails in every
   task, as slurmstepd's ``execve()`` does: one error line per task, exit status
   the errno (2 for "No such file or directory").
2. **Run.** One :class:`clusterlab.loop.Loop` reads every task's stdout and
   stderr, whole lines at a time (``-l/--label`` puts ``TASKID: `` in front,
   padded to the width of the largest id, as srun writes it), and watches each
   task's exit through a pidfd. No polling, no sleeping.
3. **Report exits** as srun does (``launch_slurm.c``, ``_task_finish``): a task
   that exits non-zero or by a signal gets ``srun: error: NODE: task N: Exited
   with exit code C`` (or the signal's name); tasks of a node reaped together with
   the same status share one line (``tasks 0,2: Terminated``).
4. **Stop early** when srun is told to: ``-K/--kill-on-bad-exit`` after the first
   abnormal exit (SIGTERM, then SIGKILL after KillWait); ``-W/--wait=S`` S seconds
   after the first task exits (SIGKILL); SIGTERM/SIGHUP to srun kills the tasks,
   SIGINT is passed on. Node 0 of the step says ``*** STEP J.S ON node CANCELLED
   AT time ***`` through its first task's stderr, as slurmstepd does.
5. **Clean up** like slurmstepd at the end of a step: whatever the tasks left
   running is killed - their process groups, and any process that still carries
   the step's tag in its environment (:data:`STEP_TAG_ENV`).

The exit status is srun's (srun(1), RETURN VALUE): the highest exit code of all
tasks, but if any task died by a signal, 128 + the highest signal number.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field

from .. import procs
from ..errors import UsageError
from ..keepers import Keepers
from ..layout import format_ranks
from ..loop import Loop
from ..output import StreamPump
from . import config
from .job import Step

#: Seconds between SIGTERM and SIGKILL when a step is stopped (slurm.conf KillWait).
KILL_WAIT = float(config.KILL_WAIT)
#: Seconds to drain output after the last task exited.
DRAIN_WAIT = 2.0
#: Every task (and whatever it starts) inherits this tag; the cleanup finds stragglers by it.
STEP_TAG_ENV = "CLUSTERLAB_SLURM_STEP_TAG"
#: Sets SLURM_TASK_PID to the task's own pid (the shell's, which exec keeps), then becomes the command.
TASK_PID_SHELL = 'SLURM_TASK_PID=$$; export SLURM_TASK_PID; exec "$0" "$@"'


def label_width(ntasks: int) -> int:
    """srun's ``_wid``: digits of the largest task id, so labels line up (`` 9: `` ... ``10: ``)."""
    return len(str(max(ntasks - 1, 0)))


@dataclass
class _Task:
    task_id: int
    node: str
    proc: procs.Process | None  # None: the command could not be executed
    pidfd: int | None
    pumps: list = field(default_factory=list)
    status: int | None = None  # exit code, or -signal
    reported: bool = False


def find_command(command: list[str], env: dict[str, str], cwd: str | None) -> str | None:
    """The executable slurmstepd would run, or None when ``execve`` would fail (then every task fails)."""
    if not command:
        raise UsageError("srun: no command given; write e.g. `clusterlab srun -N2 hostname`")
    exe = command[0]
    if "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(cwd or os.getcwd(), exe)
        return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
    return shutil.which(exe, path=env.get("PATH", os.defpath))


def _execve_error(command: list[str], cwd: str | None) -> int:
    """The errno execve gives for a command that cannot run: ENOENT, or EACCES for a file without +x."""
    exe = command[0]
    path = exe if os.path.isabs(exe) else os.path.join(cwd or os.getcwd(), exe)
    return errno.EACCES if "/" in exe and os.path.exists(path) else errno.ENOENT


def start_task(command: list[str], env: dict[str, str], node: str, cwd: str | None,
               keepers: Keepers | None = None) -> procs.Process:
    """Start one task on ``node``: the one place a simulated node's process is made.

    With ``keepers`` (the job's nodes are hosts) the task enters ``node``'s UTS and
    mount namespaces first (:meth:`Keepers.enter_argv`, ~1.7 ms: ``bench/hosts.py``);
    without, every node is this machine and ``node`` is only named in the environment.
    """
    prefix = keepers.enter_argv(node, cwd) if keepers is not None else []
    return procs.spawn([*prefix, "/bin/sh", "-c", TASK_PID_SHELL, *command], env, cwd=cwd)


def open_port() -> socket.socket:
    """srun's own listening socket (``SLURM_SRUN_COMM_PORT``), held while the step runs."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def run_step(step: Step, command: list[str], envs: list[dict[str, str]], *, label: bool = False,
             kill_on_bad_exit: bool = False, wait: int = 0, cwd: str | None = None,
             out_fd: int = 1, err_fd: int = 2, keepers: Keepers | None = None) -> int:
    """Run ``command`` once per task with ``envs[task_id]``, each on its node (through
    ``keepers`` when the nodes are hosts); return srun's exit status."""
    if keepers is not None:  # every node of the step can be entered, or no task starts (a node down)
        for node in step.layout.nodes:
            keepers.enter_argv(node, cwd)
    tag_value = f"{step.alloc.job_id}.{step.step_id}.{os.getpid()}.{time.monotonic_ns()}"
    envs = [{**e, STEP_TAG_ENV: tag_value} for e in envs]
    width = label_width(step.layout.ntasks)
    runnable = find_command(command, envs[0], cwd) is not None
    loop = Loop()
    loop.catch_signals()
    run = _Run(step, loop, err_fd, kill_on_bad_exit, wait, tag_value)
    try:
        # Phase 1: launch, in task order.
        for task_id, node, _node_idx, _local in step.layout.table():
            tag = f"{task_id:>{width}}: ".encode() if label else b""
            if not runnable:
                t = _Task(task_id, node, None, None)
                t.pumps = [StreamPump(tag, out_fd, None), StreamPump(tag, err_fd, None)]
                code = _execve_error(command, cwd)
                t.pumps[1].feed(f"slurmstepd-{node}: error: execve(): {command[0]}: {os.strerror(code)}\n".encode())
                t.status = code
                run.exited.append(t)
                run.tasks.append(t)
                continue
            proc = start_task(list(command), envs[task_id], node, cwd, keepers)
            pidfd = os.pidfd_open(proc.pid)
            t = _Task(task_id, node, proc, pidfd)
            for stream, fd in ((proc.stdout, out_fd), (proc.stderr, err_fd)):
                pump = StreamPump(tag, fd, None)
                t.pumps.append(pump)
                os.set_blocking(stream.fileno(), False)
                run.open_streams += 1
                loop.on_read(stream.fileno(), lambda s=stream, p=pump: run.read(s, p))
            loop.on_read(pidfd, lambda t=t: run.reap(t))
            run.tasks.append(t)
        return run.wait()
    finally:
        _cleanup(run.tasks, tag_value)
        for t in run.tasks:
            for pump in t.pumps:
                pump.close()
        loop.close()


class _Run:
    """Phases 2-4 of a step: the loop's handlers and srun's decisions."""

    def __init__(self, step: Step, loop: Loop, err_fd: int, kill_on_bad_exit: bool, wait: int, tag: str) -> None:
        self.step, self.loop, self.err_fd, self.tag = step, loop, err_fd, tag
        self.kill_on_bad_exit, self.wait_s = kill_on_bad_exit, wait
        self.tasks: list[_Task] = []
        self.exited: list[_Task] = []  # reaped since the last report
        self.open_streams = 0
        self.name = f"StepId={step.alloc.job_id}.{step.step_id}"
        self.cancelled = self.aborted = False
        self.wait_deadline: float | None = None
        self.kill_deadline: float | None = None

    def say(self, text: str) -> None:
        try:
            os.write(self.err_fd, f"srun: {text}\n".encode())
        except OSError:
            pass

    def read(self, stream, pump) -> None:
        try:
            chunk = os.read(stream.fileno(), 65536)
        except BlockingIOError:
            return
        if chunk:
            pump.feed(chunk)
            return
        self.loop.forget(stream.fileno())
        pump.close()
        self.open_streams -= 1

    def reap(self, t: _Task) -> None:
        if t.pidfd is None or t.proc is None:  # only a started task has a pidfd in the loop
            return
        self.loop.forget(t.pidfd)
        t.status = _exit_status(t.proc.pid)
        self.exited.append(t)

    def live(self) -> list[_Task]:
        return [t for t in self.tasks if t.status is None]

    def wait(self) -> int:
        drain_deadline = None
        while True:
            self.report()
            live = self.live()
            now = time.monotonic()
            if not live:
                if self.open_streams == 0 or (drain_deadline and now >= drain_deadline):
                    break
                if drain_deadline is None:
                    _kill_leftovers(self.tasks, self.tag)  # slurmstepd ends the step: nothing of it may keep running
                    drain_deadline = now + DRAIN_WAIT
            if self.wait_deadline and now >= self.wait_deadline and live and not self.cancelled:
                self.wait_expired(live)
            if self.kill_deadline and now >= self.kill_deadline:
                for t in live:
                    _signal(t, signal.SIGKILL)
                self.kill_deadline = None
            if self.loop.signal is not None and live:
                self.on_signal(live)
            timeout = min([d - now for d in (self.wait_deadline, self.kill_deadline, drain_deadline) if d] + [1.0])
            self.loop.poll(max(timeout, 0.0))
        statuses = [t.status for t in self.tasks]
        if not self.aborted and any(s in (-signal.SIGTERM, -signal.SIGKILL) for s in statuses):
            self.say(f"Force Terminated {self.name}")
        return exit_code(statuses)

    def report(self) -> None:
        """srun's ``_task_finish``: one line per node and status for the tasks reaped together."""
        batch, self.exited = self.exited, []
        if not batch:
            return
        groups: dict[tuple[str, int], list[int]] = {}
        for t in batch:  # every task in `batch` has exited: its status is known
            groups.setdefault((t.node, t.status or 0), []).append(t.task_id)
        for (node, status), ids in groups.items():
            if status != 0:
                word = "task" if len(ids) == 1 else "tasks"
                self.say(f"error: {node}: {word} {format_ranks(ids)}: {_describe(status)}")
        first_exit = len(self.tasks) - len(self.live()) == len(batch)
        if self.kill_on_bad_exit and not self.cancelled and any(t.status != 0 for t in batch):
            self.cancel(signal.SIGTERM)
        if first_exit and self.wait_s > 0 and self.wait_deadline is None:
            self.wait_deadline = time.monotonic() + self.wait_s

    def cancel(self, sig: int) -> None:
        """``_step_signal``: slurmctld has every node's slurmstepd signal the step's tasks."""
        self.say(f"launch/slurm: _step_signal: Terminating {self.name}")
        self.cancelled = True
        first = self.step.layout.nodes[0]
        when = time.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"slurmstepd-{first}: error: *** STEP {self.step.alloc.job_id}.{self.step.step_id} ON {first} " \
               f"CANCELLED AT {when} ***\n"
        lead = next(t for t in self.tasks if t.task_id == self.step.layout.task_ids[0][0])
        lead.pumps[1].feed(line.encode())
        self.kill_deadline = _terminate(self.live(), sig)

    def wait_expired(self, live: list[_Task]) -> None:
        """``-W``: the SIGALRM branch of srun's signal thread (srun_job.c), then the step is aborted."""
        self.say(f"First task exited {self.wait_s}s ago")
        for what, ids in (("running", [t.task_id for t in live]),
                          ("exited abnormally", [t.task_id for t in self.tasks if t.status not in (None, 0)]),
                          ("exited", [t.task_id for t in self.tasks if t.status == 0])):
            if ids:
                self.say(f"{self.name} task{'s' if len(ids) > 1 else ''} {format_ranks(ids)}: {what}")
        self.cancel(signal.SIGKILL)
        self.aborted = True
        self.say(f"Job step aborted: Waiting up to {config.KILL_WAIT + config.STEP_ABORT_TIME} seconds for "
                 f"job step to finish.")

    def on_signal(self, live: list[_Task]) -> None:
        sig, self.loop.signal = self.loop.signal, None
        if sig == signal.SIGINT:  # passed on to the tasks (srun's first Ctrl-C)
            for t in live:
                _signal(t, sig)
            return
        self.say("forcing job termination")
        self.cancelled = True
        for t in live:
            _signal(t, signal.SIGKILL)


def _signal(t: _Task, sig: int) -> None:
    """Signal ``t``'s process group, if the task was started at all."""
    if t.proc is not None:
        procs.signal_group(t.proc, sig)


def _exit_status(pid: int) -> int:
    """The task's status without reaping it: a zombie keeps its process group id reserved for cleanup."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    if info is None:
        return 0
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _terminate(live: list[_Task], sig: int) -> float:
    for t in live:
        _signal(t, signal.SIGCONT)
        _signal(t, sig)
    return time.monotonic() + KILL_WAIT


def _kill_leftovers(tasks: list[_Task], tag: str | None) -> None:
    """SIGKILL what is left of the step: every task's group, then any process carrying the step's tag."""
    for t in tasks:
        if t.proc is not None:
            _signal(t, signal.SIGKILL)
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
    live = [t.proc for t in tasks if t.status is None and t.proc is not None]
    if live:
        procs.stop(live, grace=KILL_WAIT)
    _kill_leftovers(tasks, tag)
    for t in tasks:
        if t.proc is None:
            continue
        try:
            t.proc.wait(timeout=KILL_WAIT)
        except Exception:
            _signal(t, signal.SIGKILL)
        for stream in (t.proc.stdout, t.proc.stderr):
            if stream and not stream.closed:
                stream.close()
        if t.pidfd is not None:
            try:
                os.close(t.pidfd)
            except OSError:
                pass
