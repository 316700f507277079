"""A simulated ``ds_config.json`` check: DeepSpeed's batch-size rule and the ZeRO keys explained.

DeepSpeed insists (``deepspeed/runtime/config.py``, ``_batch_assertion``) that::

    train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size

``train_batch_size`` is the *global* batch of one optimizer step; each of the
``world_size`` data-parallel ranks runs ``gradient_accumulation_steps`` forward/
backward passes on micro-batches of ``train_micro_batch_size_per_gpu`` before
the optimizer steps. Give any two and DeepSpeed derives the third
(``_set_batch_related_parameters``, with integer division - so a value that does
not divide fails the rule afterwards); give only ``train_batch_size`` and it uses
no accumulation; give none and it refuses. The same config therefore breaks when
the job moves to another node count: 8 ranks x 4 x 2 = 64, but on 12 ranks the
rule says 96.

Under ``zero_optimization``, the keys that matter per stage:

* ``stage`` 0-3 (what is partitioned: see :mod:`clusterlab.zero.memory`);
* stages 1-2: ``reduce_bucket_size`` / ``allgather_bucket_size`` (elements per
  gradient reduce / parameter gather bucket), ``overlap_comm``, ``reduce_scatter``,
  ``contiguous_gradients``, ``offload_optimizer`` (stage 1+ can keep Adam on CPU/NVMe);
* stage 3 only: ``offload_param`` (parameters on CPU/NVMe), ``stage3_prefetch_bucket_size``,
  ``stage3_param_persistence_threshold`` (small params stay unpartitioned),
  ``stage3_max_live_parameters``, ``stage3_max_reuse_distance``,
  ``stage3_gather_16bit_weights_on_model_save``, ``sub_group_size``.

A stage-3-only key in a stage 0-2 config does nothing; this check says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import UsageError
from .ds_schema import ZERO_ALIASES, check_zero_section

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")

ZERO_KEYS = {
    "stage": (0, "0 = plain data parallel, 1 = partition optimizer states, 2 = + gradients, 3 = + parameters"),
    "reduce_bucket_size": (1, "elements reduced per bucket when averaging gradients"),
    "allgather_bucket_size": (1, "elements gathered per bucket when rebuilding updated parameters (stages 1-2)"),
    "overlap_comm": (1, "overlap gradient reduction with the backward pass (more buffer memory)"),
    "reduce_scatter": (1, "average gradients with reduce-scatter instead of all-reduce"),
    "contiguous_gradients": (1, "copy gradients into one contiguous buffer as they are produced"),
    "offload_optimizer": (1, "keep optimizer states (and the step) on CPU or NVMe"),
    "round_robin_gradients": (1, "interleave gradient partitions across ranks (helps CPU offload)"),
    "offload_param": (3, "keep partitioned parameters on CPU or NVMe"),
    "stage3_prefetch_bucket_size": (3, "parameters fetched ahead of use"),
    "stage3_param_persistence_threshold": (3, "parameters smaller than this stay unpartitioned"),
    "stage3_max_live_parameters": (3, "upper bound of gathered parameters held at once"),
    "stage3_max_reuse_distance": (3, "keep a gathered parameter if it is reused within this distance"),
    "stage3_gather_16bit_weights_on_model_save": (3, "gather the full fp16 model when saving"),
    "sub_group_size": (3, "optimizer step in groups of this many parameters (limits CPU/NVMe buffers)"),
    "zero_hpz_partition_size": (3, "ZeRO++ hierarchical partitioning: secondary copy of params inside a node"),
}


@dataclass
class ConfigReport:
    world_size: int
    batch: dict
    stage: int | None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        b = self.batch
        lines = [
            f"world_size={self.world_size}: train_batch_size {b['train_batch_size']} = "
            f"train_micro_batch_size_per_gpu {b['train_micro_batch_size_per_gpu']} x "
            f"gradient_accumulation_steps {b['gradient_accumulation_steps']} x world_size {self.world_size}  OK"
        ]
        if self.stage is not None:
            lines.append(f"zero_optimization.stage = {self.stage}: {ZERO_KEYS['stage'][1]}")
        lines += self.notes
        return "\n".join(lines)


def _int_key(cfg: dict, key: str):
    """A batch number as DeepSpeed would use it, or None when absent; UsageError for what cannot be a batch.

    DeepSpeed does plain arithmetic on these values: 64.0 passes (64.0 == 4 * 2 * 8) and is
    accepted here too; a string stops DeepSpeed with a TypeError. It would also read ``true``
    as 1 and accept a micro-batch of 0.5 when the product works out; the lab refuses both on
    purpose (see :data:`clusterlab.zero.differences.DIFFERENCES`) and says so.
    """
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise UsageError(f"{key}={json.dumps(value)}: DeepSpeed would compute with it as {int(value)}; "
                         f"clusterlab refuses a boolean batch size on purpose: write {int(value)}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float):
        raise UsageError(f"{key}={value!r} is not a whole number of samples; DeepSpeed only checks the product, "
                         "clusterlab refuses fractions on purpose: use a positive integer")
    if not isinstance(value, int):
        raise UsageError(f"{key}={value!r} must be a whole number (DeepSpeed stops with a TypeError on it)")
    if value <= 0:
        raise UsageError(f"{key}={value} must be greater than 0 (DeepSpeed refuses it too)")
    return value


def resolve_batch(cfg: dict, world_size: int) -> dict:
    """The three batch numbers after DeepSpeed fills in the missing one; UsageError if the rule fails."""
    tb, mb, ga = (_int_key(cfg, k) for k in BATCH_KEYS)
    if tb is not None and mb is not None and ga is not None:
        pass
    elif tb is not None and mb is not None:
        ga = tb // mb // world_size
    elif tb is not None and ga is not None:
        mb = tb // world_size // ga
    elif mb is not None and ga is not None:
        tb = mb * ga * world_size
    elif tb is not None:
        ga, mb = 1, tb // world_size
    elif mb is not None:
        ga, tb = 1, mb * world_size
    else:
        raise UsageError("set train_batch_size or train_micro_batch_size_per_gpu (DeepSpeed needs at least one)")
    for key, value in zip(BATCH_KEYS, (tb, mb, ga)):
        if value <= 0:
            raise UsageError(f"{key}={value} must be greater than 0 (with world_size={world_size})")
    if tb != mb * ga * world_size:
        raise UsageError(
            f"Check batch related parameters. train_batch_size is not equal to micro_batch_per_gpu * "
            f"gradient_acc_step * world_size {tb} != {mb} * {ga} * {world_size} (DeepSpeed's message): "
            f"the global batch must be exactly what the ranks process per optimizer step; "
            f"set train_batch_size to {mb * ga * world_size} or change the others"
        )
    return dict(zip(BATCH_KEYS, (tb, mb, ga)))


def check_config(cfg: object, world_size: int) -> ConfigReport:
    """Validate a parsed ds_config for ``world_size`` ranks and explain its ZeRO section."""
    if not isinstance(cfg, dict):
        raise UsageError(f"a ds_config must be a JSON object, got {type(cfg).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise UsageError(f"world_size={world_size!r} must be a positive integer")
    batch = resolve_batch(cfg, world_size)
    zero = check_zero_section(cfg.get("zero_optimization", {})) if "zero_optimization" in cfg else {}
    stage = zero.get("stage", 0 if "zero_optimization" in cfg else None)
    notes = []
    for key, value in zero.items():
        if key == "stage":
            continue
        name = ZERO_ALIASES.get(key, key)
        if name not in ZERO_KEYS and key not in ZERO_KEYS:
            notes.append(f"  {key} = {json.dumps(value)}: a valid DeepSpeed key this lab does not explain")
            continue
        min_stage, meaning = ZERO_KEYS.get(key) or ZERO_KEYS[name]
        unused = " - has no effect below stage %d" % min_stage if (stage or 0) < min_stage else ""
        notes.append(f"  {key} = {json.dumps(value)}: {meaning}{unused}")
    return ConfigReport(world_size, batch, stage, notes)


def _no_duplicates(pairs: list) -> dict:
    """DeepSpeed loads the file with ``dict_raise_error_on_duplicate_keys``: a key given twice is an error."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise UsageError(f"key {key!r} appears twice in one object; DeepSpeed refuses that: keep one")
        seen[key] = value
    return seen


def read_config(path: str, world_size: int) -> ConfigReport:
    """Read ``path`` as strict JSON (DeepSpeed reads Hjson, a superset) and check it for ``world_size`` ranks."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f, object_pairs_hook=_no_duplicates)
    except OSError as exc:
        raise UsageError(f"cannot read ds_config {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"ds_config {path!r} is not UTF-8 JSON text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return check_config(cfg, world_size)
