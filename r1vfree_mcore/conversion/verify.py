"""--verify: run transformers and the Megatron model (TP=1/PP=1) on one probe image + text.

The Megatron side is built at TP=1/PP=1 in one process and filled from the dist checkpoint the
way the trainer resumes (so the checkpoint reshards from whatever TP/PP wrote it). Runs in a
spawned process so the caller's torch.distributed / megatron state is never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from r1vfree_mcore.conversion.errors import ConversionError
from r1vfree_mcore.conversion.stage import DTYPES

# Allowed max |logit diff|, relative to max(1, max |reference logit|).
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


def probe_inputs(processor, seed: int = 0) -> dict:
    """One chat turn with a 56x84 random image and a question, through the checkpoint's processor."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown here?"}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


def hf_logits(hf_dir: Path, dtype: torch.dtype, inputs: dict) -> torch.Tensor:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(hf_dir), dtype=dtype).eval()
    with torch.no_grad():
        out = model(**inputs).logits.float()
    del model
    return out


def megatron_logits(hf_config, dist_dir: Path, dtype: torch.dtype, inputs: dict) -> torch.Tensor:
    """Logits ``[b, s, vocab]`` of a TP=1/PP=1 model loaded from ``dist_dir`` (parallel state up)."""
    from r1vfree_mcore.conversion.dist_io import load_into_model
    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.parallel.state import ParallelConfig

    model = build_model(hf_config, ParallelConfig(), "local", params_dtype=dtype)
    load_into_model(model, dist_dir)
    model.eval()
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    with torch.no_grad():
        logits = model(**{k: inputs[k] for k in keys})
    return logits[..., : model.vocab_size].float()


def _verify_rank(rank, world, counters, hf_dir, dist_dir, dtype_name):
    from transformers import AutoProcessor

    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    initialize_parallel(ParallelConfig())
    hf_dir, dtype = Path(hf_dir), DTYPES[dtype_name]
    inputs = probe_inputs(AutoProcessor.from_pretrained(str(hf_dir)))
    ref = hf_logits(hf_dir, dtype, inputs)
    got = megatron_logits(load_hf_config(hf_dir), Path(dist_dir), dtype, inputs)
    return float((got - ref).abs().max()), float(ref.abs().max())


def verify_pair(hf_dir: str | Path, mcore_ckpt: str | Path, dtype: str) -> float:
    """max |logit diff| between an HF checkpoint and a Megatron checkpoint of the same weights.

    Prints ``max_abs_logit_diff=<x>``; raises ConversionError above the dtype's tolerance.
    """
    from r1vfree_mcore.conversion.metadata import DIST, resolve_checkpoint
    from r1vfree_mcore.conversion.workers import spawn_ranks

    dist_dir = resolve_checkpoint(mcore_ckpt) / DIST
    diff, scale = spawn_ranks(_verify_rank, 1, str(hf_dir), str(dist_dir), dtype)[0]
    print(f"max_abs_logit_diff={diff:.6g}", flush=True)
    tol = TOLERANCE[dtype] * max(1.0, scale)
    if not diff <= tol:  # also catches NaN
        raise ConversionError(f"verification failed: max_abs_logit_diff={diff:.6g} exceeds {tol:.3g} ({dtype})")
    return diff
