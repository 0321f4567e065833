"""Which processes train and which serve rewards, and the policy ranks' own torch.distributed world.

One launch (torchrun/srun) starts ``P + R`` processes: global ranks ``[0, P)`` are policy ranks,
``[P, P + R)`` reward ranks. megatron-core's ``initialize_model_parallel`` spans the whole
torch.distributed world, so the policy ranks build a world of their own
(:func:`init_policy_world`, at ``MASTER_PORT + 1``) and reward ranks never join it. Policy rank
``i`` talks to reward replica ``i % R`` over the reward channel (see ``channel.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RewardTopology:
    """Global rank layout of one launch (policy ranks first, reward ranks last)."""

    rank: int
    world_size: int
    num_reward_ranks: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def __post_init__(self):
        if not 0 <= self.num_reward_ranks < self.world_size:
            raise ValueError(
                f"rewards.num_reward_ranks={self.num_reward_ranks} must be in [0, WORLD_SIZE={self.world_size}) "
                "(at least one policy rank is needed)"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} outside WORLD_SIZE={self.world_size}")

    @classmethod
    def from_env(cls, num_reward_ranks: int | None = None) -> "RewardTopology":
        """From RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS), MASTER_ADDR/PORT, R1V_REWARD_RANKS."""
        if num_reward_ranks is None:
            num_reward_ranks = int(os.environ.get("R1V_REWARD_RANKS", 0))
        return cls(
            rank=int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))),
            world_size=int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))),
            num_reward_ranks=int(num_reward_ranks),
            master_addr=os.environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(os.environ.get("MASTER_PORT", 29500)),
        )

    @property
    def num_policy_ranks(self) -> int:
        """P: size of the policy world."""
        return self.world_size - self.num_reward_ranks

    @property
    def is_reward_rank(self) -> bool:
        """True on the processes that must run :func:`serve_rewards` instead of training."""
        return self.rank >= self.num_policy_ranks

    @property
    def reward_index(self) -> int:
        """Replica number ``r`` of this reward rank (0-based)."""
        if not self.is_reward_rank:
            raise ValueError(f"rank {self.rank} is a policy rank, not a reward rank")
        return self.rank - self.num_policy_ranks

    def replica_for(self, policy_rank: int) -> int:
        """The reward replica serving ``policy_rank``."""
        return policy_rank % self.num_reward_ranks

    def clients_of(self, replica: int) -> list[int]:
        """Policy ranks served by ``replica``."""
        return [i for i in range(self.num_policy_ranks) if i % self.num_reward_ranks == replica]

    def global_rank_of(self, replica: int) -> int:
        """Global rank of reward replica ``replica``."""
        return self.num_policy_ranks + replica


def init_policy_world(topo: RewardTopology | None = None, backend: str | None = None,
                      timeout_s: float = 600.0) -> None:
    """On a policy rank, create the torch.distributed world of the P policy ranks.

    With reward ranks, rendezvous is ``tcp://MASTER_ADDR:MASTER_PORT+1`` (rank = RANK,
    world_size = P); without, the usual env:// world. gloo on CPU, nccl on GPU. Call before the
    parallel state (``initialize_parallel``) is built; it then sees only the policy ranks.
    """
    import torch
    import torch.distributed as dist

    topo = topo or RewardTopology.from_env()
    if topo.is_reward_rank:
        raise RuntimeError(f"rank {topo.rank} is a reward rank; it must run serve_rewards, not join the policy world")
    if dist.is_initialized():
        if dist.get_world_size() != topo.num_policy_ranks:
            raise RuntimeError(
                f"torch.distributed is already initialised with world size {dist.get_world_size()}, "
                f"but the policy world has {topo.num_policy_ranks} ranks"
            )
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    port = topo.master_port + (1 if topo.num_reward_ranks else 0)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{topo.master_addr}:{port}",
        rank=topo.rank,
        world_size=topo.num_policy_ranks,
        timeout=timedelta(seconds=timeout_s),
    )
