"""``ixc_reward``: InternLM-XComposer2.5-Reward (the reward model of the original R1V-Free).

Loaded with ``AutoModel.from_pretrained(path, trust_remote_code=True, dtype=bfloat16)``; the
tokenizer is attached as ``model.tokenizer`` (the remote code expects it). Each sample is scored
as ``model.get_score([user: problem, assistant: answer], [image_path], hd_num=9)``, or as one
``model.get_scores(chats, images, hd_num=9)`` call when the model has it. Images are written to
real temporary files that live for the duration of the call (the original passed a path inside
an empty directory).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from r1vfree_mcore.rewards.chat import reward_answer
from r1vfree_mcore.rewards.request import RewardRequest


class IXCRewardBackend:
    """Adapter over a ``get_score``/``get_scores`` model; ``model`` may be given directly."""

    default_metric = "accuracy"
    default_min_score = 0.0

    def __init__(self, path: str | None = None, model: Any = None, hd_num: int = 9, dtype: str = "bfloat16",
                 device: str | None = None, use_extracted_answer: bool = True, batched: bool = True):
        if model is None:
            if not path:
                raise ValueError("ixc_reward: 'path' (an HF model directory) is required")
            model = self._load(path, dtype, device)
        if not callable(getattr(model, "get_score", None)):
            raise TypeError(f"ixc_reward: model {type(model).__name__} has no get_score(chat, images, hd_num)")
        self.model = model
        self.hd_num = hd_num
        self.use_extracted_answer = use_extracted_answer
        self.batched = batched and callable(getattr(model, "get_scores", None))

    @staticmethod
    def _load(path: str, dtype: str, device: str | None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=getattr(torch, dtype))
        model.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return model.to(dev).eval()

    def score(self, requests: list[RewardRequest]) -> list[float]:
        """Reward-model score per request (unclipped; clipping is the engine's job)."""
        with tempfile.TemporaryDirectory(prefix="ixc_images_") as tmp:
            chats, images = [], []
            for k, r in enumerate(requests):
                chats.append([
                    {"role": "user", "content": r.prompt},
                    {"role": "assistant", "content": reward_answer(r, self.use_extracted_answer)},
                ])
                images.append([self._image_path(r, Path(tmp) / f"{k}.png")] if r.image is not None else [])
            if self.batched and len(requests) > 1:
                out = self.model.get_scores(chats, images, hd_num=self.hd_num)
            else:
                out = [self.model.get_score(c, i, hd_num=self.hd_num) for c, i in zip(chats, images)]
            return [float(s) for s in out]

    @staticmethod
    def _image_path(req: RewardRequest, dest: Path) -> str:
        if isinstance(req.image, bytes):
            req.load_image().save(dest)  # validates the bytes and writes a real file
            return str(dest)
        if not Path(req.image).is_file():
            raise FileNotFoundError(f"ixc_reward: image {req.image} of sample {req.sample_id!r} does not exist")
        return str(req.image)
