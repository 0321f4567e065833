"""The two model-free rewards both sides of bench/grpo_step.py compute, identically.

- ``format``: R1V-Free's format reward (:func:`r1vfree_mcore.rewards.format.format_reward`).
- ``diversity``: distinct characters / characters of the completion (0 for an empty one), a
  cheap deterministic score that varies within a group, so advantages (and the update) are not
  all zero even when no completion matches the format.

Ours loads :class:`DiversityBackend` as reward backend ``_grpo_step_rewards:DiversityBackend``
(bench/ on PYTHONPATH); TRL calls :func:`trl_format_reward` / :func:`trl_diversity_reward`.
Both sides score the decoded completion text (special tokens skipped).
"""

from __future__ import annotations

from r1vfree_mcore.rewards.format import format_reward


def diversity_reward(completions: list[str]) -> list[float]:
    """Distinct characters / length of each completion."""
    return [len(set(c)) / len(c) if c else 0.0 for c in completions]


class DiversityBackend:
    """Reward backend (our registry protocol) around :func:`diversity_reward`."""

    default_metric = "diversity"
    default_min_score = None

    def score(self, requests) -> list[float]:
        """Diversity of each request's completion."""
        return diversity_reward([r.completion for r in requests])


def _texts(completions) -> list[str]:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c)
            continue
        content = c[0]["content"]
        if isinstance(content, list):  # multimodal content parts
            content = "".join(p.get("text", "") for p in content)
        out.append(content)
    return out


def trl_format_reward(completions, **kwargs) -> list[float]:
    """TRL reward function: :func:`format_reward` of the completion text."""
    return format_reward(_texts(completions))


def trl_diversity_reward(completions, **kwargs) -> list[float]:
    """TRL reward function: :func:`diversity_reward` of the completion text."""
    return diversity_reward(_texts(completions))
