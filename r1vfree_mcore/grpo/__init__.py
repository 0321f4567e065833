"""GRPO math: group advantages, vocab-parallel (fused) log-probs / entropy, the GRPO loss."""

from r1vfree_mcore.grpo.advantages import group_advantages
from r1vfree_mcore.grpo.logprobs import fused_linear_logprobs, vocab_parallel_logprobs
from r1vfree_mcore.grpo.loss import AGGREGATIONS, grpo_loss

__all__ = [
    "AGGREGATIONS",
    "fused_linear_logprobs",
    "group_advantages",
    "grpo_loss",
    "vocab_parallel_logprobs",
]
