"""Build a model stage for conversion without paying for random initialisation.

* :func:`build_empty_stage` builds the stage on the meta device (no random init, no memory),
  then gives every parameter uninitialised CPU storage: the converter overwrites all of them.
* The converters save and load ``model.sharded_state_dict()`` exactly as the trainer's
  CheckpointManager does, so both write the same format.
"""

from __future__ import annotations

import torch

from r1vfree_mcore.parallel.state import ParallelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def materialize(model: torch.nn.Module) -> None:
    """Give meta parameters uninitialised CPU storage, keeping megatron's parameter attributes."""
    done: dict[int, torch.nn.Parameter] = {}  # shared parameters stay shared
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if id(p) not in done:
                new = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                new.__dict__.update(p.__dict__)  # tensor_model_parallel, partition_dim, shared, ...
                done[id(p)] = new
            module._parameters[name] = done[id(p)]


def build_empty_stage(hf_config, parallel: ParallelConfig, dtype: torch.dtype):
    """This rank's stage with uninitialised CPU parameters (megatron parallel state must be up).

    Buffers computed at construction (the decoder's rope frequencies) may stay meta: the result is
    for holding and saving weights, not for running forward.
    """
    from r1vfree_mcore.models.common.configs import no_weight_init
    from r1vfree_mcore.models.common.vlm import build_model  # megatron: only when a stage is built

    with torch.device("meta"), no_weight_init():
        model = build_model(hf_config, parallel, "local", params_dtype=dtype)
    materialize(model)
    return model
