"""Small helpers for tests that run the real launcher."""

from __future__ import annotations

import os
import re
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    """Read ``proc``'s output until a line matches ``pattern``; return the lines read so far."""
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return lines
    finally:
        sel.close()
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got: {lines[-20:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
