"""The cache of the site's live runs: a run is done again exactly when something it depends on changed.

A page's command (``clusterlab simulate ... examples/crash.py``) takes seconds; the
site has dozens of them, and ``mkdocs serve`` rebuilds every page on every save.
So each finished run is stored under a key made of **everything its output depends
on**, and a later build with the same key reuses it:

* the command itself: every argument and every variable the page sets (a port the
  build picked, :data:`~clusterlab._docs.runs.FREE_PORT`, counts as "a free port",
  not as its number, which differs on every build);
* the files it names: every argument that is a file (or directory) of the project,
  and every project path those files mention in turn (``task_per_gpu.sbatch`` runs
  ``examples/slurm/rank_view.py``), by content;
* clusterlab's own source: every file of the package, by content;
* the environment that matters: the Python, the versions of the packages the runs
  import (torch, numpy, psutil, python-hostlist), the number of CPUs the runs may
  use (``simulate`` pins each node to its share), and the builder's variables that
  reach the runs (``CLUSTERLAB_*``, ``TORCH_*``, ``NCCL_*``, ``GLOO_*``, ``OMP_*``,
  ``SLURM_*``).

Edit an example and only the runs that name it (directly or through another file)
run again; edit clusterlab and every run does; edit prose and none does. There is
no "dirty" switch to forget: a stale entry cannot be found, because its key no
longer matches. What the key leaves out (the version of bash or setpriv on PATH,
the kernel) is what a run must not depend on.

Entries live in ``build/docs-cache/`` (``CLUSTERLAB_DOCS_CACHE=DIR`` moves it,
``CLUSTERLAB_DOCS_CACHE=off`` turns it off); an entry nobody used for a day is
removed after a build.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Bump when the stored format or the meaning of a key changes.
FORMAT = 1
#: Entries untouched for this long are removed after a build.
MAX_AGE = 24 * 3600
#: Distributions whose version a run's output may depend on.
DISTRIBUTIONS = ("torch", "numpy", "psutil", "python-hostlist")
#: ... and those a notebook's outputs may depend on too.
NOTEBOOK_DISTRIBUTIONS = ("matplotlib", "nbconvert", "ipykernel", "mkdocs-jupyter")
#: The builder's variables that reach a run and can change what it prints.
ENV_PREFIXES = ("CLUSTERLAB_", "TORCH_", "NCCL_", "GLOO_", "OMP_", "SLURM_")
#: ... except these: the test suite's per-test tag and this cache's own switch.
ENV_IGNORED = ("CLUSTERLAB_TEST_TAG", "CLUSTERLAB_DOCS_CACHE")
#: A project path mentioned inside a file: at least one directory and a file name.
_MENTION = re.compile(r"((?:[\w.-]+/)+[\w.-]+\.[A-Za-z0-9]+)")

PACKAGE = Path(__file__).resolve().parents[1]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_file_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """The sha256 of a file's content, remembered while its size and mtime stay the same."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    digest = _file_digests.get(key)
    if digest is None:
        digest = _file_digests[key] = _digest(path.read_bytes())
    return digest


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))


#: The file of this helper package a run depends on: how it is executed (its environment, its
#: working directory). The rest of ``_docs`` only stores runs (a change of what a key means
#: bumps :data:`FORMAT`) or shapes the page around them (hooks, folding, exercise rendering).
_DOCS_EXECUTOR = ("runs.py",)


_source: list[str] = []  # this build's source digest, once read


def source_digest(fresh: bool = False) -> str:
    """One digest of every file of the clusterlab package that a run can depend on.

    That is all of it (``__pycache__`` aside) except the site's own helpers in
    ``_docs/``, which no command imports, other than the one that runs commands.
    Read once per build (:func:`forget`), or afresh with ``fresh``.
    """
    if fresh or not _source:
        _source[:] = [package_digest(lambda p: p.parent.name != "_docs" or p.name in _DOCS_EXECUTOR)]
    return _source[0]


def package_digest(include=lambda path: True) -> str:
    """One digest of the package's files (those ``include`` accepts), by name and content."""
    files = [p for p in _files_under(PACKAGE) if include(p)]
    return _digest("\n".join(f"{p.relative_to(PACKAGE)} {file_digest(p)}" for p in files).encode())


_environments: dict[tuple[str, ...], dict] = {}


def forget() -> None:
    """Forget what was read of the environment and the source: the MkDocs hooks call it before every build."""
    _environments.clear()
    _source.clear()


def environment(distributions: tuple[str, ...] = DISTRIBUTIONS) -> dict:
    """What a run's output may depend on besides its command, its files and clusterlab.

    Read once per build (a package installed between two builds of ``mkdocs serve``
    is seen by the next one): asking importlib.metadata for every run would cost
    more than looking the run up.
    """
    if distributions not in _environments:
        _environments[distributions] = _read_environment(distributions)
    return _environments[distributions]


def _read_environment(distributions: tuple[str, ...]) -> dict:
    from importlib import metadata

    versions = {}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""  # (not installed)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    variables = {k: v for k, v in sorted(os.environ.items())
                 if k.startswith(ENV_PREFIXES) and k not in ENV_IGNORED}
    return {"python": sys.version, "executable": sys.executable, "machine": platform.machine(),
            "cpus": cpus, "distributions": versions, "variables": variables}


def mentioned_files(root: Path, words: list[str]) -> dict[str, str]:
    """The project files ``words`` name, and the files those mention, each with its digest.

    A word names a file if it is a path relative to ``root`` (also after ``--flag=``);
    a directory stands for every file under it. A file mentions another if its text
    contains that path. Over-counting costs a needless re-run, never a stale page.
    """
    found: dict[str, str] = {}
    todo = []
    for word in words:
        todo.append(word)
        if word.startswith("-") and "=" in word:
            todo.append(word.split("=", 1)[1])
    root = root.resolve()
    while todo:
        word = todo.pop()
        if not word or "\0" in word or len(word) > 4096:
            continue
        path = (root / word)
        try:
            resolved = path.resolve()
            resolved.relative_to(root)
        except (ValueError, OSError):
            continue
        files = _files_under(resolved) if resolved.is_dir() else [resolved] if resolved.is_file() else []
        for file in files:
            name = file.relative_to(root).as_posix()
            if name in found:
                continue
            found[name] = file_digest(file)
            todo.extend(_mentions(file))
    return dict(sorted(found.items()))


_file_mentions: dict[tuple[str, int, int], list[str]] = {}


def _mentions(path: Path) -> list[str]:
    """The paths a file's text mentions (remembered while its size and mtime stay the same)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _file_mentions:
        text = path.read_bytes()[: 1 << 20].decode("utf-8", errors="replace")
        found = []
        for m in _MENTION.finditer(text):
            # "$SLURM_SUBMIT_DIR/examples/x.py" mentions examples/x.py: try every tail of the path
            parts = m.group(1).split("/")
            found += ["/".join(parts[i:]) for i in range(len(parts) - 1)]
        _file_mentions[key] = found
    return _file_mentions[key]


def key(recipe: dict, root: Path, fresh: bool = False) -> str:
    """The cache key of a run described by ``recipe`` (its commands and variables, JSON-able).

    ``fresh`` reads clusterlab's source again rather than this build's first reading
    (to see whether it changed while a run ran).
    """
    words = [w for argv in recipe["argvs"] for w in argv] + list(recipe.get("env", {}).values())
    material = {
        "format": FORMAT,
        "recipe": recipe,
        "files": mentioned_files(root, words),
        "clusterlab": source_digest(fresh),
        "environment": environment(),
    }
    return _digest(json.dumps(material, sort_keys=True).encode())


@dataclass
class Stats:
    """What one build did: the runs it took from the cache and the ones it executed."""

    hits: int = 0
    executed: list[tuple[str, float]] = field(default_factory=list)

    def reset(self) -> None:
        self.hits = 0
        self.executed.clear()

    def summary(self) -> str:
        spent = sum(seconds for _, seconds in self.executed)
        return (f"{self.hits + len(self.executed)} live run(s): {self.hits} from the cache, "
                f"{len(self.executed)} executed ({spent:.1f} s)")


#: This build's counts (the MkDocs hooks reset and report them).
STATS = Stats()


def directory(root: Path) -> Path | None:
    """Where entries live: ``CLUSTERLAB_DOCS_CACHE``, else ``ROOT/build/docs-cache``; None when turned off."""
    setting = os.environ.get("CLUSTERLAB_DOCS_CACHE", "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else root / "build" / "docs-cache"


def load(root: Path, digest: str) -> dict | None:
    """The stored entry for ``digest``, or None; a hit is touched, so eviction spares it."""
    base = directory(root)
    if base is None:
        return None
    path = base / "runs" / f"{digest}.json"
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        os.utime(path)
    except (OSError, ValueError):
        return None
    return entry if entry.get("format") == FORMAT else None


def store(root: Path, digest: str, entry: dict) -> None:
    """Write an entry atomically (a build running at the same time reads all of it or nothing)."""
    base = directory(root)
    if base is None:
        return
    runs = base / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=runs, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, **entry}, f)
    os.replace(tmp, runs / f"{digest}.json")


def evict(root: Path, max_age: float = MAX_AGE) -> int:
    """Remove entries (and notebook caches) nobody used for ``max_age`` seconds; how many went."""
    base = directory(root)
    if base is None or not base.is_dir():
        return 0
    limit = time.time() - max_age
    gone = 0
    for path in (base / "runs").glob("*.json"):
        try:
            if path.stat().st_mtime < limit:
                path.unlink()
                gone += 1
        except OSError:
            continue
    for old in (base / "notebooks").glob("*"):  # the current one is touched by every build
        try:
            if old.is_dir() and old.stat().st_mtime < limit:
                shutil.rmtree(old)
                gone += 1
        except OSError:
            continue
    return gone


def notebook_directory(root: Path) -> Path | None:
    """mkdocs-jupyter's cache directory for this clusterlab and this environment.

    mkdocs-jupyter keys a notebook's cache on the notebook alone; putting its
    directory under a digest of clusterlab's source and of the environment makes
    a notebook run again whenever the code it imports changes.
    """
    base = directory(root)
    if base is None:
        return None
    env = environment(DISTRIBUTIONS + NOTEBOOK_DISTRIBUTIONS)
    fingerprint = _digest(json.dumps([FORMAT, source_digest(), env], sort_keys=True).encode())
    path = base / "notebooks" / fingerprint[:16]
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)
    return path


#: The whole package's source when this module was imported (the hooks compare it with the source now).
IMPORTED_SOURCE = package_digest()
