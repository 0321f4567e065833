"""The conversation a model-based reward backend scores (original R1V-Free semantics)."""

from __future__ import annotations

from r1vfree_mcore.rewards.format import extract_answer
from r1vfree_mcore.rewards.request import RewardRequest


def reward_answer(req: RewardRequest, use_extracted_answer: bool = True) -> str:
    """What the reward model judges: the ``<answer>`` text (default) or the whole completion."""
    return extract_answer(req.completion) if use_extracted_answer else req.completion


def reward_chat(req: RewardRequest, use_extracted_answer: bool = True, with_image: bool = True) -> list[dict]:
    """``[user: (image, problem), assistant: answer]`` in the HF multimodal message format."""
    user = ([{"type": "image"}] if with_image and req.image is not None else []) + [
        {"type": "text", "text": req.prompt}
    ]
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": [{"type": "text", "text": reward_answer(req, use_extracted_answer)}]},
    ]
