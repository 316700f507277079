"""ZeRO traffic accounting: what one optimizer step sends, and how long that takes across nodes.

**Volume.** The ZeRO paper (arXiv:1910.02054, section 7) counts per-rank traffic
in units of psi, the number of parameters. Plain data parallelism all-reduces
the gradients, and a ring all-reduce *is* a reduce-scatter (psi) followed by an
all-gather (psi): **2 psi**. ZeRO-1 and ZeRO-2 move the same data, only split
differently (reduce-scatter the gradients, update the own slice, all-gather the
fp16 parameters): still **2 psi**. ZeRO-3 must also gather the parameters it
does not keep, once for the forward and once for the backward, then
reduce-scatter the gradients: **3 psi**, 1.5x. A ring of p ranks sends
(p-1)/p of the data per rank per reduce-scatter or all-gather, so the exact
figure is ``(p-1)/p`` of the paper's.

**Gradient accumulation** (``ga`` micro-steps per optimizer step) changes this per stage:

=====  ==========================================  ===============
stage  what is communicated per optimizer step      volume
=====  ==========================================  ===============
0      all-reduce once at the boundary               2 psi
1      reduce-scatter + all-gather at the boundary   2 psi
2      reduce-scatter every micro-step (the rank     (ga + 1) psi
       keeps only its slice of the grads), 1 gather
3      gather fwd + gather bwd + reduce-scatter,     3 ga psi
       every micro-step
=====  ==========================================  ===============

**Time** uses the alpha-beta (latency-bandwidth) model: a message of m bytes on
a link costs ``alpha + m / beta``. A ring reduce-scatter or all-gather of n
bytes over p ranks is p-1 steps of n/p bytes each. Ranks on one node talk over
NVLink; ranks on different nodes over the network. Defaults (all configurable):

* intra-node: NVLink 4 on H100 SXM, 900 GB/s *bidirectional* per GPU (NVIDIA H100
  datasheet, https://www.nvidia.com/en-us/data-center/h100/), so 450 GB/s each way;
* inter-node: one 400 Gb/s InfiniBand NDR port per GPU (NVIDIA ConnectX-7 /
  Quantum-2, https://www.nvidia.com/en-us/networking/quantum2/), 50 GB/s each way;
* latencies: 3 us inside a node and 10 us across nodes per ring step - assumed
  orders of magnitude for a collective library's per-step overhead, not measured.

**Flat vs hierarchical.** A *flat* ring of all p = N x g ranks (node-ordered)
crosses a node boundary N times; all ring steps run in lock-step, so every step
waits for the slowest hop: the one NIC that carries the node's whole share.
A *hierarchical* collective reduce-scatters inside each node (g ranks, NVLink),
runs the cross-node ring on 1/g of the data with all g NICs of a node working
in parallel, and all-gathers inside the node. The bytes leaving a node are
about the same; they are spread over g links instead of funnelled through one,
and the latency term drops from p-1 to (g-1)+(N-1) steps. (NCCL gets a similar
effect by running several rings at once, one per NIC.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import STAGES, check_positive_float, check_positive_int, check_stage
from .memory import FP16_BYTES


@dataclass(frozen=True)
class Link:
    """One direction of a link: bandwidth in bytes/s and per-message latency in seconds."""

    bandwidth: float
    latency: float

    def __post_init__(self) -> None:
        check_positive_float("bandwidth", self.bandwidth)
        if not self.latency >= 0:
            raise ValueError(f"latency={self.latency!r} must be >= 0 seconds")


#: NVLink 4 (H100 SXM): 900 GB/s bidirectional per GPU -> 450 GB/s each way; 3 us assumed.
NVLINK4 = Link(bandwidth=450e9, latency=3e-6)
#: InfiniBand NDR, 400 Gb/s per port -> 50 GB/s each way; 10 us assumed.
IB_NDR = Link(bandwidth=400e9 / 8, latency=10e-6)

#: Per stage, the collectives of one micro-step and of the step boundary, each moving psi elements.
_PER_MICRO = {0: (), 1: (), 2: ("reduce-scatter grads",),
              3: ("all-gather params (fwd)", "all-gather params (bwd)", "reduce-scatter grads")}
_PER_STEP = {0: ("reduce-scatter grads", "all-gather grads"), 1: ("reduce-scatter grads", "all-gather params"),
             2: ("all-gather params",), 3: ()}


def step_collectives(stage: int, grad_accum: int = 1) -> list[str]:
    """The psi-sized collectives of one optimizer step at ``stage``, in order."""
    check_stage(stage)
    check_positive_int("grad_accum", grad_accum)
    return list(_PER_MICRO[stage]) * grad_accum + list(_PER_STEP[stage])


def volume_psi(stage: int, grad_accum: int = 1) -> int:
    """The paper's per-rank volume of one optimizer step, in units of psi (2, 2, ga + 1, 3 ga)."""
    return len(step_collectives(stage, grad_accum))


def ring_bytes_per_rank(num_params: int, stage: int, world_size: int, grad_accum: int = 1, elem_bytes: int = FP16_BYTES) -> float:
    """Exact bytes one rank sends per step with ring collectives: ``volume_psi x (p-1)/p x psi x elem_bytes``."""
    check_positive_int("num_params", num_params)
    p = check_positive_int("world_size", world_size)
    return volume_psi(stage, grad_accum) * (p - 1) * num_params * elem_bytes / p


def _ring(nbytes: float, p: int, link: Link) -> float:
    """alpha-beta time of one ring reduce-scatter or all-gather of ``nbytes`` over ``p`` ranks."""
    return (p - 1) * (link.latency + nbytes / p / link.bandwidth) if p > 1 else 0.0


def collective_time(nbytes: float, nnodes: int, gpus_per_node: int, intra: Link = NVLINK4, inter: Link = IB_NDR,
                    hierarchical: bool = False) -> float:
    """Seconds for one reduce-scatter (or all-gather) of ``nbytes`` over ``nnodes x gpus_per_node`` ranks."""
    n, g = check_positive_int("nodes", nnodes), check_positive_int("gpus_per_node", gpus_per_node)
    if n == 1:
        return _ring(nbytes, g, intra)
    if not hierarchical:
        return _ring(nbytes, n * g, inter)  # lock-step ring: the cross-node hop paces every step
    # inside the node on all the data, then across nodes on 1/g of it (g NICs in parallel)
    return _ring(nbytes, g, intra) + _ring(nbytes / g, n, inter)


def inter_node_share(nnodes: int, gpus_per_node: int, hierarchical: bool = False) -> float:
    """Fraction of all bytes sent in a reduce-scatter/all-gather that leave a node."""
    n, g = check_positive_int("nodes", nnodes), check_positive_int("gpus_per_node", gpus_per_node)
    if n == 1:
        return 0.0
    p = n * g
    if not hierarchical:
        return n / p  # n of the p ring hops cross a node boundary, each carrying the same bytes
    intra = n * g * (g - 1) / g  # per unit of data: every rank sends (g-1)/g inside its node
    inter = n * g * (n - 1) / n / g  # and (n-1)/n of its 1/g share across nodes
    return inter / (intra + inter)


@dataclass(frozen=True)
class StepCost:
    stage: int
    volume_psi: int
    bytes_per_rank: float
    seconds: float
    inter_share: float


def step_cost(num_params: int, stage: int, nnodes: int, gpus_per_node: int, grad_accum: int = 1,
              intra: Link = NVLINK4, inter: Link = IB_NDR, hierarchical: bool = False) -> StepCost:
    """Volume, bytes and alpha-beta seconds of one optimizer step's communication (fp16 on the wire)."""
    check_positive_int("num_params", num_params)
    vol = volume_psi(stage, grad_accum)
    p = nnodes * gpus_per_node
    nbytes = num_params * FP16_BYTES
    t = vol * collective_time(nbytes, nnodes, gpus_per_node, intra, inter, hierarchical)
    return StepCost(stage, vol, ring_bytes_per_rank(num_params, stage, p, grad_accum), t,
                    inter_node_share(nnodes, gpus_per_node, hierarchical))


def format_comm(num_params: int, nodes: list[int], gpus_per_node: int, stages=STAGES, grad_accum: int = 1,
                intra: Link = NVLINK4, inter: Link = IB_NDR) -> str:
    """The table ``clusterlab zero comm`` prints: per stage and node count, flat and hierarchical step time."""
    lines = [
        f"Per-step communication, psi = {num_params:,} params (fp16 on the wire), {gpus_per_node} GPU(s)/node, "
        f"gradient accumulation {grad_accum}",
        f"intra-node {intra.bandwidth / 1e9:g} GB/s + {intra.latency * 1e6:g} us, "
        f"inter-node {inter.bandwidth / 1e9:g} GB/s + {inter.latency * 1e6:g} us (per direction, per step)",
        "",
        f"{'stage':<6}{'volume':>8}{'nodes':>6}{'ranks':>6}{'GB sent/rank':>14}{'flat ms':>10}{'hier ms':>10}"
        f"{'leaves node flat/hier':>23}",
    ]
    for stage in stages:
        for n in nodes:
            flat = step_cost(num_params, stage, n, gpus_per_node, grad_accum, intra, inter, False)
            hier = step_cost(num_params, stage, n, gpus_per_node, grad_accum, intra, inter, True)
            lines.append(
                f"{stage:<6}{str(flat.volume_psi) + ' psi':>8}{n:>6}{n * gpus_per_node:>6}"
                f"{flat.bytes_per_rank / 1e9:>14.3f}{flat.seconds * 1e3:>10.2f}{hier.seconds * 1e3:>10.2f}"
                f"{flat.inter_share:>14.1%} / {hier.inter_share:.1%}"
            )
    return "\n".join(lines)
