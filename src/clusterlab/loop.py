"""The agent's event loop: one thread, one ``epoll`` set, nothing blocks.

An agent juggles dozens of file descriptors: each worker's stdout, stderr and
two collective pipes, a pidfd per worker (readable when it exits), TCP
connections to the other agents, and a self-pipe that signals wake up. Every one
is registered here with a handler; :meth:`Loop.poll` calls the handlers of those
that are ready, and returns after at most ``timeout`` seconds so the agent can
check its deadlines.

Writes go through an :class:`Outbox`: whatever the reader (a busy worker, a
slow peer) cannot take yet waits in a buffer, and the loop finishes the write
when the descriptor becomes writable. So the loop never blocks on a reader, and
two agents writing to each other can never deadlock.
"""

from __future__ import annotations

import os
import select
import signal

READ, WRITE = select.EPOLLIN, select.EPOLLOUT
#: what wakes a read handler: data, or the other end closed or failed (the read then returns b"")
_READABLE = ~select.EPOLLOUT
#: what wakes a write handler: room to write, or the reader gone (the write then fails)
_WRITABLE = ~select.EPOLLIN


class Loop:
    """File descriptors with read/write handlers, and signals turned into a flag."""

    def __init__(self) -> None:
        # epoll directly rather than ``selectors``: an agent polls once or twice per barrier
        # per node, and the selectors layer cost more than the system call it wraps.
        self.ep = select.epoll()
        self._masks: dict[int, int] = {}
        self._handlers: dict[int, list] = {}
        #: the first of SIGINT/SIGTERM/SIGHUP received, once :meth:`catch_signals` is on
        self.signal: int | None = None

    def on_read(self, fd: int, handler) -> None:
        """Call ``handler()`` whenever ``fd`` is readable."""
        self._handlers.setdefault(fd, [None, None])[0] = handler
        self._set(fd, READ, True)

    def on_write(self, fd: int, handler) -> None:
        """Remember ``handler`` for ``fd``; it is called while :meth:`want_write` is on."""
        self._handlers.setdefault(fd, [None, None])[1] = handler

    def want_write(self, fd: int, on: bool) -> None:
        self._set(fd, WRITE, on)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        if self._masks.pop(fd, 0):
            self.ep.unregister(fd)
        self._handlers.pop(fd, None)

    def _set(self, fd: int, event: int, on: bool) -> None:
        old = self._masks.get(fd, 0)
        new = (old | event) if on else (old & ~event)
        if new == old:
            return
        if old == 0:
            self.ep.register(fd, new)
        elif new == 0:
            self.ep.unregister(fd)
        else:
            self.ep.modify(fd, new)
        if new:
            self._masks[fd] = new
        else:
            self._masks.pop(fd, None)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds, then run the handlers of every ready descriptor."""
        handlers = self._handlers
        for fd, events in self.ep.poll(max(0.0, timeout)):
            h = handlers.get(fd)
            if h is not None and events & _READABLE and self._masks.get(fd, 0) & READ:
                h[0]()
                h = handlers.get(fd)
            if h is not None and events & _WRITABLE and h[1] and self._masks.get(fd, 0) & WRITE:
                h[1]()

    def catch_signals(self) -> None:
        """SIGINT, SIGTERM and SIGHUP set :attr:`signal` and wake :meth:`poll` (a self-pipe)."""
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        self.on_read(rfd, lambda: os.read(rfd, 512))
        caught = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        for sig in caught:
            signal.signal(sig, self._on_signal)
        # `clusterlab simulate` forks its agents with these blocked: any that came meanwhile land now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, caught)

    def _on_signal(self, signum, _frame) -> None:
        if self.signal is None:
            self.signal = signum

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        self.ep.close()


class Outbox:
    """A non-blocking writer with a buffer: the loop never blocks on a slow reader."""

    def __init__(self, loop: Loop, fd: int) -> None:
        self.loop, self.fd, self.buf, self.broken = loop, fd, bytearray(), False
        loop.on_write(fd, self.flush)

    def send(self, data: bytes) -> None:
        if self.broken:
            return
        if not self.buf:  # the usual case: the reader keeps up, and one write does it
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                self.broken = True
                return
            if n == len(data):
                return
            self.buf += memoryview(data)[n:]
            self.loop.want_write(self.fd, True)
            return
        self.buf += data

    def flush(self) -> None:
        while self.buf and not self.broken:
            try:
                n = os.write(self.fd, self.buf)
            except BlockingIOError:
                return
            except OSError:  # the reader is gone: nothing more can be delivered
                self.broken = True
                self.buf.clear()
                break
            del self.buf[:n]
        if not self.buf:
            self.loop.want_write(self.fd, False)
