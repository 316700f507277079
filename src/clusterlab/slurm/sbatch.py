"""``sbatch``: read a batch script's ``#SBATCH`` directives, grant the allocation, run the script here.

**Directives** (sbatch(1), DESCRIPTION): lines that start with ``#SBATCH`` before
the first line that is neither blank nor a comment. After that line they are
ordinary comments, silently ignored - a classic way to lose ``--gpus-per-node``.
``# SBATCH`` (with a space) or ``##SBATCH`` is just a comment. A directive is
read like command-line options (``--nodes=2``, ``--nodes 2``, ``-N2``, ``-N 2``);
text after a ``#`` that follows a space is a comment.

**Precedence** (highest first): options on the sbatch command line, then
``SBATCH_*`` input environment variables (``SBATCH_JOB_NAME``,
``SBATCH_GPUS_PER_NODE`` ...), then directives.

**Running** mimics what slurmd does on the first node: the job's nodes become
hosts (``--hosts``, :mod:`clusterlab.host`: one keeper per node holds its
namespaces), the script is copied to a job directory as ``slurm_script`` (so
``$0`` is *not* your file, as on a real cluster) and started on the first node
(``hostname`` says ``node001``), in ``--chdir`` or the submission directory, with
the batch environment (:func:`~clusterlab.slurm.environ.batch_env`) and a ``bin``
directory first on ``PATH`` whose ``srun`` and ``scontrol`` are clusterlab's
(plus ``clusterlab``, ``python`` - the lab's interpreter, as if its virtual
environment were activated on every node - and ``torchrun``, see :func:`make_job_dir`).
Each ``srun`` in the script takes the next step id from a counter file in the
job directory. Unlike real sbatch, this one waits for the job (``sbatch
--wait``), its exit status is the script's, and output goes to the terminal
unless ``--output``/``--error`` name files (``%j`` job id, ``%x`` job name).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO

from .. import host, procs
from ..errors import UsageError
from ..keepers import Keepers
from . import config, options
from .environ import JOB_DIR_ENV, Runtime, batch_env, fallback_env, slurm_free
from .job import Allocation
from .srun import TASK_PID_SHELL, open_port

DIRECTIVE = "#SBATCH"


@dataclass(frozen=True)
class Script:
    """A batch script, split the way sbatch reads it."""

    path: str
    lines: tuple[str, ...]
    directives: dict  # dest -> options.Value (source "line N")
    directive_lines: tuple[int, ...]
    first_command: int | None  # line number of the first command: directives stop there
    ignored_directives: tuple[int, ...]  # #SBATCH lines after the first command


def read_script(path: str) -> Script:
    """Read ``path`` and its directives; a malformed directive is an error naming its line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"sbatch: script {path!r} not found; give the path of a batch script") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise UsageError(f"sbatch: cannot read {path!r} as a batch script ({exc.__class__.__name__})") from None
    return parse_script(text, path)


def parse_script(text: str, path: str = "<script>") -> Script:
    lines = tuple(text.splitlines())
    if not lines or not lines[0].startswith("#!"):
        raise UsageError(f"sbatch: {path}: line 1: this does not look like a batch script: the first line must "
                         f"start with #! followed by the path to an interpreter, e.g. #!/bin/bash")
    values: dict = {}
    directive_lines, ignored = [], []
    first_command = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if line.startswith(DIRECTIVE) and (len(line) == len(DIRECTIVE) or line[len(DIRECTIVE)].isspace()):
            if first_command is not None:
                ignored.append(number)
                continue
            where = f"{path}: line {number}"
            try:
                tokens = shlex.split(line[len(DIRECTIVE):], comments=True)
            except ValueError as exc:
                raise UsageError(f"sbatch: {where}: cannot read {line.strip()!r} ({exc}); close the quote") from None
            if not tokens:
                raise UsageError(f"sbatch: {where}: an #SBATCH line without an option; write e.g. #SBATCH --nodes=2")
            found, _ = options.parse(tokens, "sbatch", where=f"line {number}", stop_at_positional=False)
            for dest in set(found) & set(options.CLUSTERLAB_ONLY):
                raise UsageError(f"sbatch: {where}: {found[dest].option} is clusterlab's own option, which real "
                                 f"sbatch rejects; give it on the command line: clusterlab sbatch "
                                 f"{found[dest].option}={found[dest].value} {path}")
            values.update(found)
            directive_lines.append(number)
        elif first_command is None and stripped and not stripped.startswith("#"):
            first_command = number
    return Script(path, lines, values, tuple(directive_lines), first_command, tuple(ignored))


def merge(script: Script, env, cli: dict) -> dict:
    """Command line over ``SBATCH_*`` environment over directives."""
    return {**script.directives, **options.from_env(env), **cli}


def new_job_id(env=None) -> int:
    """A fresh job id (``CLUSTERLAB_SLURM_JOB_ID`` pins it, e.g. for reproducible docs)."""
    env = os.environ if env is None else env
    pinned = env.get("CLUSTERLAB_SLURM_JOB_ID")
    if pinned:
        if not pinned.isdigit():
            raise UsageError(f"CLUSTERLAB_SLURM_JOB_ID={pinned!r} is not a whole number; unset it or use e.g. 4242")
        return int(pinned)
    return 100000 + secrets.randbelow(900000)


def next_step_id(job_dir: str) -> int:
    """0, 1, 2 ... one per srun of the job, safe against sruns started in parallel (``srun ... &``)."""
    path = os.path.join(job_dir, "step_counter")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 32).decode().strip()
        step = int(raw) if raw.isdigit() else 0
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(step + 1).encode())
        return step
    finally:
        os.close(fd)  # closing releases the lock


def make_job_dir(alloc: Allocation, shims: bool = True, torch: bool | None = None) -> str:
    """The job's scratch directory: allocation, step counter, the simulated cluster's slurm.conf
    (the job's ``SLURM_CONF``) and the ``bin`` directory put first on the job's ``PATH``.

    ``bin`` holds clusterlab's ``srun`` and ``scontrol``, ``clusterlab``, the lab's
    interpreter as ``python``/``python3`` (as if its virtual environment were active on
    every node), and ``torchrun``: the real one when ``torch`` is installed (default: look),
    else :data:`TORCHRUN_STANDIN`, which runs ``clusterlab launch`` with the same arguments
    and says so in one line on stderr - and so does ``python -m torch.distributed.run``.
    """
    job_dir = tempfile.mkdtemp(prefix=f"clusterlab-job{alloc.job_id}-")
    alloc.save(os.path.join(job_dir, "allocation.json"))
    with open(os.path.join(job_dir, "slurm.conf"), "w") as f:
        f.write(config.slurm_conf())
    if not shims:
        return job_dir
    if torch is None:
        import importlib.util

        torch = importlib.util.find_spec("torch") is not None
    bin_dir = os.path.join(job_dir, "bin")
    os.mkdir(bin_dir)
    python = shlex.quote(sys.executable)
    scripts = {name: f"exec {python} -m clusterlab {name} \"$@\"" for name in ("srun", "scontrol")}
    scripts["clusterlab"] = f"exec {python} -m clusterlab \"$@\""
    scripts["python"] = scripts["python3"] = f"exec {python} \"$@\""
    # torch's own console script, installed beside the interpreter (else the module it runs)
    real = os.path.join(os.path.dirname(sys.executable), "torchrun")
    scripts["torchrun"] = (f"exec {shlex.quote(real)} \"$@\"" if os.access(real, os.X_OK) else
                           f"exec {python} -m torch.distributed.run \"$@\"")
    if not torch:
        standin = TORCHRUN_STANDIN.format(python=python)
        scripts["torchrun"] = standin
        scripts["python"] = scripts["python3"] = (
            f'case "$1:$2:$3" in\n-m:torch.distributed.run:*) shift 2\n{standin};;\n'
            f'-u:-m:torch.distributed.run) shift 3\n{standin};;\nesac\n{scripts["python"]}')
    for name, body in scripts.items():
        shim = os.path.join(bin_dir, name)
        with open(shim, "w") as f:
            f.write(f"#!/bin/sh\n# clusterlab's {name} for simulated job {alloc.job_id}\n{body}\n")
        os.chmod(shim, 0o755)
    return job_dir


#: The job's ``torchrun`` where torch is not installed (a line of shell; ``{python}``: the lab's).
TORCHRUN_STANDIN = ('echo "torchrun: torch is not installed here; running \\`clusterlab launch\\` with the same '
                    'arguments instead (pip install torch==2.13.0 for the real torchrun)" >&2\n'
                    'exec {python} -m clusterlab launch "$@"')


def start_watchdog(job_dir: str, keepers: Keepers | None = None) -> tuple[int, int]:
    """Fork the job's watchdog; return its pid and the write end of its lifeline.

    The watchdog leaves our session (a signal to our process group does not reach it)
    and blocks on the lifeline, a pipe whose only write end this process holds. When
    the pipe closes - at the end of the job, or because this process died, even by
    SIGKILL - it kills every process that still carries the job's mark
    (:data:`~clusterlab.slurm.environ.JOB_DIR_ENV`: the batch shell, its sruns, their
    tasks, anything they started), then the job's ``keepers`` if any is still alive
    (they die with this process anyway, by ``PR_SET_PDEATHSIG``; a pid is killed only
    while it still holds its node's namespace), and removes the job directory, as
    slurmd does when a job ends. Without it, a SIGKILLed sbatch left the batch script
    and its steps running with ppid 1.
    """
    read_end, write_end = os.pipe()
    held = list(zip(keepers.pids, keepers.inodes)) if keepers is not None else []
    pid = os.fork()
    if pid == 0:  # the watchdog
        try:
            os.close(write_end)
            os.setsid()
            quiet = os.open(os.devnull, os.O_RDWR)  # hold no pipe of our caller's open (nor the keepers' lifeline)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            os.closerange(3, read_end)
            os.closerange(read_end + 1, os.sysconf("SC_OPEN_MAX"))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(sig, signal.SIG_IGN)
            while os.read(read_end, 64):
                pass
            procs.kill_tagged(JOB_DIR_ENV, job_dir)
            for keeper, inode in held:
                try:
                    if os.stat(f"/proc/{keeper}/ns/uts").st_ino == inode:
                        os.kill(keeper, signal.SIGKILL)
                except OSError:
                    pass
            shutil.rmtree(job_dir, ignore_errors=True)
        finally:
            os._exit(0)
    os.close(read_end)
    return pid, write_end


def _output_path(pattern: str, alloc: Allocation) -> str:
    return (pattern.replace("%%", "\0").replace("%j", str(alloc.job_id)).replace("%x", alloc.job_name)
            .replace("%N", alloc.nodes[0]).replace("\0", "%"))


def run_batch(script: Script, alloc: Allocation, values: dict, script_args: list[str], hosts_mode: str = "auto") -> int:
    """Run the batch script on the job's first node; return its exit status.

    The job's nodes become hosts first (``hosts_mode``, :mod:`clusterlab.host`): one keeper
    per node holds its namespaces until the job ends, the batch shell starts inside the
    first node's (``hostname`` says ``node001``), and every ``srun`` of the script finds
    the keepers through the environment (:meth:`Keepers.environ`).
    """
    cwd = str(values["chdir"].value) if "chdir" in values else os.getcwd()
    if not os.path.isdir(cwd):
        raise UsageError(f"sbatch: --chdir={cwd!r} is not a directory")
    plan = host.plan(alloc.nodes, hosts_mode)
    job_dir = make_job_dir(alloc)
    keepers = None
    try:
        keepers = Keepers.start(plan) if plan.via != "off" else None
        watchdog, lifeline = start_watchdog(job_dir, keepers)
    except BaseException:
        if keepers is not None:
            keepers.close()
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    controller = open_port()  # the simulated controller's port, as in SLURM_WORKING_CLUSTER
    try:
        copy = os.path.join(job_dir, "slurm_script")
        with open(copy, "w", encoding="utf-8") as f:  # the text already read: the script may be a pipe (/dev/stdin)
            f.write("\n".join(script.lines) + "\n")
        os.chmod(copy, 0o700)
        env = slurm_free(os.environ)
        env.update(batch_env(alloc, Runtime(os.path.join(job_dir, "slurm.conf"), controller.getsockname()[1])))
        env.update(keepers.environ() if keepers is not None else fallback_env(alloc))
        env[JOB_DIR_ENV] = job_dir
        env["PATH"] = os.path.join(job_dir, "bin") + os.pathsep + env.get("PATH", os.defpath)
        print(f"Submitted batch job {alloc.job_id}", flush=True)  # all real sbatch prints
        if plan.note:  # auto fell back: the one line, on stderr
            print(f"sbatch: {plan.note}", file=sys.stderr, flush=True)
        files: list[IO[bytes]] = []
        try:
            out: IO[bytes] | None = None
            err: IO[bytes] | int | None = None
            if "output" in values:
                out = open(_output_path(str(values["output"].value), alloc), "ab")
                files.append(out)
            if "error" in values:
                err = open(_output_path(str(values["error"].value), alloc), "ab")
                files.append(err)
            elif out is not None:
                err = subprocess.STDOUT  # sbatch: stderr goes with stdout unless --error is given
            enter = keepers.enter_argv(0, cwd) if keepers is not None else []
            proc = subprocess.Popen([*enter, "/bin/sh", "-c", TASK_PID_SHELL, copy, *script_args], env=env, cwd=cwd,
                                    stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            return _wait_batch(proc)
        finally:
            for opened in files:
                opened.close()
    finally:
        controller.close()
        _kill_job(job_dir)
        if keepers is not None:
            keepers.close()  # the job's namespaces and mounts go with the last keeper
        shutil.rmtree(job_dir, ignore_errors=True)
        os.close(lifeline)  # the watchdog finds nothing left, and exits
        os.waitpid(watchdog, 0)


def _wait_batch(proc: subprocess.Popen) -> int:
    """Wait for the batch shell; a signal to sbatch is passed on to the whole job, like scancel."""
    def forward(sig, _frame):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=1.0)
                return 128 - code if code < 0 else code
            except subprocess.TimeoutExpired:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _kill_job(job_dir: str) -> None:
    """End of job: every process that still carries the job's environment is killed (slurmd's cleanup)."""
    procs.kill_tagged(JOB_DIR_ENV, job_dir)
