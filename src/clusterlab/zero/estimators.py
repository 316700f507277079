"""DeepSpeed's own memory estimators, recomputed the way DeepSpeed computes them.

DeepSpeed ships two helpers that print how much CPU and GPU memory the model
states need for ZeRO-2 and ZeRO-3 (``deepspeed/runtime/zero/stage_1_and_2.py``
and ``deepspeed/runtime/zero/stage3.py``, documented on DeepSpeed's "Memory
Requirements" page, ``docs/code-docs/source/memory.rst``). They answer a
different question from the paper's model in :mod:`clusterlab.zero.memory`:

* they count **per GPU and per CPU (node)**, with offload options,
* GPU numbers use DeepSpeed's multipliers: ZeRO-2 keeps full fp16 parameters
  (2 psi) plus 18 psi / total_gpus (2 fp16 grads + 4 fp32 grads + 4 fp32
  params + 8 Adam states), ZeRO-3 keeps ``4 x largest_layer_params`` (a
  gathered fp16 layer and its fp16 gradient) plus 18 psi / total_gpus,
* CPU numbers are multiplied by ``additional_buffer_factor`` (1.5, "to be
  conservative"); without ``zero.Init`` every process first builds the whole
  model in fp32 on the CPU (4 psi per GPU of the node),
* "GB" in the printout is really GiB (the value is divided by 2**30).

The functions keep DeepSpeed's names and arguments, and the integer
truncations happen where DeepSpeed does them, so every number equals DeepSpeed's
(``tests/test_zero_deepspeed.py`` compares them all against DeepSpeed itself). One
label differs: DeepSpeed formats the offload device as ``f'{OffloadDeviceEnum.cpu:4}'``,
which its documentation shows as ``cpu `` (padded to 4) but Python 3.11 and later
print as ``OffloadDeviceEnum.cpu``; the documented ``cpu `` is printed here
(:data:`clusterlab.zero.differences.DIFFERENCES`, ``offload-label``).

Note: DeepSpeed's documented ZeRO-2 sample (2851M params, 8 GPUs) shows 15.93GB
per GPU without offload; that comes from an older formula (4 psi + 16 psi / N).
The current source (2 psi + 18 psi / N) gives 11.28GB; this module follows the
current source. The offload row (5.31GB, 127.45GB) is unchanged.
"""

from __future__ import annotations

from ._checks import check_positive_float, check_positive_int

GIB = 2**30


def _check_common(total_params, num_gpus_per_node, num_nodes, additional_buffer_factor) -> None:
    check_positive_float("total_params", total_params)
    check_positive_int("num_gpus_per_node", num_gpus_per_node)
    check_positive_int("num_nodes", num_nodes)
    check_positive_float("additional_buffer_factor", additional_buffer_factor)


def estimate_zero2_model_states_mem_needs(
    total_params,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """``(cpu_bytes, gpu_bytes)`` for ZeRO-2 (stage_1_and_2.py)."""
    _check_common(total_params, num_gpus_per_node, num_nodes, additional_buffer_factor)
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        # GPU keeps only the fp16 params; the CPU holds fp32 params, grads and Adam states.
        gpu = 2 * total_params
        cpu = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        # 2 = fp16 params; 18 = fp16 grads 2 + fp32 grads 4 + fp32 params 4 + Adam 8, partitioned.
        gpu = 2 * total_params + int(18 * total_params / total_gpus)
        cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu)


def estimate_zero3_model_states_mem_needs(
    total_params,
    largest_layer_params,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    cpu_offload_params: bool = True,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int, int]:
    """``(cpu_bytes, gpu_bytes, largest_layer_bytes)`` for ZeRO-3 (stage3.py)."""
    _check_common(total_params, num_gpus_per_node, num_nodes, additional_buffer_factor)
    check_positive_float("largest_layer_params", largest_layer_params)
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params  # gathered fp16 layer + its fp16 grads

    # Multiplications stay in DeepSpeed's order so the float results (and their int()) match bit for bit.
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest_layer_memory
            if zero_init:  # fp32 params/grads/Adam 16 + fp16 params 2, spread over the nodes
                cpu = total_params * 18 * gpus_factor * additional_buffer_factor
            else:  # ... but first each GPU's process builds the model in fp32 on the CPU
                cpu = total_params * max(4 * num_gpus_per_node, 18 * gpus_factor) * additional_buffer_factor
        else:
            gpu = largest_layer_memory + int(2 * total_params / total_gpus)
            if zero_init:
                cpu = total_params * 16 * gpus_factor * additional_buffer_factor
            else:
                cpu = total_params * max(4 * num_gpus_per_node, 16 * gpus_factor) * additional_buffer_factor
    else:
        gpu = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu), largest_layer_memory


def _header(total_params, num_gpus_per_node, num_nodes, largest_layer_params=None) -> list[str]:
    nodes_str = "nodes" if num_nodes > 1 else "node"
    gpus_str = "GPUs" if num_gpus_per_node > 1 else "GPU"
    sw = f"SW: Model with {int(total_params / 1e6)}M total params"
    sw += f", {int(largest_layer_params / 1e6)}M largest layer params." if largest_layer_params is not None else "."
    return [
        "Estimated memory needed for params, optim states and gradients for a:",
        f"HW: Setup with {num_nodes} {nodes_str}, {num_gpus_per_node} {gpus_str} per node.",
        sw,
        "  per CPU  |  per GPU |   Options",
    ]


def _device(offloaded: bool) -> str:
    return f"{'cpu':4}" if offloaded else "none"


def _row(cpu: int, gpu: int, options: str) -> str:
    return f" {cpu / GIB:7.2f}GB | {gpu / GIB:6.2f}GB | {options}"


def format_zero2_estimates(total_params, num_gpus_per_node=1, num_nodes=1, additional_buffer_factor=1.5) -> str:
    """The table ``estimate_zero2_model_states_mem_needs_all_cold`` prints."""
    lines = _header(total_params, num_gpus_per_node, num_nodes)
    for cpu_offload in (True, False):
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node, num_nodes, cpu_offload, additional_buffer_factor
        )
        lines.append(_row(cpu, gpu, f"offload_optimizer={_device(cpu_offload)}"))
    return "\n".join(lines)


def format_zero3_estimates(
    total_params, largest_layer_params, num_gpus_per_node=1, num_nodes=1, additional_buffer_factor=1.5
) -> str:
    """The table ``estimate_zero3_model_states_mem_needs_all_cold`` prints (6 option rows)."""
    lines = _header(total_params, num_gpus_per_node, num_nodes, largest_layer_params)
    for cpu_offload in (True, False):
        for cpu_offload_params in (True, False):
            if not cpu_offload and cpu_offload_params:
                continue  # parameters cannot be offloaded without the optimizer
            for zero_init in (True, False):
                cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                    total_params, largest_layer_params, num_gpus_per_node, num_nodes,
                    cpu_offload, cpu_offload_params, zero_init, additional_buffer_factor,
                )
                options = (
                    f"offload_param={_device(cpu_offload_params)}, "
                    f"offload_optimizer={_device(cpu_offload)}, zero_init={1 if zero_init else 0}"
                )
                lines.append(_row(cpu, gpu, options))
    return "\n".join(lines)


def model_to_params(model) -> tuple[int, int]:
    """``(total_params, largest_layer_params)`` of a torch-like module, shared parameters counted once.

    Duck-typed: anything with ``parameters()`` and ``modules()`` whose parameters
    have ``numel()`` and ``data_ptr()`` (a ``torch.nn.Module``) works; torch is not imported here.
    """
    total = sum({p.data_ptr(): p.numel() for p in model.parameters()}.values())
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def estimate_zero2_model_states_mem_needs_all_cold(
    total_params, num_gpus_per_node=1, num_nodes=1, additional_buffer_factor=1.5
) -> None:
    """Print the ZeRO-2 table for a hypothetical model of ``total_params`` parameters."""
    print(format_zero2_estimates(total_params, num_gpus_per_node, num_nodes, additional_buffer_factor))


def estimate_zero3_model_states_mem_needs_all_cold(
    total_params, largest_layer_params, num_gpus_per_node=1, num_nodes=1, additional_buffer_factor=1.5
) -> None:
    """Print the ZeRO-3 table for a hypothetical model."""
    print(format_zero3_estimates(total_params, largest_layer_params, num_gpus_per_node, num_nodes, additional_buffer_factor))
