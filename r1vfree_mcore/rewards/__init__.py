"""Label-free AI feedback: reward backends, in-process scoring and dedicated reward ranks.

Trainer-facing API::

    cfg = RewardConfig.from_dict(config["rewards"])
    topo = RewardTopology.from_env(cfg.num_reward_ranks)
    if topo.is_reward_rank:
        serve_rewards(cfg, topo)
        return
    init_policy_world(topo)              # policy ranks only; then initialize_parallel(...)
    scorer = make_scorer(cfg, topo)      # LocalRewardScorer or RewardClient
    handle = scorer.submit(requests)     # right after rollout
    ...                                  # ref / old log-prob passes
    result = handle.result(timeout)      # RewardResult: scores, total, valid, metrics()
"""

from r1vfree_mcore.rewards.channel import RewardRankError
from r1vfree_mcore.rewards.client import RemoteRewardHandle, RewardClient, make_scorer
from r1vfree_mcore.rewards.config import BackendSpec, RewardConfig
from r1vfree_mcore.rewards.format import extract_answer, format_reward
from r1vfree_mcore.rewards.local import LocalRewardScorer, RewardHandle
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardEngine, RewardFailureError, RewardResult
from r1vfree_mcore.rewards.server import serve_rewards
from r1vfree_mcore.rewards.topology import RewardTopology, init_policy_world

__all__ = [
    "BackendSpec",
    "LocalRewardScorer",
    "RemoteRewardHandle",
    "RewardClient",
    "RewardConfig",
    "RewardEngine",
    "RewardFailureError",
    "RewardHandle",
    "RewardRankError",
    "RewardRequest",
    "RewardResult",
    "RewardTopology",
    "extract_answer",
    "format_reward",
    "init_policy_world",
    "make_scorer",
    "serve_rewards",
]
