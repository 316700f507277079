"""``clusterlab zero simulate``: start the ZeRO ranks under the lab's launcher, then check what they did.

The ranks run as real processes: this module calls the core launcher as a
subprocess (``python -m clusterlab simulate --nnodes N --nproc-per-node P
--master-port 0 -m clusterlab.zero.worker ...``), lets it print the ranks'
prefixed logs, reads rank 0's JSON report and holds it against three
references:

1. **the model**: the fp32 master weights assembled from every rank's own slice
   must equal :func:`clusterlab.zero.simulate.reference_train` (one process, no
   sharding, float64 gradient sums) within ``TOLERANCE``;
2. **the memory**: the bytes each rank holds must equal the ZeRO paper's
   formula (:func:`clusterlab.zero.memory.model_state_bytes`) for psi and Nd;
3. **the traffic**: the bytes each rank sent per step must equal
   :func:`clusterlab.zero.comm.ring_bytes_per_rank`, the 2 psi / 3 psi
   accounting made exact for a ring, and the share sent across nodes must be
   the flat ring's N/p.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

from ..errors import ClusterlabError
from .comm import inter_node_share, ring_bytes_per_rank
from .memory import model_state_bytes

#: Max |difference| allowed between the simulated and the reference fp32 master weights.
#: The ranks sum fp16 gradients on the wire, the reference sums in float64; with lr = 1e-2
#: the observed gap after a few steps is ~1e-4, so 1e-3 (a tenth of one Adam step) is a safe bound.
TOLERANCE = 1e-3


class SimulationFailed(ClusterlabError, RuntimeError):
    """The launched ranks failed or timed out."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SimulationResult:
    nnodes: int
    nproc_per_node: int
    reports: list
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        return "\n".join(f"[check] {'OK  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" for c in self.checks)


def worker_command(cfg, nnodes: int, nproc_per_node: int, result_file: str, timeout: float) -> list[str]:
    """The core launcher's command line that runs :mod:`clusterlab.zero.worker` on every rank."""
    flags = ["--stage", cfg.stage, "--steps", cfg.steps, "--grad-accum", cfg.grad_accum, "--micro-batch", cfg.micro_batch,
             "--d-in", cfg.d_in, "--hidden", cfg.hidden, "--d-out", cfg.d_out, "--lr", cfg.lr, "--seed", cfg.seed]
    return [sys.executable, "-m", "clusterlab", "simulate", "--nnodes", str(nnodes), "--nproc-per-node",
            str(nproc_per_node), "--master-port", "0", "-m", "clusterlab.zero.worker",
            *map(str, flags), "--result-file", result_file, "--timeout", str(timeout)]


def _stop(proc: subprocess.Popen) -> None:
    """Ask the launcher to stop its agents and workers (SIGTERM), then kill what is left of its session."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created for it, nothing else
    except ProcessLookupError:
        pass
    proc.wait()


def launch(cfg, nnodes: int, nproc_per_node: int, timeout: float = 90.0, stdout=None) -> SimulationResult:
    """Run the ranks (their output goes to ``stdout``, default: ours) and return their checked reports."""
    cfg.check_world(nnodes * nproc_per_node)
    with tempfile.TemporaryDirectory(prefix="clusterlab-zero-") as tmp:
        result_file = os.path.join(tmp, "result.json")
        cmd = worker_command(cfg, nnodes, nproc_per_node, result_file, timeout=min(timeout, 60.0))
        # own session: on timeout the launcher and everything it started can be stopped as one group
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT if stdout else None, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise SimulationFailed(f"the simulated ZeRO job did not finish within {timeout:g}s; it was stopped") from None
        if rc != 0:
            raise SimulationFailed(f"the simulated ZeRO job failed with exit status {rc} (see the rank logs above)")
        with open(result_file, encoding="utf-8") as f:
            data = json.load(f)
    result = SimulationResult(data["nnodes"], data["nproc_per_node"], data["reports"])
    result.checks = check(cfg, result)
    return result


def check(cfg, result: SimulationResult) -> list[Check]:
    """Hold the ranks' reports against the reference model, the memory formula and the traffic model."""
    import numpy as np

    from .simulate import assemble_master, reference_train

    reports, p = result.reports, len(result.reports)
    psi = cfg.num_params
    checks = []

    got, ref = assemble_master(reports), reference_train(cfg, p)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(got, ref))
    checks.append(Check("model equals the single-process reference", diff <= TOLERANCE,
                        f"max |w - w_ref| = {diff:.2e} (tolerance {TOLERANCE:g}) after {cfg.steps} step(s)"))

    want = model_state_bytes(psi, p, cfg.stage)
    bad = [r["rank"] for r in reports
           if (r["held"]["params"], r["held"]["grads"], r["held"]["optimizer"]) != (want.params, want.grads, want.optimizer)]
    checks.append(Check("bytes held per rank equal the ZeRO formula", not bad,
                        f"{want.params} + {want.grads} + {want.optimizer} = {want.total} B for psi={psi}, Nd={p}"
                        + (f"; ranks {bad} differ" if bad else "")))

    exact = ring_bytes_per_rank(psi, cfg.stage, p, cfg.grad_accum)
    sent = {s["intra"] + s["inter"] for r in reports for s in r["steps"]}
    checks.append(Check("bytes sent per rank per step equal the 2psi/3psi accounting", sent == {exact},
                        f"measured {sorted(sent)} B, model {exact:g} B = (p-1)/p x volume x psi x 2 B"))

    total = sum(s["intra"] + s["inter"] for r in reports for s in r["steps"])
    inter = sum(s["inter"] for r in reports for s in r["steps"])
    share, model_share = (inter / total if total else 0.0), inter_node_share(result.nnodes, result.nproc_per_node)
    checks.append(Check("share of bytes leaving a node equals the flat-ring model", abs(share - model_share) < 1e-12,
                        f"measured {share:.1%}, model N/p = {model_share:.1%}"))
    return checks


def as_json(result: SimulationResult) -> str:
    return json.dumps({"ok": result.ok, "nnodes": result.nnodes, "nproc_per_node": result.nproc_per_node,
                       "checks": [asdict(c) for c in result.checks], "reports": result.reports})
