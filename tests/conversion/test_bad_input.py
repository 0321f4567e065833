"""Bad input: one clear error line, and no output directory (nor temporary debris) left behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1vfree_mcore.conversion import ConversionError, hf_to_mcore, mcore_to_hf
from r1vfree_mcore.conversion.cli import main as cli_main


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(ckpt: Path, edit) -> None:
    f = ckpt / "model.safetensors"
    tensors = load_file(f)
    edit(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def _expect_error(tmp_path, match: str, src, **kw):
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=match) as exc:
        hf_to_mcore(src, out, progress=False, **kw)
    assert "\n" not in str(exc.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out.")], "temporary output left behind"
    return str(exc.value)


def test_unknown_architecture(tiny, tmp_path):
    src = _copy(tiny("qwen2_vl", False), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["LlavaForConditionalGeneration"], model_type="llava")
    (src / "config.json").write_text(json.dumps(cfg))
    _expect_error(tmp_path, "unknown architecture.*LlavaForConditionalGeneration", src)


def test_missing_and_extra_tensors_are_listed(tiny, tmp_path):
    src = _copy(tiny("qwen2_vl", False), tmp_path / "src")

    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"], t["visual.blocks.0.attn.qkv.bias"]
        t["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)

    _rewrite(src, edit)
    msg = _expect_error(tmp_path, "missing 2 tensors", src)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "visual.blocks.0.attn.qkv.bias" in msg
    assert "unexpected 1 tensors: model.layers.9.mlp.up_proj.weight" in msg


def test_truncated_safetensors(tiny, tmp_path):
    src = _copy(tiny("qwen2_5_vl", True), tmp_path / "src")
    f = src / "model.safetensors"
    os.truncate(f, f.stat().st_size - 1000)
    _expect_error(tmp_path, "truncated safetensors file .*model.safetensors", src)


def test_kv_heads_not_divisible_by_tp(tmp_path):
    from conversion_cases import write_tiny

    src = write_tiny(tmp_path / "src", "qwen2_5_vl", False, num_kv_heads=2)
    _expect_error(tmp_path, "num_key_value_heads=2 is not divisible by parallel.tp=4", src, tp=4)


@pytest.mark.slow
def test_shape_mismatch_names_the_tensor(tiny, tmp_path):
    src = _copy(tiny("qwen2_5_vl", False), tmp_path / "src")

    def edit(t):
        t["model.layers.0.self_attn.o_proj.weight"] = t["model.layers.0.self_attn.o_proj.weight"][:, :64].clone()

    _rewrite(src, edit)
    _expect_error(tmp_path, "shape mismatch.*o_proj", src)


def test_existing_output_needs_force(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc = cli_main(["hf-to-mcore", "--hf-dir", str(tiny("qwen2_vl", False)), "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --force" in err[0]
    assert (out / "keep.txt").read_text() == "x"
    with pytest.raises(ConversionError, match="exists; pass --force"):
        mcore_to_hf(tmp_path, out, progress=False)


def test_mcore_to_hf_rejects_non_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="is not a Megatron checkpoint"):
        mcore_to_hf(tmp_path / "empty", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_mcore_to_hf_refuses_hf_files_of_another_shape(tiny, tmp_path):
    """HF files whose config disagrees with the checkpoint's shapes (checked against what
    transformers builds): one error line, no output."""
    src = tiny("qwen2_5_vl", False)
    hf_to_mcore(src, tmp_path / "mc", progress=False)
    other = _copy(src, tmp_path / "other")
    cfg = json.loads((other / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] += 8
    (other / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"does not match its HF config: shape mismatch: .*mlp\.gate_proj") as exc:
        mcore_to_hf(tmp_path / "mc", out, hf_dir=other, progress=False)
    assert "\n" not in str(exc.value) and "transformers expects" in str(exc.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
