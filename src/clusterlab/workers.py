"""One node's workers: start them, listen to them, stop them.

For every local rank the agent opens four channels to the worker:

* **stdout and stderr** (pipes): read in chunks, cut into whole lines, prefixed
  ``[node1 rank5 local1]`` and copied to the console and the rank's log file
  (:mod:`clusterlab.output`); the last stderr lines are kept for the failure summary;
* **a request pipe and a reply pipe** (``CLUSTERLAB_CHANNEL``): the worker writes
  one JSON line per collective call and blocks reading the answer
  (:mod:`clusterlab.channel`); this module hands the bytes to the node's
  :class:`~clusterlab.relay.NodeRelay`;
* **a pidfd** (Linux): it becomes readable the moment the worker exits, so exits
  are events like any other, not something to poll for.

Stopping is torchrun's: SIGTERM to each worker's process group, ``--term-timeout``
seconds of grace, then SIGKILL; finally a sweep for descendants that left the
group (:mod:`clusterlab.procs`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from functools import partial

from . import procs
from .config import AgentConfig
from .env import worker_env
from .errors import UsageError
from .loop import Loop, Outbox
from .output import StreamPump, prefix

TAIL_LINES = 10


class Worker:
    """One worker process and its four channels (the relay keeps its collective state here too)."""

    def __init__(self, local_rank: int, rank: int, proc: procs.Process, req_fd: int, reply: Outbox,
                 pumps: dict[str, StreamPump], pidfd: int | None) -> None:
        self.local_rank, self.rank, self.proc = local_rank, rank, proc
        self.req_fd, self.reply, self.pumps, self.pidfd = req_fd, reply, pumps, pidfd
        self.returncode: int | None = None
        self.waiting: int | None = None  # the collective round it is blocked in
        self.requests = bytearray()  # request bytes not yet a whole line
        self.discarding = False  # skipping the rest of an oversized request line


class WorkerGroup:
    """The workers of one node, for one attempt at a time.

    ``on_exit(worker)`` is called when a worker has exited and its output is drained;
    :attr:`on_request` ``(worker, data)`` gets the bytes a worker writes on its request pipe.
    """

    def __init__(self, loop: Loop, cfg: AgentConfig, node_rank: int, hostname: str,
                 on_exit: Callable[[Worker], None]) -> None:
        self.loop, self.cfg, self.node_rank, self.hostname = loop, cfg, node_rank, hostname
        self.on_exit = on_exit
        self.on_request: Callable[[Worker, bytes], None] = lambda w, data: None
        self.workers: list[Worker] = []
        self.exited = 0  # how many of them have exited
        self.stopping = False
        self.kill_at = float("inf")  # when workers that ignored SIGTERM get SIGKILL
        self._family: list = []
        self._when_idle: list[Callable[[], None]] = []
        # Orphans of our workers (a grandchild that called setsid()) come back to this process, so
        # the sweeps find them; children this process had before (an in-process launch) are spared.
        self._foreign = {p.pid for p in procs.descendants([os.getpid()])}
        self._subreaper = False
        self._all_pidfds = True  # every worker's exit is an event: poll() need not look

    # ------------------------------------------------------------------ start
    def start(self, attempt: int, tick: Callable[[], None] = lambda: None) -> None:
        """Start every local rank for ``attempt``; ``tick()`` runs between spawns (heartbeats)."""
        cfg, layout = self.cfg, self.cfg.layout
        self.workers, self.exited, self.stopping = [], 0, False
        base = dict(os.environ)
        if cfg.barrier_trace:
            base["CLUSTERLAB_TRACE"] = cfg.barrier_trace
        base["CLUSTERLAB_NODE_NAME"] = self.hostname
        # Everything a worker needs is made first and the workers are then started back to
        # back: once the first interpreters are starting they compete with this agent for
        # the CPUs, so it does as little as it can between spawns.
        plans = []
        for local_rank in range(layout.nproc_per_node):
            env = dict(base)
            env.update(worker_env(
                layout, self.node_rank, local_rank, master_addr=cfg.master_addr, master_port=cfg.master_port,
                role=cfg.role, restart_count=attempt, max_restarts=cfg.max_restarts, run_id=cfg.run_id,
                omp_num_threads=base.get("OMP_NUM_THREADS"),
            ))
            plans.append((local_rank, env))
        argv = list(cfg.argv)
        started = []
        try:
            for local_rank, env in plans:
                tick()
                req_r, req_w = os.pipe()
                rep_r, rep_w = os.pipe()
                env["CLUSTERLAB_CHANNEL"] = f"{req_w},{rep_r},{env['RANK']},{layout.world_size}"
                try:
                    proc = procs.spawn(argv, env, pass_fds=(req_w, rep_r))
                except OSError as exc:
                    for fd in (req_r, req_w, rep_r, rep_w):
                        os.close(fd)
                    raise UsageError(f"cannot start {cfg.argv[0]!r}: {exc.strerror}") from None
                os.close(req_w)
                os.close(rep_r)
                started.append((local_rank, proc, req_r, rep_w))
        finally:
            for local_rank, proc, req_r, rep_w in started:
                self._add(attempt, local_rank, proc, req_r, rep_w)
        self._all_pidfds = all(w.pidfd is not None for w in self.workers)
        if not self._subreaper:
            # Set once the workers are on their way, so loading ctypes for it does not delay them;
            # a grandchild can only be orphaned once its worker has run for a while anyway.
            procs.set_subreaper(True)
            self._subreaper = True

    def _add(self, attempt: int, local_rank: int, proc: procs.Process, req_r: int, rep_w: int) -> None:
        """Watch a started worker: its output, its requests, its exit."""
        rank = self.cfg.layout.global_rank(self.node_rank, local_rank)
        os.set_blocking(rep_w, False)
        os.set_blocking(req_r, False)
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None  # no pidfd (old kernel): poll() finds exits instead
        w = Worker(local_rank, rank, proc, req_r, Outbox(self.loop, rep_w), self._pumps(attempt, local_rank, rank), pidfd)
        self.workers.append(w)
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            self.loop.on_read(stream.fileno(), partial(self._read_output, w))
        self.loop.on_read(req_r, partial(self._read_request, w))
        if pidfd is not None:
            self.loop.on_read(pidfd, partial(self._reap, w))

    def _pumps(self, attempt: int, local_rank: int, rank: int) -> dict[str, StreamPump]:
        cfg = self.cfg
        pumps = {}
        for stream, console in (("stdout", 1), ("stderr", 2)):
            shown = stream in cfg.console_streams and (cfg.local_ranks_filter is None or local_rank in cfg.local_ranks_filter)
            log_path = None
            if cfg.log_dir:
                d = os.path.join(cfg.log_dir, f"attempt_{attempt}", f"node{self.node_rank}", str(local_rank))
                os.makedirs(d, exist_ok=True)
                log_path = os.path.join(d, f"{stream}.log")
            pumps[stream] = StreamPump(prefix(self.node_rank, rank, local_rank), console if shown else None,
                                       log_path, tail=TAIL_LINES if stream == "stderr" else 0)
        return pumps

    # ------------------------------------------------------------------ output and requests
    def _read_output(self, w: Worker) -> None:
        """Either stream is readable: read both, stderr first, so what a worker wrote to
        stderr before a stdout line reaches the console and the logs before that line."""
        for stream in ("stderr", "stdout"):
            pipe = getattr(w.proc, stream)
            if pipe is None or pipe.closed:
                continue
            try:
                data = os.read(pipe.fileno(), 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                w.pumps[stream].feed(data)
            else:
                self._close_stream(w, stream)

    def _close_stream(self, w: Worker, stream: str) -> None:
        pipe = getattr(w.proc, stream)
        if pipe is None or pipe.closed:
            return
        self.loop.forget(pipe.fileno())
        w.pumps[stream].close()
        pipe.close()

    def _drain_output(self, w: Worker) -> None:
        """After a worker exited: take what is left in its pipes, then close them."""
        for stream in ("stdout", "stderr"):
            pipe = getattr(w.proc, stream)
            while pipe is not None and not pipe.closed:
                try:
                    data = os.read(pipe.fileno(), 65536)
                except BlockingIOError:
                    break  # a grandchild still holds the pipe open: what the worker wrote is in
                except OSError:
                    data = b""
                if not data:
                    break
                w.pumps[stream].feed(data)
            self._close_stream(w, stream)

    def _read_request(self, w: Worker) -> None:
        try:
            data = os.read(w.req_fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.on_request(w, data)
        else:
            self.loop.forget(w.req_fd)

    # ------------------------------------------------------------------ exits and stopping
    def _reap(self, w: Worker) -> None:
        if w.returncode is not None:
            return
        try:
            w.proc.wait(timeout=1.0)
        except TimeoutError:
            return
        w.returncode = w.proc.returncode
        self.exited += 1
        if w.pidfd is not None:
            self.loop.forget(w.pidfd)
            os.close(w.pidfd)
            w.pidfd = None
        self._drain_output(w)
        for fd in (w.req_fd, w.reply.fd):
            self.loop.forget(fd)
            os.close(fd)
        w.reply.broken = True
        if not self.stopping:
            self.on_exit(w)

    def poll(self) -> float:
        """Find exits the pidfds cannot report; returns how long the loop may sleep."""
        if self._all_pidfds:
            return 5.0
        for w in self.workers:
            if w.returncode is None and w.proc.poll() is not None:
                self._reap(w)
        return 0.05

    @property
    def all_done(self) -> bool:
        return all(w.returncode == 0 for w in self.workers)

    def stop(self) -> None:
        """Begin stopping every live worker: SIGTERM now, SIGKILL after the grace period."""
        if self.stopping:
            return
        self.stopping = True
        live = [w for w in self.workers if w.returncode is None]
        if live:
            self._family = procs.descendants([w.proc.pid for w in live])
            for w in live:
                procs.signal_group(w.proc, signal.SIGTERM)
            self.kill_at = time.monotonic() + self.cfg.term_timeout

    def after_stop(self, callback) -> None:
        """Stop the workers, then call ``callback()`` once all of them are gone."""
        self.stop()
        self._when_idle.append(callback)
        self.check_idle()

    def check_deadline(self, now: float) -> None:
        if now >= self.kill_at:
            self.kill_at = float("inf")
            for w in self.workers:
                if w.returncode is None:
                    procs.signal_group(w.proc, signal.SIGKILL)

    def check_idle(self) -> None:
        if not self.stopping or any(w.returncode is None for w in self.workers):
            return
        if self._family:
            procs.kill_all(self._family)
            self._family = []
        procs.sweep(self._foreign)
        self.kill_at = float("inf")
        callbacks, self._when_idle = self._when_idle, []
        for cb in callbacks:
            cb()

    def close_streams(self) -> None:
        for w in self.workers:
            for stream in ("stdout", "stderr"):
                self._close_stream(w, stream)

    def shutdown(self) -> None:
        """Leave nothing behind: live workers stopped (blocking), orphans swept."""
        live = [w for w in self.workers if w.returncode is None]
        if live:
            procs.stop([w.proc for w in live], grace=self.cfg.term_timeout)
            for w in live:
                w.returncode = w.proc.returncode
                self._drain_output(w)
        if self._family:
            procs.kill_all(self._family)
        procs.sweep(self._foreign)  # also after a clean finish: nothing a worker started outlives the job
        if self._subreaper:
            procs.set_subreaper(False)
