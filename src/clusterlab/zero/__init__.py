"""Part 5: DeepSpeed ZeRO across simulated nodes.

One concept per module:

* :mod:`~clusterlab.zero.memory` - the ZeRO paper's per-device model-state bytes per stage;
* :mod:`~clusterlab.zero.estimators` - DeepSpeed's own ``estimate_zero2/3_model_states_mem_needs``;
* :mod:`~clusterlab.zero.comm` - per-step traffic per stage and its alpha-beta time, flat vs hierarchical;
* :mod:`~clusterlab.zero.collectives` - ring reduce-scatter / all-gather / all-reduce / broadcast (the algorithm);
* :mod:`~clusterlab.zero.transport` - the wire those rings run over (TCP on 127.0.0.1);
* :mod:`~clusterlab.zero.simulate` - a rank of a small mixed-precision model trained with ZeRO-0/1/2/3;
* :mod:`~clusterlab.zero.worker` - the script ``clusterlab zero simulate`` launches on every rank;
* :mod:`~clusterlab.zero.launch` - starts those ranks under the core launcher and checks their reports;
* :mod:`~clusterlab.zero.hostfile` - DeepSpeed hostfiles and ``--include``/``--exclude``;
* :mod:`~clusterlab.zero.ds_config` - the batch-size rule of ``ds_config.json`` and the stage keys;
* :mod:`~clusterlab.zero.ds_schema` - the ``zero_optimization`` keys and values DeepSpeed accepts;
* :mod:`~clusterlab.zero.differences` - the one list of deliberate differences from the real DeepSpeed;
* :mod:`~clusterlab.zero.cli` - ``clusterlab zero estimate|comm|simulate|hostfile|config``.

Nothing here imports numpy at import time, so ``clusterlab`` starts fast.
"""

from .memory import ADAM_K, ModelStateBytes, model_state_bytes, per_device_bytes

__all__ = ["ADAM_K", "ModelStateBytes", "model_state_bytes", "per_device_bytes"]
