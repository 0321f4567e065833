"""``vlm_scalar``: a Qwen2-VL / Qwen2.5-VL backbone with a scalar value head.

The model directory is an HF checkpoint (``AutoModelForImageTextToText`` or ``AutoModel``; the
inner decoder's last hidden state is used) plus ``value_head.safetensors`` (``weight`` [1, H],
``bias`` [1]) and ``value_head.json`` (``{"pooling": ..., "hidden_size": H}``).

Poolings:

- ``"last"`` (a normal reward model): the head reads the final hidden state of the last
  non-pad token of the chat ``[user: (image, problem), assistant: answer]``.
- ``"answer_embedding_sum"`` (the deterministic *clear preference* probe for demos/tests): the
  head reads the sum of the *input embeddings* of the answer tokens (the backbone is bypassed).
  :func:`init_preference_head` sets the head to ``sum_k e_k / |e_k|^2`` over the embeddings of
  chosen tokens, so each occurrence of a chosen token (e.g. ``yes``) adds ~1.0 to the score and
  other tokens add small noise: a tiny policy can learn to raise it within a few steps.

:func:`save_value_head` writes a random (or given) head for ``"last"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from r1vfree_mcore.rewards.chat import reward_answer, reward_chat
from r1vfree_mcore.rewards.request import RewardRequest

POOLINGS = ("last", "answer_embedding_sum")


def save_value_head(model_dir: str | Path, weight: torch.Tensor | None = None, bias: float = 0.0,
                    pooling: str = "last", seed: int = 0) -> Path:
    """Write ``value_head.safetensors`` + ``value_head.json`` into ``model_dir``.

    ``weight`` [H] or [1, H]; None draws N(0, 1/H) with ``seed`` (hidden size read from config).
    """
    from safetensors.torch import save_file

    if pooling not in POOLINGS:
        raise ValueError(f"value head pooling must be one of {POOLINGS}, got {pooling!r}")
    model_dir = Path(model_dir)
    if weight is None:
        cfg = json.loads((model_dir / "config.json").read_text())
        hidden = (cfg.get("text_config") or cfg)["hidden_size"]
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(hidden, generator=g) / hidden**0.5
    weight = weight.detach().float().reshape(1, -1).contiguous()
    save_file({"weight": weight, "bias": torch.tensor([float(bias)])}, str(model_dir / "value_head.safetensors"))
    (model_dir / "value_head.json").write_text(json.dumps({"pooling": pooling, "hidden_size": weight.shape[1]}))
    return model_dir / "value_head.safetensors"


def preference_token_ids(tokenizer, tokens: list[str]) -> list[int]:
    """Token ids of each string as written and with a leading space (byte-level BPE merges)."""
    ids: set[int] = set()
    for t in tokens:
        for variant in (t, " " + t):
            enc = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(enc[0])
    if not ids:
        raise ValueError(f"none of the preference tokens {tokens} is a single token of this tokenizer")
    return sorted(ids)


def init_preference_head(model_dir: str | Path, tokens: list[str] = ("yes",), bias: float = 0.0) -> Path:
    """Clear-preference head (pooling ``answer_embedding_sum``): score ~ count of ``tokens`` in the answer."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = preference_token_ids(tok, list(tokens))
    emb = None
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                if k.endswith("embed_tokens.weight"):
                    emb = sf.get_tensor(k).float()
    if emb is None:
        raise ValueError(f"{model_dir}: no '*embed_tokens.weight' tensor found in the safetensors files")
    rows = emb[ids]
    weight = (rows / rows.pow(2).sum(1, keepdim=True)).sum(0)
    return save_value_head(model_dir, weight, bias=bias, pooling="answer_embedding_sum")


class VLMScalarBackend:
    """Scalar reward from a Qwen-VL backbone + value head (see module docstring)."""

    default_metric = "accuracy"
    default_min_score = 0.0

    def __init__(self, path: str, dtype: str = "float32", device: str | None = None,
                 use_extracted_answer: bool = True, max_length: int | None = None):
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

        self.path = Path(path)
        head_file = self.path / "value_head.safetensors"
        if not head_file.is_file():
            raise FileNotFoundError(f"vlm_scalar: {head_file} is missing (write it with save_value_head)")
        meta = json.loads((self.path / "value_head.json").read_text()) if (self.path / "value_head.json").is_file() else {}
        self.pooling = meta.get("pooling", "last")
        if self.pooling not in POOLINGS:
            raise ValueError(f"vlm_scalar: {self.path}/value_head.json pooling {self.pooling!r} not in {POOLINGS}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = getattr(torch, dtype)
        self.processor = AutoProcessor.from_pretrained(self.path)
        try:
            full = AutoModelForImageTextToText.from_pretrained(self.path, dtype=torch_dtype)
            self.backbone = full.model
        except ValueError:
            self.backbone = AutoModel.from_pretrained(self.path, dtype=torch_dtype)
        self.backbone.to(self.device).eval()
        head = load_file(str(head_file))
        hidden = self.backbone.get_input_embeddings().weight.shape[1]
        if head["weight"].shape != (1, hidden):
            raise ValueError(f"vlm_scalar: {head_file} weight shape {tuple(head['weight'].shape)} != (1, {hidden})")
        self.head = torch.nn.Linear(hidden, 1).to(self.device, torch.float32)
        with torch.no_grad():
            self.head.weight.copy_(head["weight"])
            self.head.bias.copy_(head["bias"])
        self.use_extracted_answer = use_extracted_answer
        self.max_length = max_length

    @torch.no_grad()
    def score(self, requests: list[RewardRequest]) -> list[float]:
        """One scalar per request (fp32 head over the pooled representation)."""
        if self.pooling == "answer_embedding_sum":
            return self._score_answer_embeddings(requests)
        texts, images = [], []
        for r in requests:
            texts.append(self.processor.apply_chat_template(reward_chat(r, self.use_extracted_answer), tokenize=False))
            img = r.load_image()
            if img is not None:
                images.append(img)
        self.processor.tokenizer.padding_side = "right"
        inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.backbone(**inputs)
        hidden = out.last_hidden_state.float()
        mask = inputs["attention_mask"]
        pos = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * pos).argmax(1)  # index of the last non-pad token, whatever the padding side
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(pooled).squeeze(-1).tolist()

    def _score_answer_embeddings(self, requests: list[RewardRequest]) -> list[float]:
        emb = self.backbone.get_input_embeddings()
        tok = self.processor.tokenizer
        out = []
        for r in requests:
            ids = tok(reward_answer(r, self.use_extracted_answer), add_special_tokens=False)["input_ids"]
            pooled = emb(torch.tensor(ids, dtype=torch.long, device=self.device)).float().sum(0)
            out.append(float(self.head(pooled)))
        return out
