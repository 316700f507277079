"""The schema of ``ds_config.json``'s ``zero_optimization`` section, as DeepSpeed validates it.

DeepSpeed reads that section into a pydantic model, ``DeepSpeedZeroConfig``
(``deepspeed/runtime/zero/config.py``), and its two offload sub-sections into
``DeepSpeedZeroOffloadParamConfig`` / ``DeepSpeedZeroOffloadOptimizerConfig``
(``deepspeed/runtime/zero/offload_config.py``). Those models forbid unknown keys
(``extra="forbid"`` in ``deepspeed/runtime/config_utils.py``), so a misspelt key
such as ``overlap_com`` stops DeepSpeed at start-up. Values are read in pydantic's
*lax* mode: ``"3"``, ``3.0`` and ``" 3"`` are stage 3, ``"yes"``/``"on"``/``1`` are
true, ``5e8`` is the integer 500000000, and a value of ``"auto"`` is dropped (the
key keeps its default). Keys spelt ``stage3_...`` have a short alias (both work).

:data:`ZERO_FIELDS` lists every key of DeepSpeed 0.19.8 with its type and bound;
a conformance test holds it against DeepSpeed's own models. Where the lab is
stricter than DeepSpeed (a boolean as the stage), the message says so.
"""

from __future__ import annotations

import math
import re

from ..errors import UsageError

# kind: "stage" | "bool" | "int" | "float" | "device" | "path" | "offload_param" | "offload_optimizer" | "object"
# bound: None, (">", 0), (">=", 0) or ("in", lo, hi); optional: None is accepted
ZERO_FIELDS: dict[str, tuple[str, tuple | None, bool]] = {
    "stage": ("stage", None, False),
    "contiguous_gradients": ("bool", None, False),
    "reduce_scatter": ("bool", None, False),
    "reduce_bucket_size": ("int", (">", 0), False),
    "use_multi_rank_bucket_allreduce": ("bool", None, False),
    "allgather_partitions": ("bool", None, False),
    "allgather_bucket_size": ("int", (">=", 0), False),
    "overlap_comm": ("bool", None, True),
    "compute_grad_norm": ("bool", None, False),
    "load_from_fp32_weights": ("bool", None, False),
    "elastic_checkpoint": ("bool", None, False),
    "offload_param": ("offload_param", None, True),
    "offload_optimizer": ("offload_optimizer", None, True),
    "zenflow": ("object", None, True),
    "sub_group_size": ("int", (">=", 0), False),
    "cpu_offload_param": ("bool", None, True),  # deprecated: offload_param
    "cpu_offload_use_pin_memory": ("bool", None, True),  # deprecated
    "cpu_offload": ("bool", None, True),  # deprecated: offload_optimizer
    "prefetch_bucket_size": ("int", (">=", 0), False),
    "param_persistence_threshold": ("int", (">=", 0), False),
    "model_persistence_threshold": ("int", (">=", 0), False),
    "max_live_parameters": ("int", (">=", 0), False),
    "max_reuse_distance": ("int", (">=", 0), False),
    "gather_16bit_weights_on_model_save": ("bool", None, False),
    "module_granularity_threshold": ("int", None, False),
    "use_all_reduce_for_fetch_params": ("bool", None, False),
    "allgather_sequential": ("bool", None, False),
    "stage3_gather_fp16_weights_on_model_save": ("bool", None, False),  # deprecated
    "ignore_unused_parameters": ("bool", None, False),
    "legacy_stage1": ("bool", None, False),
    "round_robin_gradients": ("bool", None, False),
    "parameter_alignment": ("bool", None, False),
    "zero_hpz_partition_size": ("int", (">=", 0), False),
    "zero_quantized_weights": ("bool", None, False),
    "zero_quantized_nontrainable_weights": ("bool", None, False),
    "zero_quantized_gradients": ("bool", None, False),
    "memory_efficient_linear": ("bool", None, False),
    "pipeline_loading_checkpoint": ("bool", None, False),
    "override_module_apply": ("bool", None, False),
    "log_trace_cache_warnings": ("bool", None, False),
    "enable_sanity_checks": ("bool", None, False),
    "save_muon_momentum_buffer_in_memory": ("bool", None, False),
    "leaf_module": ("object", None, False),
}

#: ``stage3_...`` spellings (pydantic aliases) of the fields above.
ZERO_ALIASES = {f"stage3_{name}": name for name in (
    "prefetch_bucket_size", "param_persistence_threshold", "model_persistence_threshold", "max_live_parameters",
    "max_reuse_distance", "gather_16bit_weights_on_model_save", "module_granularity_threshold",
    "use_all_reduce_for_fetch_params", "allgather_sequential")}

OFFLOAD_PARAM_FIELDS = {
    "device": ("device", None, False), "nvme_path": ("path", None, True), "buffer_count": ("int", (">=", 0), False),
    "buffer_size": ("int", (">=", 0), False), "max_in_cpu": ("int", (">=", 0), False), "pin_memory": ("bool", None, False),
}
OFFLOAD_OPTIMIZER_FIELDS = {
    "device": ("device", None, False), "nvme_path": ("path", None, True), "buffer_count": ("int", (">=", 0), False),
    "pin_memory": ("bool", None, False), "pipeline_read": ("bool", None, False), "pipeline_write": ("bool", None, False),
    "fast_init": ("bool", None, False), "ratio": ("float", ("in", 0.0, 1.0), False), "super_offload": ("bool", None, False),
    "cpuadam_cores_perc": ("float", ("in", 0.0, 1.0), False),
}
OFFLOAD_DEVICES = ("none", "cpu", "nvme")

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?")  # pydantic: "3", " 3", "3.0", "1_0"; not "2e8"
_STAGE_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")  # an enum member from a string: no underscores


def _as_int(where: str, value: object, text_form: re.Pattern = _INT_TEXT) -> int:
    """pydantic's lax int: an int, a bool, a float without fraction, or such a number in a string."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and text_form.fullmatch(value.strip()):
        return int(float(value.strip().replace("_", ""))) if "." in value else int(value.strip())
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise UsageError(f"{where}={value!r} is not a whole number; write it like 500000000")


def _as_bool(where: str, value: object) -> bool:
    """pydantic's lax bool: true/false, 0/1, or a string such as "yes", "off", "true" (not padded)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise UsageError(f"{where}={value!r} is not true or false; write true or false")


def _as_float(where: str, value: object) -> float:
    """pydantic's lax float: a number, a bool, or a number in ASCII text ("0.5", "2e8", "nan")."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.isascii():
        try:
            return float(value)
        except ValueError:
            pass
    raise UsageError(f"{where}={value!r} is not a number; write it like 0.5")


def _check_bound(where: str, value, bound) -> None:
    if bound is None:
        return
    if (bound[0] == ">" and not value > bound[1]) or (bound[0] == ">=" and not value >= bound[1]):
        raise UsageError(f"{where}={value!r} must be {bound[0]} {bound[1]}")
    if bound[0] == "in" and not bound[1] <= value <= bound[2]:
        raise UsageError(f"{where}={value!r} must be between {bound[1]} and {bound[2]}")


def _value(where: str, kind: str, bound, value: object):
    if kind == "stage":
        if isinstance(value, bool):
            raise UsageError(f"{where}={value!r}: DeepSpeed reads a boolean as stage {int(value)}; clusterlab refuses "
                             f"it on purpose (a typo more often than a choice): write {int(value)}")
        stage = _as_int(where, value, _STAGE_TEXT)
        if stage not in (0, 1, 2, 3):
            raise UsageError(f"{where}={value!r} is not a ZeRO stage; use 0, 1, 2 or 3")
        return stage
    if kind == "bool":
        return _as_bool(where, value)
    number: float
    if kind == "int":
        number = _as_int(where, value)
    elif kind == "float":
        number = _as_float(where, value)
    elif kind == "device":
        if value not in OFFLOAD_DEVICES:
            raise UsageError(f"{where}={value!r} is not an offload device; use one of {', '.join(OFFLOAD_DEVICES)}")
        return value
    elif kind == "path":
        if not isinstance(value, str):
            raise UsageError(f"{where}={value!r} is not a path; write a string such as \"/local_nvme\"")
        return value
    elif kind in ("offload_param", "offload_optimizer"):
        return check_section(where, value, OFFLOAD_PARAM_FIELDS if kind == "offload_param" else OFFLOAD_OPTIMIZER_FIELDS)
    else:  # "object": a sub-section the lab does not explain; DeepSpeed checks its contents
        if not isinstance(value, dict):
            raise UsageError(f"{where}={value!r} must be an object")
        return value
    _check_bound(where, number, bound)
    return number


def check_section(where: str, section: object, fields: dict, aliases: dict | None = None) -> dict:
    """The section with DeepSpeed's reading of each value; UsageError on an unknown key or a bad value."""
    if not isinstance(section, dict):
        raise UsageError(f"{where}={section!r} must be an object like {{\"device\": \"cpu\"}}")
    aliases = aliases or {}
    out = {}
    for key, value in section.items():
        name = aliases.get(key, key)
        if name not in fields:
            close = sorted(k for k in list(fields) + list(aliases) if _near(key, k))
            hint = f"; did you mean {' or '.join(repr(c) for c in close[:2])}?" if close else ""
            raise UsageError(f"{where}.{key}: DeepSpeed has no such key (it refuses unknown keys){hint}")
        if value == "auto":
            continue  # DeepSpeedConfigModel drops "auto" values: the key keeps its default
        kind, bound, optional = fields[name]
        out[key] = None if value is None and optional else _value(f"{where}.{key}", kind, bound, value)
    return out


def _near(a: str, b: str) -> bool:
    """Two keys one edit apart, or one contained in the other (a cheap 'did you mean')."""
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.85


def check_zero_section(zero: object) -> dict:
    """``zero_optimization`` read as DeepSpeed reads it (``true`` is the deprecated form of stage 1)."""
    if isinstance(zero, bool):
        return {"stage": int(zero)}  # read_zero_config_deprecated: true -> stage 1, false -> 0
    if not isinstance(zero, dict):
        raise UsageError(f"zero_optimization={zero!r} must be an object like {{\"stage\": 2}}")
    out = check_section("zero_optimization", zero, ZERO_FIELDS, ZERO_ALIASES)
    # DeepSpeedZeroConfig's model validators (deepspeed/runtime/zero/config.py)
    stage = out.get("stage", 0)
    if out.get("compute_grad_norm") is False and stage not in (1, 2):
        raise UsageError(f"zero_optimization.compute_grad_norm=false needs stage 1 or 2, not {stage} (DeepSpeed refuses it)")
    ratio = (out.get("offload_optimizer") or {}).get("ratio", 1.0)
    if ratio < 1.0 and stage != 3:
        raise UsageError(f"zero_optimization.offload_optimizer.ratio={ratio:g} (partial offload) needs stage 3, "
                         f"not {stage} (DeepSpeed refuses it)")
    return out
