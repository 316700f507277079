"""Small helpers for tests that run the real launcher."""

from __future__ import annotations

import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

from clusterlab.rendezvous import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[node(\d+) rank(\d+) local(\d+)\] (.*)$")


def clusterlab(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m clusterlab ARGS`` to the end and capture its output."""
    return subprocess.run([sys.executable, "-m", "clusterlab", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=kwargs.pop("cwd", ROOT), **kwargs)


def start(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clusterlab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=kwargs.pop("cwd", ROOT), **kwargs)


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 30) -> list[str]:
    """Read ``proc``'s output until a line matches ``pattern``; return the lines read so far.

    Reads the pipe with ``os.read`` and keeps unconsumed lines on ``proc``: a
    buffered ``readline`` after ``select`` would strand lines that arrived in the
    same chunk, and the next call would wait for them in vain.
    """
    pending = proc.__dict__.setdefault("_pending", [])
    partial = proc.__dict__.setdefault("_partial", [b""])
    fd = proc.stdout.fileno()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while pending:
                line = pending.pop(0)
                lines.append(line)
                if re.search(pattern, line):
                    return lines
            if time.monotonic() >= deadline or not sel.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data = partial[0] + chunk
            *complete, partial[0] = data.split(b"\n")
            pending += [c.decode(errors="replace") for c in complete]
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got: {lines[-20:]}")


def rank_lines(text: str) -> dict[int, list[str]]:
    """Worker lines by global rank; asserts each prefix is consistent with the 4-per-node... caller checks."""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out.setdefault(int(m.group(2)), []).append(m.group(4))
    return out


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o755)
    return path


def needs_docs() -> None:
    """Skip the calling test module, with the reason, when the docs extra is not installed."""
    import importlib.util

    import pytest

    missing = [m for m in ("mkdocs", "material", "markdown_exec", "mkdocs_jupyter", "matplotlib")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs extra is not installed ({', '.join(missing)} missing): "
                    "pip install -e '.[docs]', which `make test` does", allow_module_level=True)
