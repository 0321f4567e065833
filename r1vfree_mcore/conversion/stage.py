"""Build a model stage for conversion and describe it for megatron dist_checkpointing.

* :func:`build_empty_stage` builds the stage on the meta device (no random init, no memory),
  then gives every parameter uninitialised CPU storage: the converter overwrites all of them.
* :func:`stage_sharded_state_dict` is the sharded state dict the converters save and load.
  megatron-core's default recursion treats a plain ``torch.nn.ModuleList`` (our vision blocks)
  as replicated and keeps each TP rank's *local* shard shape as the global shape, which loses
  the TP split of the vision tower; here list members are asked for their own (TP-aware) sharded
  state dicts. At TP=1 the result equals ``model.sharded_state_dict()``.
* :func:`ensure_process_group` gives a single process a one-rank gloo world (dist_checkpointing
  and megatron's parallel state need one).
"""

from __future__ import annotations

import os

import torch

from r1vfree_mcore.models.common.vlm import build_model
from r1vfree_mcore.parallel.state import ParallelConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ensure_process_group() -> None:
    """Start a one-rank gloo process group on a free port unless one exists."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from r1vfree_mcore.conversion.workers import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo", rank=0, world_size=1)


def _materialize(model: torch.nn.Module) -> None:
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


def build_empty_stage(hf_config, parallel: ParallelConfig, dtype: torch.dtype, materialize: bool = True):
    """This rank's stage with uninitialised CPU parameters (megatron parallel state must be up).

    Buffers computed at construction (rope frequencies) are meta too: the result is for holding
    and saving weights, not for running forward.
    """
    with torch.device("meta"):
        model = build_model(hf_config, parallel, "local", params_dtype=dtype)
    if materialize:
        _materialize(model)
    return model


def stage_sharded_state_dict(model, prefix: str = "") -> dict:
    """megatron sharded state dict of a stage, with TP-correct entries for ModuleList members."""
    from megatron.core.transformer.module import MegatronModule
    from megatron.core.transformer.utils import sharded_state_dict_default

    def walk(module, pre):
        if isinstance(module, torch.nn.ModuleList):
            out = {}
            for i, child in enumerate(module):
                out.update(walk(child, f"{pre}{i}."))
            return out
        default = type(module).sharded_state_dict is MegatronModule.sharded_state_dict
        if isinstance(module, MegatronModule) and default and not module._parameters:
            out = {}
            for name, child in module.named_children():
                out.update(walk(child, f"{pre}{name}."))
            return out
        return sharded_state_dict_default(module, pre)

    return walk(model, prefix)
