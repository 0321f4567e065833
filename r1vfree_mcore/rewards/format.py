"""The R1V-Free format reward and answer extraction (original semantics, kept exact)."""

from __future__ import annotations

import re

from r1vfree_mcore.rewards.request import RewardRequest

FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NO_ANSWER = "I don't know."


def format_reward(completions: list[str]) -> list[float]:
    """1.0 where the completion is exactly ``<think>...</think> <answer>...</answer>``, else 0.0."""
    return [1.0 if FORMAT_PATTERN.fullmatch(c) else 0.0 for c in completions]


def extract_answer(text: str) -> str:
    """The stripped text inside the first ``<answer>...</answer>``; ``"I don't know."`` if none."""
    m = _ANSWER.search(text)
    return m.group(1).strip() if m else NO_ANSWER


class FormatBackend:
    """Reward backend wrapper of :func:`format_reward` (no model, never fails)."""

    default_metric = "format"
    default_min_score = None

    def __init__(self) -> None:
        pass

    def score(self, requests: list[RewardRequest]) -> list[float]:
        """Format reward of each request's completion."""
        return format_reward([r.completion for r in requests])
