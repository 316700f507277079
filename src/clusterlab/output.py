"""Worker output: whole lines, each prefixed with who wrote it.

An agent reads every worker's stdout and stderr through pipes. Bytes arrive in
arbitrary chunks, so :class:`LineBuffer` keeps the unfinished tail of a line
until its newline comes; only whole lines are ever written out, each with one
``os.write`` call, so two ranks never share a line. Each line goes to the
console (unless ``--local-ranks-filter`` hides that rank) and, with
``--log-dir``, unprefixed into the rank's own log file.

The agents of a simulated cluster share one console. A write of at most
PIPE_BUF (4096) bytes to a pipe is atomic, a longer one is not, so a 20 KB line
from node0 could be cut in half by node1's lines: console writes therefore hold
a POSIX lock on the console (:func:`console_lock`), and agents take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections import deque


def log(message: str) -> None:
    """The launcher's own voice: one ``[clusterlab]`` line on stderr."""
    try:
        with console_lock(2):
            os.write(2, f"[clusterlab] {message}\n".encode())
    except OSError:
        pass


@contextlib.contextmanager
def console_lock(fd: int):
    """Hold a POSIX lock on the console (pipe, tty or file) while writing whole lines to it.

    ``lockf`` works on pipes and ttys and is per process, so agents sharing the
    console take turns. If the console cannot be locked, write anyway.
    """
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        except OSError:
            pass


def prefix(node_rank: int, rank: int, local_rank: int) -> bytes:
    """``[node1 rank5 local1] `` - the tag in front of every worker line."""
    return f"[node{node_rank} rank{rank} local{local_rank}] ".encode()


class LineBuffer:
    """Split a byte stream into complete lines (keeping their ``\\n``).

    A line longer than ``max_line`` bytes (a worker printing megabytes without a
    newline) is cut there and passed on, so memory stays bounded.
    """

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._partial = b""
        self._max = max_line

    @property
    def pending(self) -> bool:
        """Part of a line is waiting for its end."""
        return bool(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        lines = data[:cut].splitlines(keepends=True)
        while len(self._partial) > self._max:
            lines.append(self._partial[:self._max] + b"\n")
            self._partial = self._partial[self._max:]
        return lines

    def flush(self) -> list[bytes]:
        """At end of stream: the unterminated last line, given its newline."""
        rest, self._partial = self._partial, b""
        return [rest + b"\n"] if rest else []


class StreamPump:
    """One worker stream: lines to the console (prefixed), to a log file, and a short tail."""

    def __init__(self, tag: bytes, console_fd: int | None, log_path: str | None, tail: int = 0) -> None:
        self.tag = tag
        self.console_fd = console_fd
        self.lines = LineBuffer()
        self.tail: deque[str] = deque(maxlen=tail or None) if tail else deque(maxlen=0)
        self._log = open(log_path, "ab", buffering=0) if log_path else None

    def feed(self, data: bytes) -> None:
        self._emit(self.lines.feed(data))

    def close(self) -> None:
        self._emit(self.lines.flush())
        if self._log:
            self._log.close()
            self._log = None

    def _emit(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._log:
            self._log.write(b"".join(lines))
        if self.tail.maxlen:
            self.tail.extend(line.decode(errors="replace").rstrip("\n") for line in lines[-self.tail.maxlen:])
        if self.console_fd is not None:
            with console_lock(self.console_fd):
                _write_all(self.console_fd, b"".join(self.tag + line for line in lines))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [], 1.0)
            continue
        except BrokenPipeError:
            return  # nobody reads the console any more; the log files still get everything
        view = view[n:]
