"""megatron-core DDP wrapper, optimizer and LR schedule for the policy.

Frozen parameters (``requires_grad=False``, e.g. a frozen vision tower) get no grad buffer and no
optimizer state: megatron's DDP and optimizer only see trainable parameters.
The distributed optimizer is used on GPUs (shards Adam state over DP); on CPU the plain one.
"""

from __future__ import annotations

import torch

from r1vfree_mcore.train.config import OptimConfig


def wrap_ddp(model: torch.nn.Module, *, use_distributed_optimizer: bool | None = None):
    """Wrap one model chunk in megatron-core's DistributedDataParallel (fp32 grad buffers)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    if use_distributed_optimizer is None:
        use_distributed_optimizer = torch.cuda.is_available()
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_cfg, module=model)


def build_optimizer(ddp_model, cfg: OptimConfig, *, bf16: bool, max_steps: int):
    """Adam through megatron-core plus its LR/WD scheduler (warmup, then constant or cosine)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    ocfg = OptimizerConfig(
        optimizer="adam",
        lr=cfg.lr,
        min_lr=cfg.min_lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_eps=cfg.adam_eps,
        clip_grad=cfg.grad_clip,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=ddp_model.ddp_config.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(ocfg, [ddp_model])
    decay_steps = max(max_steps, cfg.warmup_steps + 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if cfg.warmup_steps else cfg.lr,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr if cfg.schedule == "cosine" else cfg.lr,
        lr_warmup_steps=cfg.warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style="cosine" if cfg.schedule == "cosine" else "constant",
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def current_lr(optimizer) -> float:
    """Learning rate of the first param group."""
    return float(optimizer.param_groups[0]["lr"])
