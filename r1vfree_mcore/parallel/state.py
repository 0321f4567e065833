"""Process-group set-up for the policy: torch.distributed + megatron-core parallel_state."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelConfig:
    """Model-parallel layout of the policy. DP is whatever the world leaves over."""

    tp: int = 1
    pp: int = 1
    # Decoder layers per pipeline stage, e.g. (3, 1); None splits evenly.
    pp_layer_split: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in ("tp", "pp"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.pp_layer_split is not None and len(self.pp_layer_split) != self.pp:
            raise ValueError(
                f"parallel.pp_layer_split has {len(self.pp_layer_split)} entries for pp={self.pp}"
            )


def default_backend() -> str:
    """nccl on GPUs, gloo otherwise."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def collective_device() -> torch.device:
    """Where tensors for collectives on the default backend must live (nccl needs CUDA tensors)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> None:
    """Initialise torch.distributed from the torchrun/srun environment (single process if absent)."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend or default_backend(), rank=rank, world_size=world)


def initialize_parallel(cfg: ParallelConfig, seed: int = 1234) -> None:
    """Build megatron-core's TP/PP/DP groups over the whole world and seed the RNG tracker.

    This is the one place that applies the CPU workarounds for megatron-core.
    """
    from megatron.core import parallel_state, tensor_parallel

    from r1vfree_mcore.parallel import cpu_compat

    init_distributed()
    cpu_compat.apply()
    world = dist.get_world_size()
    if world % (cfg.tp * cfg.pp) != 0:
        raise ValueError(
            f"world size {world} is not divisible by parallel.tp x parallel.pp = {cfg.tp * cfg.pp}"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_parallel() -> None:
    """Tear down megatron-core's groups (torch.distributed stays up)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
