"""One rank of ZeRO-0/1/2/3 training: a small mixed-precision model whose states are really sharded.

The model is a two-layer MLP, ``y = tanh(x W0 + b0) W1 + b1``, fit to a fixed
random target by mean squared error. Training is mixed precision as in the
ZeRO paper: fp16 parameters and gradients, fp32 master weights and Adam states,
a static loss scale. Each layer's parameters are one flat vector split into
``world_size`` equal slices; rank r *owns* slice r of every layer.

What a rank keeps between steps (arrays it does not own are never kept):

=====  ===================  ===================  =========================
stage  fp16 params          fp16 grads           fp32 master + Adam m, v
=====  ===================  ===================  =========================
0      all                  all                  all
1      all                  all                  own slice
2      all                  own slice            own slice
3      own slice            own slice            own slice
=====  ===================  ===================  =========================

One optimizer step, phase by phase (``ga`` micro-steps of gradient accumulation):

* stage 0: backward each micro-step into the full fp16 grads; at the boundary
  all-reduce them (reduce-scatter + all-gather: 2 psi); every rank runs Adam on
  everything. This is plain data parallelism.
* stage 1: the same backward; at the boundary reduce-scatter (psi) so each rank
  gets the summed grads of its slice, runs Adam on its slice only, and
  all-gathers the new fp16 params (psi). Still 2 psi, 4x less optimizer memory.
* stage 2: reduce-scatter after *every* micro-step and keep only the own slice of
  the gradients (ga x psi), Adam on the slice, all-gather the params (psi).
* stage 3: before each layer's forward *and* backward, all-gather that layer's
  params and drop them after use (2 psi per micro-step), reduce-scatter the grads
  (psi); Adam updates the own slice and nothing is gathered afterwards: 3 psi.

All stages sum gradients with the same ring in the same order, so with ``ga = 1``
they produce bit-identical weights; :func:`reference_train` is the plain
single-process computation they are checked against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from ..errors import UsageError
from ._checks import check_positive_float, check_positive_int, check_stage
from .collectives import Ring, all_gather, all_reduce, broadcast, reduce_scatter

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class SimConfig:
    """The training run every rank (and the reference) agrees on."""

    stage: int
    steps: int = 3
    grad_accum: int = 1
    micro_batch: int = 4
    d_in: int = 7
    hidden: int = 16
    d_out: int = 8
    lr: float = 1e-2
    seed: int = 0
    loss_scale: float = 256.0

    def __post_init__(self) -> None:
        check_stage(self.stage)
        for name in ("steps", "grad_accum", "micro_batch", "d_in", "hidden", "d_out"):
            check_positive_int(name, getattr(self, name))
        check_positive_float("lr", self.lr)
        check_positive_float("loss_scale", self.loss_scale)

    @property
    def layer_sizes(self) -> tuple[int, int]:
        return (self.d_in * self.hidden + self.hidden, self.hidden * self.d_out + self.d_out)

    @property
    def num_params(self) -> int:
        return sum(self.layer_sizes)

    def check_world(self, world_size: int) -> None:
        """Every layer must split into ``world_size`` equal slices (DeepSpeed would pad; the lab refuses)."""
        for i, n in enumerate(self.layer_sizes):
            if n % world_size:
                raise UsageError(
                    f"layer {i} has {n} parameters, which do not divide over world size {world_size}; "
                    f"pick --hidden/--d-in/--d-out so every layer size is a multiple of {world_size} "
                    f"(the defaults d_in=7, hidden=16, d_out=8 give 128 + 136, fine for 1, 2, 4 or 8 ranks)"
                )


# ---- the model: same code for the ranks and the reference ---------------------------------


def init_params(cfg: SimConfig) -> list[np.ndarray]:
    """The fp16 parameters rank 0 creates and broadcasts, one flat vector per layer."""
    rng = np.random.default_rng(cfg.seed)
    return [(rng.standard_normal(n) * 0.3).astype(np.float16) for n in cfg.layer_sizes]


def batch(cfg: SimConfig, step: int, micro: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``rank``'s micro-batch: its own shard of the global batch of this (step, micro-step)."""
    rng = np.random.default_rng([cfg.seed, 1, step, micro, rank])
    x = rng.standard_normal((cfg.micro_batch, cfg.d_in)).astype(np.float32)
    teacher = np.random.default_rng([cfg.seed, 2]).standard_normal((cfg.d_in, cfg.d_out)).astype(np.float32)
    return x, np.sin(x @ teacher)


def forward_backward(cfg: SimConfig, get_layer: Callable[[int, str], np.ndarray], x, y, denom: int,
                     on_grad: Callable[[int, np.ndarray], None] | None = None):
    """Loss share and fp32 gradients (one flat vector per layer) of ``sum(0.5 |f(x) - y|^2) / denom``.

    ``get_layer(i, phase)`` supplies layer i's fp16 params when they are needed
    (phase "forward" or "backward"); ZeRO-3 gathers them there and then.
    ``on_grad(i, g)`` is called as soon as layer i's gradient exists, in backward
    order (layer 1, then layer 0): ZeRO-2/3 reduce-scatter it there, inside the
    backward pass, as DeepSpeed's gradient hooks do.
    """
    d_in, h, d_out = cfg.d_in, cfg.hidden, cfg.d_out
    p0 = get_layer(0, "forward").astype(np.float32)
    a = np.tanh(x @ p0[: d_in * h].reshape(d_in, h) + p0[d_in * h :])
    del p0
    p1 = get_layer(1, "forward").astype(np.float32)
    out = a @ p1[: h * d_out].reshape(h, d_out) + p1[h * d_out :]
    del p1
    diff = out - y
    loss = float(0.5 * np.sum(diff * diff) / denom)
    dout = diff / denom
    p1 = get_layer(1, "backward").astype(np.float32)
    g1 = np.concatenate([(a.T @ dout).ravel(), dout.sum(0)]).astype(np.float32)
    dz = (dout @ p1[: h * d_out].reshape(h, d_out).T) * (1 - a * a)
    del p1
    if on_grad is not None:
        on_grad(1, g1)
    get_layer(0, "backward")  # ZeRO-3 re-gathers every layer for backward (the paper's 3 psi); layer 0 needs no W here
    g0 = np.concatenate([(x.T @ dz).ravel(), dz.sum(0)]).astype(np.float32)
    if on_grad is not None:
        on_grad(0, g0)
    return loss, [g0, g1]


def adam(master, m, v, grad, t: int, lr: float) -> None:
    """One in-place Adam step on fp32 arrays (bias-corrected, no weight decay)."""
    m *= BETA1
    m += (1 - BETA1) * grad
    v *= BETA2
    v += (1 - BETA2) * grad * grad
    master -= lr * (m / (1 - BETA1**t)) / (np.sqrt(v / (1 - BETA2**t)) + EPS)


def reference_train(cfg: SimConfig, world_size: int) -> list[np.ndarray]:
    """Single process, no sharding, gradients summed in float64: the fp32 master weights after ``cfg.steps``."""
    params16 = init_params(cfg)
    master = [p.astype(np.float32) for p in params16]
    m = [np.zeros_like(p) for p in master]
    v = [np.zeros_like(p) for p in master]
    denom = cfg.micro_batch * world_size * cfg.grad_accum
    for step in range(cfg.steps):
        total = [np.zeros(n) for n in cfg.layer_sizes]
        for micro in range(cfg.grad_accum):
            for rank in range(world_size):
                x, y = batch(cfg, step, micro, rank)
                _, grads = forward_backward(cfg, lambda i, _phase: params16[i], x, y, denom)  # noqa: B023 (called here)
                for t, g in zip(total, grads):
                    t += g
        for i in range(len(master)):
            adam(master[i], m[i], v[i], total[i].astype(np.float32), step + 1, cfg.lr)
        params16 = [p.astype(np.float16) for p in master]
    return master


# ---- one rank ----------------------------------------------------------------------------


class ZeroRank:
    """The model states one rank keeps for its stage, and the step that updates them."""

    def __init__(self, cfg: SimConfig, ring: Ring, log: Callable[[str], None] = print) -> None:
        cfg.check_world(ring.world_size)
        self.cfg, self.ring, self.log = cfg, ring, log
        p, r = ring.world_size, ring.rank
        self.slices = [(r * n // p, (r + 1) * n // p) for n in cfg.layer_sizes]
        # Rank 0 creates the model and broadcasts it (DeepSpeed's engine does the same at start-up).
        full = init_params(cfg) if r == 0 else [np.zeros(n, np.float16) for n in cfg.layer_sizes]
        full = [broadcast(ring, f, root=0) for f in full]
        own = [f[a:b].copy() for f, (a, b) in zip(full, self.slices)]
        self.params16 = own if cfg.stage >= 3 else full
        del full  # stage 3 keeps nothing but its slices
        self.grads16 = [np.zeros_like(o) for o in own] if cfg.stage >= 2 else [np.zeros_like(f) for f in self.params16]
        src = own if cfg.stage >= 1 else self.params16
        self.master = [s.astype(np.float32) for s in src]
        self.m = [np.zeros_like(s) for s in self.master]
        self.v = [np.zeros_like(s) for s in self.master]
        self.init_traffic = ring.traffic.copy()
        #: one record per collective of the training steps, for the timeline on Part 5
        self.events: list[dict] = []
        self._where = (0, 0)  # (step, micro-step) being run

    def _timed(self, op: str, layer: int, phase: str, run: Callable[[], Any]) -> Any:
        """Run one collective and record when it started and ended (wall clock, comparable across ranks)."""
        before, start = self.ring.traffic.total, time.time()
        out = run()
        self.events.append({"step": self._where[0], "micro": self._where[1], "layer": layer, "op": op,
                            "phase": phase, "start": start, "end": time.time(),
                            "sent": self.ring.traffic.total - before})
        return out

    # -- what the rank holds --
    def held_bytes(self) -> dict[str, int]:
        held = {
            "params": sum(a.nbytes for a in self.params16),
            "grads": sum(a.nbytes for a in self.grads16),
            "optimizer": sum(a.nbytes for a in self.master + self.m + self.v),
        }
        held["total"] = sum(held.values())
        return held

    def describe(self) -> list[str]:
        """Two log lines: the slice this rank owns, and what it holds per category."""
        own = " ".join(f"layer{i}[{a}:{b})" for i, (a, b) in enumerate(self.slices))
        n_own = sum(b - a for a, b in self.slices)
        s, h = self.cfg.stage, self.held_bytes()
        where = lambda partitioned: "own slice" if partitioned else "all"  # noqa: E731
        return [
            f"owns {own} ({n_own} of {self.cfg.num_params} params)",
            f"stage {s} holds: fp16 params {h['params']} B ({where(s >= 3)}) + fp16 grads {h['grads']} B "
            f"({where(s >= 2)}) + fp32 master/m/v {h['optimizer']} B ({where(s >= 1)}) = {h['total']} B",
        ]

    # -- one step --
    def _chunks(self, a: np.ndarray) -> list[np.ndarray]:
        return np.split(a, self.ring.world_size)

    def _layer(self, i: int, phase: str) -> np.ndarray:
        if self.cfg.stage < 3:
            return self.params16[i]
        # gathered, used, dropped
        return self._timed("all-gather", i, phase, lambda: np.concatenate(all_gather(self.ring, self.params16[i])))

    def step(self, step: int) -> dict:
        cfg, ring = self.cfg, self.ring
        before = ring.traffic.copy()
        denom = cfg.micro_batch * ring.world_size * cfg.grad_accum
        loss = 0.0

        def on_grad(i: int, g: np.ndarray) -> None:
            g16 = (g * cfg.loss_scale).astype(np.float16)  # scaled so small grads survive fp16
            if cfg.stage >= 2:  # reduce now, inside the backward pass, and keep only the own slice
                self.grads16[i] += self._timed("reduce-scatter", i, "backward",
                                               lambda: reduce_scatter(ring, self._chunks(g16)))
            else:  # accumulate locally, reduce at the boundary
                self.grads16[i] += g16

        for micro in range(cfg.grad_accum):
            self._where = (step + 1, micro + 1)
            x, y = batch(cfg, step, micro, ring.rank)
            part, _ = forward_backward(cfg, self._layer, x, y, denom, on_grad)
            loss += part
        for i in range(len(self.master)):
            if cfg.stage == 0:
                grads = self._chunks(self.grads16[i])
                self.grads16[i] = np.concatenate(self._timed("all-reduce", i, "step", partial(all_reduce, ring, grads)))
                mine = self.grads16[i]
            elif cfg.stage == 1:
                grads = self._chunks(self.grads16[i])
                mine = self._timed("reduce-scatter", i, "step", partial(reduce_scatter, ring, grads))
            else:
                mine = self.grads16[i]
            adam(self.master[i], self.m[i], self.v[i], mine.astype(np.float32) / cfg.loss_scale, step + 1, cfg.lr)
            new16 = self.master[i].astype(np.float16)
            if cfg.stage in (1, 2):
                self.params16[i] = self._timed("all-gather", i, "step", lambda: np.concatenate(all_gather(ring, new16)))  # noqa: B023 (called here)
            else:
                self.params16[i] = new16
            self.grads16[i][:] = 0
        sent = ring.traffic.minus(before)
        return {"step": step + 1, "loss": loss, "intra": sent.intra, "inter": sent.inter}

    def report(self, steps: list[dict]) -> dict:
        return {
            "rank": self.ring.rank,
            "config": asdict(self.cfg),
            "slices": self.slices,
            "held": self.held_bytes(),
            "init": {"intra": self.init_traffic.intra, "inter": self.init_traffic.inter},
            "steps": steps,
            "events": self.events,
            # the own slice of the fp32 master weights, to assemble the final model
            "master": [
                (mm if self.cfg.stage >= 1 else mm[a:b]).tolist()
                for mm, (a, b) in zip(self.master, self.slices)
            ],
        }


def run_rank(cfg: SimConfig, ring: Ring, log: Callable[[str], None] = print) -> dict:
    """Train ``cfg.steps`` steps on this rank, logging what it holds and sends; return its report."""
    z = ZeroRank(cfg, ring, log)
    for line in z.describe():
        log(line)
    steps = []
    for s in range(cfg.steps):
        rec = z.step(s)
        steps.append(rec)
        log(
            f"step {rec['step']}: loss share {rec['loss']:.5f}, sent {rec['intra']} B inside the node, "
            f"{rec['inter']} B across nodes"
        )
    return z.report(steps)


def assemble_master(reports: list[dict]) -> list[np.ndarray]:
    """The full fp32 master weights from every rank's own slices, in rank order."""
    layers = len(reports[0]["master"])
    return [np.concatenate([np.asarray(r["master"][i], np.float32) for r in reports]) for i in range(layers)]
