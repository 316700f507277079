"""Run the lab's commands while the site builds, and show what they printed.

markdown-exec execs a page's Python blocks *inside* the MkDocs process and swaps
their ``print`` for its own buffer, so nothing here prints: every launch runs as a
real subprocess (its own process tree, its own pipes and sockets) and comes back as
a :class:`Run`, whose ``str()`` is a fenced ``text`` block holding the command line
and its output. A page does::

    from clusterlab._docs import run
    print(run("simulate", "--nnodes", "2", "--nproc-per-node", "4", "examples/hello_ranks.py"))

Three rules keep a broken lab from publishing a broken page, and a page honest:

* every launch has a timeout; a hang kills the whole process tree and raises;
* an exit status other than ``expect`` raises (pages that show a failure on
  purpose pass the status they expect, and usually ``.expect_text(...)`` the
  lines that prove it);
* the command shown is the command that ran, from the repository root, so it
  works when pasted there. A run whose files the page reads (``--log-dir logs``,
  ``--barrier-trace trace.jsonl``) passes ``files=True``: it runs in a fresh
  directory that sees the project's files under their usual names (symlinks), and
  what it wrote comes back in :attr:`Run.files`. No scratch path reaches a page.

markdown-exec turns the exception into a build warning, and ``mkdocs build
--strict`` turns the warning into a failed build. Finished runs are cached, keyed
on everything they depend on (:mod:`clusterlab._docs.cache`).
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ..procs import descendants, kill_all
from . import cache
from .fold import fold

#: The project root: markdown-exec's MkDocs plugin exports the directory of mkdocs.yml.
ROOT = Path(os.environ.get("MKDOCS_CONFIG_DIR") or Path(__file__).resolve().parents[3])

#: Variables a page's command must not inherit from whoever runs the build, so the
#: live output shows what the command itself sets up, not the builder's shell.
_LAUNCHER_VARS = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
    "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE",
    "TORCHELASTIC_RUN_ID", "CLUSTERLAB_CHANNEL",
)
#: Entries of the project root a run's working directory does not see.
_NOT_LINKED = {"build", "site", "test-artifacts"}
#: The files a run may leave behind for the page to read, at most (bytes).
_MAX_FILES = 4 << 20


class DocsRunError(RuntimeError):
    """A page's command did not do what the page says it does."""


class _FreePort:
    """Stands in a command or a variable for a TCP port nobody listens on (see :data:`FREE_PORT`),
    after ``prefix`` (``FREE_PORT.after("127.0.0.1:")`` stands for ``127.0.0.1:<the port>``)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def after(self, prefix: str) -> "_FreePort":
        return _FreePort(prefix)

    def __repr__(self) -> str:
        return f"FREE_PORT.after({self.prefix!r})" if self.prefix else "FREE_PORT"


#: Put this where a command needs a port (``--master-port``, ``MASTER_PORT``): the run gets
#: a free one, the same everywhere in one call. The cache counts it as "a free port", so a
#: run with a different number is still the same run.
FREE_PORT = _FreePort()


@dataclass(frozen=True)
class Run:
    """One finished command: what ran, how it ended, everything it printed, the files it wrote."""

    shown: str  # the command line as a reader would type it
    returncode: int
    output: str  # stdout and stderr, merged in the order they were written
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text, written by the run

    @property
    def command_line(self) -> str:
        """``$ command``, broken over lines that fit the page."""
        return f"$ {_wrap(self.shown)}"

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def expect_text(self, *needles: str) -> Run:
        """Raise unless every ``needle`` occurs in the output (the proof the prose relies on)."""
        missing = [n for n in needles if n not in self.output]
        if missing:
            raise DocsRunError(f"`{self.shown}` printed none of {missing!r}; output was:\n{self.output}")
        return self

    def only(self, predicate) -> Run:
        """The same run, showing only the lines for which ``predicate(line)`` is true."""
        kept = "\n".join(line for line in self.lines if predicate(line))
        return Run(self.shown, self.returncode, kept, self.seconds, self.files)

    def file(self, name: str) -> str:
        """The text of a file the run wrote (``name`` relative to where it ran)."""
        if name not in self.files:
            raise DocsRunError(f"`{self.shown}` wrote no file {name!r}; it wrote {sorted(self.files)}")
        return self.files[name]

    def block(self, title: str | None = None) -> str:
        """The whole run as one fenced text block."""
        return _fence(self._body(self.lines), title)

    def fold(self, keep=None, *, head: int = 8, tail: int = 6, at=None, title: str | None = None) -> str:
        """A short excerpt, then the whole run folded away behind a collapsible note.

        The excerpt holds the lines numbered in ``at``, or those for which
        ``keep(line)`` is true, or else the first ``head`` and the last ``tail``
        lines; a marker says how many lines each gap hides. A short run is shown
        whole unless lines were picked.
        """
        return fold(self.command_line, self.lines, self._status(), keep=keep, head=head, tail=tail, at=at, title=title)

    def __str__(self) -> str:
        return self.fold()

    def _status(self) -> str:
        return f"[exit status {self.returncode}]" if self.returncode else ""

    def _body(self, lines: list[str]) -> list[str]:
        return [self.command_line, *lines, *([self._status()] if self.returncode else [])]


def _fence(lines: list[str], title: str | None = None) -> str:
    head = f'````text title="{title}"' if title else "````text"
    return "\n".join([head, *lines, "````"]) + "\n"


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
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    # The runs leave no __pycache__ behind in src/ or examples/, which `mkdocs serve` watches:
    # a .pyc written by a run would trigger a second rebuild after every edit.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
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


def _workdir() -> Path:
    """A fresh directory in which the project's files appear under their usual names (symlinks)."""
    base = ROOT / "build" / "docs-runs"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base))
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name not in _NOT_LINKED:
            (path / entry.name).symlink_to(entry)
    return path


def _written(workdir: Path) -> dict[str, str]:
    """The regular files a run created in its working directory (not the project's links)."""
    files, total = {}, 0
    for here, dirs, names in os.walk(workdir):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(here, d))]
        for name in names:
            path = Path(here, name)
            if path.is_symlink():
                continue
            total += path.stat().st_size
            if total > _MAX_FILES:
                raise DocsRunError(f"a page's command wrote more than {_MAX_FILES >> 20} MB into {workdir}")
            files[path.relative_to(workdir).as_posix()] = path.read_text(encoding="utf-8", errors="replace")
    return dict(sorted(files.items()))


def _start(argv: list[str], env: dict[str, str] | None, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        _real(argv), cwd=cwd, env=_env(env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


def _finish(proc: subprocess.Popen, shown: str, started: float, deadline: float) -> tuple[str, int, float]:
    try:
        out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        out, _ = proc.communicate()
        raise DocsRunError(f"`{shown}` still ran after its timeout and was killed; output so far:\n{out}") from None
    return out, proc.returncode, time.monotonic() - started


def _substitute(argv, env, port: str) -> tuple[list[str], dict[str, str]]:
    def one(value) -> str:
        if isinstance(value, _FreePort):
            return value.prefix + port
        if not isinstance(value, str):
            raise TypeError(f"a command's words and variables are strings (or FREE_PORT), not {value!r}")
        return value

    return [one(a) for a in argv], {k: one(v) for k, v in (env or {}).items()}


def _spelled(value) -> str:
    return value.prefix + "<free port>" if isinstance(value, _FreePort) else value


def _execute(argvs: list[list], env: dict | None, timeout: float, files: bool) -> list[Run]:
    """Start every command at once (from the root, or with ``files`` in a fresh directory), wait for all."""
    port = str(free_port())
    workdir = _workdir() if files else ROOT
    procs = []
    try:
        started = time.monotonic()
        for argv in argvs:
            real_argv, real_env = _substitute(argv, env, port)
            shown = _shown(real_argv, real_env)
            procs.append((shown, _start(real_argv, real_env, workdir)))
        finished = [_finish(p, shown, started, started + timeout) for shown, p in procs]
        written = _written(workdir) if files else {}
    finally:
        for _, p in procs:
            if p.poll() is None:
                _kill_tree(p.pid)
                p.communicate()
        if files:
            shutil.rmtree(workdir, ignore_errors=True)
    return [Run(shown, code, out, seconds, written) for (shown, _), (out, code, seconds) in zip(procs, finished)]


def _go(argvs: list[list], env: dict | None, expect: int, timeout: float, files: bool = False) -> list[Run]:
    """Take the runs from the cache, or execute them; check their exit status either way."""
    recipe = {"argvs": [[_spelled(a) for a in argv] for argv in argvs],
              "env": {k: _spelled(v) for k, v in (env or {}).items()}, "files": files}
    digest = cache.key(recipe, ROOT)
    entry = cache.load(ROOT, digest)
    if entry is not None:
        cache.STATS.hits += 1
        return _checked([Run(**r) for r in entry["runs"]], expect)
    runs = _execute(argvs, env, timeout, files)
    cache.STATS.executed.append((" & ".join(r.shown for r in runs), max(r.seconds for r in runs)))
    _checked(runs, expect)  # only a run that did what the page expects is kept
    if cache.key(recipe, ROOT, fresh=True) == digest:  # nothing it depends on changed while it ran
        cache.store(ROOT, digest, {"runs": [asdict(r) for r in runs]})
    return runs


def _checked(runs: list[Run], expect: int) -> list[Run]:
    for r in runs:
        if r.returncode != expect:
            raise DocsRunError(f"`{r.shown}` exited with {r.returncode}, the page expects {expect}; output:\n{r.output}")
    return runs


def command(*argv, expect: int = 0, timeout: float = 120, env: dict | None = None, files: bool = False) -> Run:
    """Run ``argv`` from the repository root (``python`` and ``clusterlab`` mean this build's).

    ``files=True``: in a fresh directory instead, keeping what the command wrote in ``Run.files``.
    """
    return _go([list(argv)], env, expect, timeout, files)[0]


def run(*args, expect: int = 0, timeout: float = 120, env: dict | None = None, files: bool = False) -> Run:
    """Run ``clusterlab *args``."""
    return command("clusterlab", *args, expect=expect, timeout=timeout, env=env, files=files)


def together(*argvs: list, expect: int = 0, timeout: float = 120) -> list[Run]:
    """Start several commands at once (two terminals, two nodes) and wait for all of them."""
    return _go([list(a) for a in argvs], None, expect, timeout)
