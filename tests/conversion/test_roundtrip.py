"""HF -> Megatron (TP x PP ranks) -> HF is bit-exact for both families, tied and untied,
at TP in {1, 2, 4} and PP in {1, 2}; the CLI's --verify passes in both directions."""

from __future__ import annotations

import json

import pytest

from conversion_cases import TP2PP2_CASES, assert_bit_exact, hf_tensors

from r1vfree_mcore.conversion import hf_to_mcore, mcore_to_hf
from r1vfree_mcore.conversion.cli import main as cli_main


def _check_mcore_dir(mc, tp, pp, tied):
    info = json.loads((mc / "conversion.json").read_text())
    assert (info["tp"], info["pp"], info["tied_embeddings"], info["vocab_size"]) == (tp, pp, tied, 300)
    assert info["padded_vocab_size"] == (384 if tp == 1 else 512)  # 128 x TP multiple
    assert json.loads((mc / "train_state.json").read_text())["step"] == 0
    assert (mc / "hf" / "config.json").is_file() and (mc / "dist" / "metadata.json").is_file()


def _check_hf_dir(src, back, tied):
    assert_bit_exact(src, back)
    assert ("lm_head.weight" in hf_tensors(back)) is not tied  # tied: no duplicate lm_head
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "processor_config.json"):
        assert (back / f).is_file(), f


@pytest.mark.slow
@pytest.mark.parametrize("family,tied", TP2PP2_CASES, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in TP2PP2_CASES])
def test_roundtrip_tp2_pp2(tp2pp2, tmp_path, family, tied):
    src, mc, summary = tp2pp2[(family, tied)]
    assert len(summary["peak_rss_bytes_per_rank"]) == 4
    _check_mcore_dir(mc, 2, 2, tied)
    back = tmp_path / "hf"
    mcore_to_hf(mc, back, max_shard_size="200KB", progress=False)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded at 200KB
    _check_hf_dir(src, back, tied)


def _as_transformers5_layout(src, dst):
    """A copy of ``src`` whose safetensors use the in-memory 5.x names (model.language_model.*,
    model.visual.*), as some tools save them."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    renamed = {}
    for k, v in hf_tensors(src).items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k[len("model."):]
        renamed[k] = v
    save_file(renamed, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.slow
def test_roundtrip_tp4_pp1_from_transformers5_key_layout(tiny, tmp_path):
    src = tiny("qwen2_vl", False)
    v5 = _as_transformers5_layout(src, tmp_path / "v5")
    assert any(k.startswith("model.language_model.") for k in hf_tensors(v5))
    mc, back = tmp_path / "mcore", tmp_path / "hf"
    hf_to_mcore(v5, mc, tp=4, pp=1, progress=False)
    _check_mcore_dir(mc, 4, 1, False)
    mcore_to_hf(mc, back, progress=False)
    _check_hf_dir(src, back, False)


@pytest.mark.slow
def test_cli_roundtrip_tp1_pp1_with_verify(tiny, tmp_path, capsys):
    src = tiny("qwen2_5_vl", True)
    mc, back = tmp_path / "mcore", tmp_path / "hf"
    assert cli_main(["hf-to-mcore", "--hf-dir", str(src), "--out", str(mc), "--tp", "1", "--pp", "1",
                     "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("max_abs_logit_diff=")[1].split()[0]) < 1e-4
    _check_mcore_dir(mc, 1, 1, True)
    assert cli_main(["mcore-to-hf", "--mcore-dir", str(mc), "--out", str(back), "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("max_abs_logit_diff=")[1].split()[0]) < 1e-4
    assert (back / "model.safetensors").is_file()  # below 2GB: one file, no index
    _check_hf_dir(src, back, True)


def _as_bf16(src, dst):
    """A copy of ``src`` stored in bf16 (weights and config dtype)."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("torch_dtype", None)
    (dst / "config.json").write_text(json.dumps(dict(cfg, dtype="bfloat16")))
    save_file({k: v.bfloat16() for k, v in hf_tensors(src).items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_bf16_roundtrip_in_process_is_bit_exact_and_leaves_no_group(tiny, tmp_path):
    import torch.distributed as dist
    from megatron.core import parallel_state

    src = _as_bf16(tiny("qwen2_vl", True), tmp_path / "bf16")
    mc, back = tmp_path / "mcore", tmp_path / "hf"
    hf_to_mcore(src, mc, progress=False)  # TP=1/PP=1: in this process
    assert not dist.is_initialized() and not parallel_state.model_parallel_is_initialized()
    assert json.loads((mc / "conversion.json").read_text())["dtype"] == "bf16"
    mcore_to_hf(mc, back, progress=False)
    _check_hf_dir(src, back, True)


@pytest.mark.slow
def test_fp32_to_bf16_at_tp2_casts_each_value_once(tiny, tmp_path):
    import torch

    src = tiny("qwen2_5_vl", False)
    mc, back = tmp_path / "mcore", tmp_path / "hf"
    hf_to_mcore(src, mc, tp=2, dtype="bf16", progress=False)  # padded vocab split over 2 ranks
    mcore_to_hf(mc, back, progress=False)
    a, b = hf_tensors(src), hf_tensors(back)
    assert set(a) == set(b)
    bad = [k for k in a if b[k].dtype != torch.bfloat16 or not torch.equal(b[k], a[k].to(torch.bfloat16))]
    assert not bad, bad[:5]
