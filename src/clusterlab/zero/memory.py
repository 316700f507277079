"""ZeRO memory math: how many bytes of model state one data-parallel rank holds.

This is the model of the ZeRO paper (Rajbhandari, Rasley, Ruwase, He, "ZeRO:
Memory Optimizations Toward Training Trillion Parameter Models", SC20,
arXiv:1910.02054, section 5 and Table 1). Only *model states* are counted:
activations, temporary buffers and fragmentation come on top.

Mixed-precision training with Adam keeps, for a model of ``psi`` parameters:

* fp16 parameters ................ 2 bytes x psi
* fp16 gradients ................. 2 bytes x psi
* optimizer states, K x psi, with K = 12 for Adam:
  fp32 master parameters (4) + fp32 momentum (4) + fp32 variance (4).

Plain data parallelism (stage 0) replicates all of it on each of the ``Nd``
ranks. Each ZeRO stage partitions one more category over the ranks, so each rank
keeps only its 1/Nd slice:

=====  =======================  ===============================
stage  partitioned              bytes per rank
=====  =======================  ===============================
0      nothing                  (2 + 2 + K) psi
1      optimizer states (P_os)  2 psi + 2 psi + K psi / Nd
2      + gradients (P_os+g)     2 psi + (2 + K) psi / Nd
3      + parameters (P_os+g+p)  (2 + 2 + K) psi / Nd
=====  =======================  ===============================

The paper's Figure 1 example: psi = 7.5e9, Nd = 64 gives 120 GB, 31.4 GB,
16.6 GB and 1.9 GB for stages 0-3 (GB = 10^9 bytes, as in the paper).

The traffic these stages cost is a separate concern: see :mod:`clusterlab.zero.comm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._checks import STAGES, check_positive_int, check_stage

#: Bytes per element of an fp16 parameter or gradient.
FP16_BYTES = 2
#: Optimizer-state bytes per parameter for mixed-precision Adam: fp32 master, momentum, variance.
ADAM_K = 12

#: What each stage partitions, in the paper's notation.
STAGE_NAMES = {
    0: "plain DP (nothing partitioned)",
    1: "P_os (optimizer states)",
    2: "P_os+g (+ gradients)",
    3: "P_os+g+p (+ parameters)",
}


def _share(total: int, parts: int, partitioned: bool) -> int | float:
    """``total`` if replicated, else ``total / parts`` (an int when it divides exactly)."""
    if not partitioned:
        return total
    q, r = divmod(total, parts)
    return q if r == 0 else total / parts


@dataclass(frozen=True)
class ModelStateBytes:
    """Per-rank model-state bytes of one stage, by category."""

    stage: int
    num_params: int
    dp_degree: int
    params: int | float
    grads: int | float
    optimizer: int | float

    @property
    def total(self) -> int | float:
        return self.params + self.grads + self.optimizer

    def __str__(self) -> str:
        return (
            f"stage {self.stage}: params {self.params:,} B + grads {self.grads:,} B + "
            f"optimizer {self.optimizer:,} B = {self.total:,} B per rank"
        )


def model_state_bytes(num_params: int, dp_degree: int, stage: int, k: int = ADAM_K) -> ModelStateBytes:
    """Bytes of model state on one of ``dp_degree`` ranks at ZeRO ``stage`` (the paper's formulas)."""
    num_params = check_positive_int("num_params", num_params)
    dp_degree = check_positive_int("dp_degree", dp_degree)
    stage = check_stage(stage)
    k = check_positive_int("k", k)
    return ModelStateBytes(
        stage=stage,
        num_params=num_params,
        dp_degree=dp_degree,
        params=_share(FP16_BYTES * num_params, dp_degree, stage >= 3),
        grads=_share(FP16_BYTES * num_params, dp_degree, stage >= 2),
        optimizer=_share(k * num_params, dp_degree, stage >= 1),
    )


def per_device_bytes(num_params: int, dp_degree: int, stage: int, k: int = ADAM_K) -> int | float:
    """Total model-state bytes per rank: ``model_state_bytes(...).total``."""
    return model_state_bytes(num_params, dp_degree, stage, k).total


def largest_fitting_stage(num_params: int, dp_degree: int, device_bytes: float) -> int | None:
    """The lowest stage (least communication) whose model states fit ``device_bytes``, or None."""
    for stage in STAGES:
        if per_device_bytes(num_params, dp_degree, stage) <= device_bytes:
            return stage
    return None


#: Table 1 of the ZeRO paper (arXiv:1910.02054v3, section 5.1): per-device model-state GB
#: (GB = 10^9 bytes, K = 12) for P_os, P_os+g and P_os+g+p, as the paper prints each cell.
#: Keys: psi -> {DP degree Nd: (P_os, P_os+g, P_os+g+p)}. Stage 0 (plain DP) is the Nd = 1 row.
#: The cells are kept as printed because the paper's precision varies from cell to cell
#: (1.88, 4187.5, 2218.75, 4046.9); the CLI prints a cell at the paper's precision, rounding
#: half up as the paper does (41.25 -> 41.3), and tests/test_zero_memory.py checks that the
#: formulas above reproduce every one of the 54 strings under that rounding.
#: Provenance: 41.3 (7.5B, Nd = 4, P_os+g) and 4187.5 / 2218.75 (1T, Nd = 64) are the paper's
#: printing as cited in issue 15; the other cells were transcribed without the PDF at hand
#: (no route to arXiv from the build machine on 2026-12-01), most surely the 128B and 1T cells
#: at Nd = 256 and 1024: re-read them against the paper once and fix any that differ.
TABLE_1: dict[int, dict[int, tuple[str, str, str]]] = {
    7_500_000_000: {
        1: ("120", "120", "120"), 4: ("52.5", "41.3", "30"), 16: ("35.6", "21.6", "7.5"),
        64: ("31.4", "16.6", "1.88"), 256: ("30.4", "15.4", "0.47"), 1024: ("30.1", "15.1", "0.12"),
    },
    128_000_000_000: {
        1: ("2048", "2048", "2048"), 4: ("896", "704", "512"), 16: ("608", "368", "128"),
        64: ("536", "284", "32"), 256: ("518", "263", "8"), 1024: ("513.5", "257.8", "2"),
    },
    1_000_000_000_000: {
        1: ("16000", "16000", "16000"), 4: ("7000", "5500", "4000"), 16: ("4750", "2875", "1000"),
        64: ("4187.5", "2218.75", "250"), 256: ("4046.9", "2054.7", "62.5"), 1024: ("4011.7", "2013.7", "15.6"),
    },
}


def round_half_up(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` digits after the point, halves rounded up (41.25 -> "41.3", not "41.2")."""
    from decimal import ROUND_HALF_UP, Decimal

    # repr() gives the shortest string that is the same double, so 41.25 stays 41.25 (not 41.249999...)
    quantum = Decimal(1).scaleb(-decimals)
    return str(Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP))


def decimals_of(text: str) -> int:
    """How many digits a printed number has after its point: "1.88" -> 2, "120" -> 0."""
    return len(text.split(".")[1]) if "." in text else 0


def table_1_cell(num_params: int, dp_degree: int, stage: int) -> str | None:
    """The paper's printed cell for this model, Nd and stage, or None if Table 1 has no such cell."""
    row = TABLE_1.get(num_params, {}).get(1 if stage == 0 else dp_degree)
    if row is None:
        return None
    return row[0] if stage == 0 else row[stage - 1]


def format_gb(nbytes: float, decimals: int | None = None) -> str:
    """Bytes as decimal GB (10^9), rounded half up: to ``decimals`` digits if given, else
    3 significant digits below 100 and 1 decimal from 100 on (a trailing ".0" dropped), as Table 1 mostly does."""
    gb = nbytes / 1e9
    if decimals is None:
        decimals = 1 if gb >= 100 else max(0, 2 - math.floor(math.log10(gb))) if gb > 0 else 0
    text = round_half_up(gb, decimals)
    return text[:-2] if text.endswith(".0") else text


def format_cell(num_params: int, dp_degree: int, stage: int, nbytes: float) -> str:
    """A total as the CLI prints it: at the paper's precision where Table 1 has the same cell."""
    paper = table_1_cell(num_params, dp_degree, stage)
    return format_gb(nbytes, decimals_of(paper) if paper is not None else None)


def format_estimate(
    num_params: int,
    nnodes: int,
    gpus_per_node: int,
    stages: tuple[int, ...] = STAGES,
    device_gb: float | None = None,
) -> str:
    """The table ``clusterlab zero estimate`` prints: per-device model states for each stage."""
    dp = check_positive_int("nodes", nnodes) * check_positive_int("gpus_per_node", gpus_per_node)
    lines = [
        f"ZeRO paper model (arXiv:1910.02054, Table 1 formulas): psi = {num_params:,} parameters, "
        f"mixed-precision Adam (K = {ADAM_K}),",
        f"Nd = {nnodes} node(s) x {gpus_per_node} GPU(s) = {dp} data-parallel ranks. GB = 10^9 bytes.",
        "",
        f"{'stage':<6}{'partitions':<32}{'params GB':>10}{'grads GB':>10}{'optim GB':>10}{'total GB':>10}"
        + ("   fits?" if device_gb is not None else ""),
    ]
    for stage in stages:
        m = model_state_bytes(num_params, dp, stage)
        row = (
            f"{stage:<6}{STAGE_NAMES[stage]:<32}{format_gb(m.params):>10}{format_gb(m.grads):>10}"
            f"{format_gb(m.optimizer):>10}{format_cell(num_params, dp, stage, m.total):>10}"
        )
        if device_gb is not None:
            row += "   yes" if m.total <= device_gb * 1e9 else "   no"
        lines.append(row)
    cited = [s for s in stages if table_1_cell(num_params, dp, s) is not None]
    if cited:
        lines.append(f"Stage(s) {', '.join(map(str, cited))}: the paper's Table 1 has these cells (Nd = {dp}); "
                     "their totals are printed at its precision, rounded half up.")
    if device_gb is not None:
        best = largest_fitting_stage(num_params, dp, device_gb * 1e9)
        if best is None:
            lines.append(
                f"No stage fits {device_gb:g} GB per device for model states alone: add ranks "
                "(ZeRO-3 memory falls as 1/Nd) or offload to CPU/NVMe."
            )
        else:
            lines.append(
                f"Lowest stage that fits {device_gb:g} GB per device: {best} "
                "(model states only; activations and buffers need room too)."
            )
    return "\n".join(lines)
