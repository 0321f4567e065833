"""Build everything a policy rank needs for training, from a validated :class:`Config`.

Kept apart from the loop so the loop reads top to bottom. The order matters: process groups,
then model(s) and optimizer, then data, rewards, logging, and finally the resume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from r1vfree_mcore.train.config import Config

log = logging.getLogger(__name__)


@dataclass
class PolicyGroups:
    """This rank's place in the policy layout."""

    rank: int
    world: int
    dp_rank: int
    dp_size: int
    is_last_stage: bool
    is_logging_rank: bool
    leader: int  # global rank of this DP replica's reward leader (last stage, TP rank 0)
    is_leader: bool


@dataclass
class Components:
    cfg: Config
    groups: PolicyGroups
    hf_config: Any
    processor: Any
    model: Any  # DDP-wrapped policy stage
    ref_model: Any | None
    optimizer: Any
    scheduler: Any
    dataset: Any
    sampler: Any
    scorer: Any | None
    precision: Any  # train.precision.PrecisionPlan
    extras: dict = field(default_factory=dict)


def policy_groups() -> PolicyGroups:
    """Ranks, DP coordinates and the reward leader of this DP replica."""
    from megatron.core import parallel_state as ps

    rank, world = dist.get_rank(), dist.get_world_size()
    last = ps.is_pipeline_last_stage()
    is_leader = last and ps.get_tensor_model_parallel_rank() == 0
    group = ps.get_model_parallel_group()
    members = [None] * dist.get_world_size(group)
    dist.all_gather_object(members, (is_leader, rank), group=group)
    leader = next(r for lead, r in members if lead)
    return PolicyGroups(
        rank=rank, world=world, dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        is_last_stage=last, is_logging_rank=rank == 0, leader=leader, is_leader=is_leader,
    )


def load_initial_weights(model, model_cfg, hf_config) -> str:
    """Fill a built stage from ``model.mcore_dir`` (a dist checkpoint at any TP/PP, e.g. the
    converter's output or a trainer checkpoint) or else from the HF weights in ``model.hf_dir``.
    Returns where the weights came from."""
    if model_cfg.mcore_dir:
        from r1vfree_mcore.conversion.dist_io import load_into_model
        from r1vfree_mcore.conversion.metadata import DIST, resolve_checkpoint

        ckpt = resolve_checkpoint(model_cfg.mcore_dir)
        load_into_model(model, ckpt / DIST)
        return str(ckpt)
    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict

    load_hf_state_dict(model, HFReader(model_cfg.hf_dir), hf_config)
    return str(model_cfg.hf_dir)


def build_policy_model(cfg: Config, hf_config, plan, *, trainable: bool):
    """One pipeline stage of the policy (or the frozen reference), built as the precision plan
    says and with its initial weights loaded."""
    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.parallel.state import ParallelConfig

    pcfg = ParallelConfig(cfg.parallel.tp, cfg.parallel.pp,
                          tuple(cfg.parallel.pp_layer_split) if cfg.parallel.pp_layer_split else None)
    model = build_model(hf_config, pcfg, plan.spec, freeze_vision=cfg.model.freeze_vision,
                        freeze_merger=cfg.model.freeze_merger, params_dtype=plan.params_dtype,
                        decoder_overrides=plan.decoder_overrides())
    source = load_initial_weights(model, cfg.model, hf_config)
    log.info("%s weights from %s", "policy" if trainable else "reference", source)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    return model


def build_components(cfg: Config, topo) -> Components:
    """Everything the loop needs, on a policy rank whose torch.distributed world is up."""
    from transformers import AutoConfig, AutoProcessor

    from r1vfree_mcore.data.dataset import PromptDataset
    from r1vfree_mcore.data.sampler import ResumableSampler
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.rewards import make_scorer
    from r1vfree_mcore.train.optimizer import build_optimizer, wrap_ddp
    from r1vfree_mcore.train.precision import plan_precision

    cfg.check_world(dist.get_world_size() + cfg.reward.num_ranks)
    initialize_parallel(ParallelConfig(cfg.parallel.tp, cfg.parallel.pp), seed=cfg.train.seed)
    groups = policy_groups()
    torch.manual_seed(cfg.train.seed)

    hf_config = AutoConfig.from_pretrained(cfg.model.hf_dir)
    processor = AutoProcessor.from_pretrained(cfg.model.hf_dir)
    processor.image_processor.size = {"shortest_edge": cfg.data.min_pixels, "longest_edge": cfg.data.max_pixels}

    plan = plan_precision(cfg.model)
    if groups.is_logging_rank:
        print(f"r1vfree: {plan.describe()}", flush=True)
    model = build_policy_model(cfg, hf_config, plan, trainable=True)
    ddp = wrap_ddp(model)
    from megatron.core.distributed import finalize_model_grads

    # DP all-reduce and the tied-embedding all-reduce between first and last PP stage.
    model.config.finalize_model_grads_func = finalize_model_grads
    ref = build_policy_model(cfg, hf_config, plan, trainable=False) if cfg.grpo.beta > 0 else None
    optimizer, scheduler = build_optimizer(ddp, cfg.optim, bf16=plan.params_dtype == torch.bfloat16,
                                           max_steps=cfg.train.max_steps)

    dataset = PromptDataset(cfg.data.path, cfg.data.format)
    sampler = ResumableSampler(len(dataset), cfg.data.shuffle_seed, groups.dp_rank, groups.dp_size)
    scorer = make_scorer(cfg.reward.to_reward_config(), topo) if groups.is_leader else None
    if scorer is None and cfg.reward.num_ranks > 0:
        # Every policy rank takes part in the reward rendezvous; only leaders submit.
        scorer = make_scorer(cfg.reward.to_reward_config(), topo)
    return Components(cfg, groups, hf_config, processor, ddp, ref, optimizer, scheduler,
                      dataset, sampler, scorer, precision=plan)


def node_line(role: str) -> str:
    """The start-up line every rank prints (the Slurm tests read node ids from it)."""
    import socket

    return (
        f"r1vfree: rank={os.environ.get('RANK', 0)} world={os.environ.get('WORLD_SIZE', 1)} role={role} "
        f"node={os.environ.get('SLURM_NODEID', 0)} host={socket.gethostname()} "
        f"local_rank={os.environ.get('LOCAL_RANK', 0)}"
    )
