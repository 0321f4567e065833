"""Tiny HF checkpoints load offline with transformers and generate; both families."""

import json

import pytest
import torch
from PIL import Image

from r1vfree_mcore.testing.tiny import REASONING_TOKENS, TinySpec, write_tiny_checkpoint


@pytest.mark.parametrize("family,tied", [("qwen2_vl", True), ("qwen2_vl", False), ("qwen2_5_vl", False), ("qwen2_5_vl", True)])
def test_tiny_checkpoint_loads_and_generates(tmp_path, monkeypatch, family, tied):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = write_tiny_checkpoint(tmp_path / family, family=family, tied=tied)
    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == family
    assert bool(model.config.tie_word_embeddings) is tied
    emb = model.get_input_embeddings().weight
    assert (model.lm_head.weight.data_ptr() == emb.data_ptr()) is tied

    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    imgs = [Image.new("RGB", (84, 56), (200, 10, 10)), Image.new("RGB", (56, 112), (10, 10, 200))]
    inputs = proc(text=[text, text], images=imgs, return_tensors="pt", padding=True)
    # 84x56 -> 6x4 patches -> 6 merged tokens; 56x112 -> 4x8 -> 8 tokens.
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 4]]
    n_pad = (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert n_pad == [6, 8]
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 5)


def test_reasoning_tags_are_single_tokens(tmp_path):
    from transformers import AutoTokenizer

    path = write_tiny_checkpoint(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    for t in REASONING_TOKENS + ["<|im_start|>", "<|image_pad|>"]:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == t
    text = "<think>a b</think><answer>yes</answer>"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_spec_is_recorded_and_validated(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m", family="qwen2_vl", num_layers=2)
    spec = json.loads((path / "tiny_spec.json").read_text())
    assert spec["family"] == "qwen2_vl" and spec["num_layers"] == 2
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] == 2
    with pytest.raises(ValueError, match="family"):
        TinySpec(family="llama")
    with pytest.raises(ValueError, match="mrope_section"):
        TinySpec(mrope_section=[1, 1, 1])


def test_cli_writes_checkpoint(tmp_path, capsys):
    from r1vfree_mcore.testing import tiny

    tiny.main(["--family", "qwen2_vl", "--out", str(tmp_path / "c"), "--tied"])
    assert (tmp_path / "c" / "model.safetensors").exists()
    assert "wrote tiny qwen2_vl" in capsys.readouterr().out
