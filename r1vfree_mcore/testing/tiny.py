"""Write complete tiny Qwen2-VL / Qwen2.5-VL HF checkpoints offline (random weights).

The directory holds config, generation config, safetensors weights, a locally trained
byte-level BPE tokenizer with the Qwen special tokens plus ``<think> </think> <answer> </answer>``,
the Qwen chat template, and image/video processor configs: everything
``AutoProcessor`` / ``AutoModelForImageTextToText`` need under ``HF_HUB_OFFLINE=1``.

CLI: ``python -m r1vfree_mcore.testing.tiny --family qwen2_5_vl --out DIR [--tied]``
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# Qwen's special tokens, in Qwen's order, then the R1V-Free reasoning tags.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
REASONING_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat template (system prompt default, images/videos as vision pads).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "What is shown in the image? Describe the colors, shapes and objects. "
    "The picture shows a red circle, a blue square and a green triangle on a white background. "
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. "
    "I think the answer is yes. No, there are two objects. The count is 3. I don't know. "
    "system user assistant You are a helpful assistant. 0123456789 .,;:!?'\"()[]{}<>-_/+*=\n"
)


@dataclass
class TinySpec:
    """Sizes of a tiny checkpoint. Head dims are 32 so vLLM's CPU backend can load it too."""

    family: str = "qwen2_5_vl"
    tied: bool = False
    vocab_size: int = 512  # BPE vocab incl. special tokens; the model may round it up
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])  # sums to head_dim / 2
    vision_depth: int = 4
    vision_hidden: int = 64
    vision_heads: int = 2
    vision_intermediate: int = 128  # qwen2_5_vl; qwen2_vl uses mlp_ratio
    window_size: int = 56  # qwen2_5_vl: 2x2 merged tokens per window with patch 14
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [1, 3])
    patch_size: int = 14
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    seed: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"TinySpec.family must be one of {FAMILIES}, got {self.family!r}")
        if 2 * sum(self.mrope_section) != self.hidden_size // self.num_heads:
            raise ValueError("TinySpec.mrope_section must sum to head_dim / 2")


def build_tokenizer(vocab_size: int = 512):
    """Train a byte-level BPE on a small fixed corpus; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = QWEN_SPECIAL_TOKENS + REASONING_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=specials[1:],
        model_max_length=32768,
    )
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


def _hf_config(spec: TinySpec, tok):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = spec.hidden_size // spec.num_heads
    text = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": list(spec.mrope_section),
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=spec.tied,
    )
    assert head_dim >= 32
    if spec.family == "qwen2_vl":
        vision = dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_hidden,
            hidden_size=spec.hidden_size,
            mlp_ratio=spec.vision_intermediate // spec.vision_hidden,
            num_heads=spec.vision_heads,
            patch_size=spec.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        cls = Qwen2VLConfig
    else:
        vision = dict(
            depth=spec.vision_depth,
            hidden_size=spec.vision_hidden,
            intermediate_size=spec.vision_intermediate,
            num_heads=spec.vision_heads,
            out_hidden_size=spec.hidden_size,
            patch_size=spec.patch_size,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=spec.window_size,
            fullatt_block_indexes=list(spec.fullatt_block_indexes),
            tokens_per_second=2,
        )
        cls = Qwen2_5_VLConfig
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec.tied,
    )


def build_processor(tok, spec: TinySpec):
    """Qwen-VL processor (tokenizer + image + video processor) with tiny pixel limits."""
    from transformers import AutoProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    image = Qwen2VLImageProcessor(size=size, patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2)
    video = Qwen2VLVideoProcessor(size=size, patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2)
    if spec.family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as cls
    else:
        from transformers import Qwen2_5_VLProcessor as cls
    del AutoProcessor
    return cls(image_processor=image, tokenizer=tok, video_processor=video, chat_template=QWEN_VL_CHAT_TEMPLATE)


def write_tiny_checkpoint(out: str | Path, spec: TinySpec | None = None, **overrides) -> Path:
    """Write a loadable tiny HF checkpoint of ``spec.family`` to ``out``; returns the path."""
    from transformers import AutoModelForImageTextToText, GenerationConfig

    spec = spec or TinySpec(**overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(spec.vocab_size)
    config = _hf_config(spec, tok)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # Random init with std 0.02 gives near-uniform logits; a larger std makes tests sharper.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.05)
            elif "bias" in name:
                p.normal_(0.0, 0.02)
            else:  # norm weights
                p.uniform_(0.8, 1.2)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=True,
        temperature=1.0,
    )
    model.save_pretrained(out)
    build_processor(tok, spec).save_pretrained(out)
    (out / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl")
    p.add_argument("--out", required=True)
    p.add_argument("--tied", action="store_true", help="tie input and output embeddings")
    p.add_argument("--layers", type=int, default=TinySpec.num_layers)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = write_tiny_checkpoint(a.out, TinySpec(family=a.family, tied=a.tied, num_layers=a.layers, seed=a.seed))
    print(f"wrote tiny {a.family} checkpoint to {path}")


if __name__ == "__main__":
    main()
