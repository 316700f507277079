"""Run the lab's commands while the site builds, and show what they printed.

Private helper for the pages in ``docs/``. markdown-exec execs a page's Python
blocks *inside* the MkDocs process and swaps their ``print`` for its own buffer,
so nothing here prints: every launch runs as a real subprocess (its own process
tree, its own pipes and sockets) and comes back as a :class:`Run`, whose
``str()`` is a fenced ``text`` block holding the command line and its output.
A page does::

    from clusterlab._docs import run
    print(run("simulate", "--nnodes", "2", "--nproc-per-node", "4", "examples/hello_ranks.py"))

Two rules keep a broken lab from publishing a broken page:

* every launch has a timeout; a hang kills the whole process tree and raises,
* an exit status other than ``expect`` raises (pages that show a failure on
  purpose pass the status they expect, and usually ``.expect_text(...)`` the
  lines that prove it).

markdown-exec turns the exception into a build warning, and ``mkdocs build
--strict`` turns the warning into a failed build.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from .procs import descendants, kill_all

#: The project root: markdown-exec's MkDocs plugin exports the directory of mkdocs.yml.
ROOT = Path(os.environ.get("MKDOCS_CONFIG_DIR") or Path(__file__).resolve().parents[2])

#: Variables a page's command must not inherit from whoever runs the build, so the
#: live output shows what the command itself sets up, not the builder's shell.
_LAUNCHER_VARS = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
    "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE",
    "TORCHELASTIC_RUN_ID", "CLUSTERLAB_CHANNEL",
)


class DocsRunError(RuntimeError):
    """A page's command did not do what the page says it does."""


@dataclass(frozen=True)
class Run:
    """One finished command: what ran, how it ended, and everything it printed."""

    shown: str  # the command line as a reader would type it
    returncode: int
    output: str  # stdout and stderr, merged in the order they were written
    seconds: float

    @property
    def command_line(self) -> str:
        """``$ command``, broken over lines that fit the page."""
        return f"$ {_wrap(self.shown)}"

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def expect_text(self, *needles: str) -> "Run":
        """Raise unless every ``needle`` occurs in the output (the proof the prose relies on)."""
        missing = [n for n in needles if n not in self.output]
        if missing:
            raise DocsRunError(f"`{self.shown}` printed none of {missing!r}; output was:\n{self.output}")
        return self

    def only(self, predicate) -> "Run":
        """The same run, showing only the lines for which ``predicate(line)`` is true."""
        kept = "\n".join(line for line in self.lines if predicate(line))
        return Run(self.shown, self.returncode, kept, self.seconds)

    def block(self, title: str | None = None) -> str:
        head = f'````text title="{title}"' if title else "````text"
        status = f"\n[exit status {self.returncode}]" if self.returncode else ""
        return f"{head}\n{self.command_line}\n{self.output.rstrip()}{status}\n````\n"

    def __str__(self) -> str:
        return self.block()


def _wrap(shown: str, width: int = 78) -> str:
    """Break a long command line the way a person would: at flags, with ``\\`` continuations."""
    if len(shown) <= width:
        return shown
    words = shlex.split(shown)
    units: list[str] = []  # a flag stays on the same line as its value
    for word in words:
        if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
            units[-1] += " " + shlex.quote(word)
        else:
            units.append(shlex.quote(word))
    lines, line = [], ""
    for unit in units:
        if line and len(line) + 1 + len(unit) > width - 2:
            lines.append(line)
            line = "    " + unit
        else:
            line = f"{line} {unit}" if line else unit
    lines.append(line)
    return " \\\n".join(lines)


def free_port() -> int:
    """A TCP port nobody listens on right now (for ``--master-port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh directory for a page's files (logs, traces), relative to :data:`ROOT`.

    Relative, so the command line a page shows stays short; fresh, so two builds
    running at once never read each other's files. Removed afterwards.
    """
    base = ROOT / "build" / "docs-runs"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    try:
        yield path.relative_to(ROOT)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    # "python" inside a command (srun's tasks, a batch script) means this build's Python too.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    env.update(extra or {})
    return env


def _shown(argv: list[str], env: dict[str, str] | None) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return f"{prefix} {shlex.join(argv)}".strip()


def _real(argv: list[str]) -> list[str]:
    """Spell the command as the build can run it: this interpreter, this package."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "clusterlab":
        return [sys.executable, "-m", "clusterlab", *argv[1:]]
    return argv


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = [*descendants([pid]), root]
    kill_all(family)
    psutil.wait_procs(family, timeout=5)


def _start(argv: list[str], env: dict[str, str] | None) -> subprocess.Popen:
    return subprocess.Popen(
        _real(argv), cwd=ROOT, env=_env(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _finish(proc: subprocess.Popen, shown: str, started: float, deadline: float, expect: int) -> Run:
    try:
        out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, _ = proc.communicate()
        raise DocsRunError(f"`{shown}` still ran after its timeout and was killed; output so far:\n{out}") from None
    result = Run(shown, proc.returncode, out, time.monotonic() - started)
    if proc.returncode != expect:
        raise DocsRunError(f"`{shown}` exited with {proc.returncode}, the page expects {expect}; output:\n{out}")
    return result


def command(*argv: str, expect: int = 0, timeout: float = 120, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` from the project root (``python`` and ``clusterlab`` mean this build's)."""
    shown = _shown(list(argv), env)
    started = time.monotonic()
    proc = _start(list(argv), env)
    return _finish(proc, shown, started, started + timeout, expect)


def run(*args: str, expect: int = 0, timeout: float = 120, env: dict[str, str] | None = None) -> Run:
    """Run ``clusterlab *args``."""
    return command("clusterlab", *args, expect=expect, timeout=timeout, env=env)


def together(*argvs: list[str], expect: int = 0, timeout: float = 120) -> list[Run]:
    """Start several commands at once (two terminals, two nodes) and wait for all of them."""
    started = time.monotonic()
    procs = [(list(a), _start(list(a), None)) for a in argvs]
    try:
        return [_finish(p, _shown(a, None), started, started + timeout, expect) for a, p in procs]
    finally:
        for _, p in procs:
            if p.poll() is None:
                _kill_tree(p.pid)
                p.communicate()
