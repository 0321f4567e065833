"""Spec selection without TE: 'transformer_engine' falls back to the local spec with torch SDPA
attention, whose logits and grads equal the local DotProductAttention spec (fp32, CPU)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from _vlm_harness import build_inputs, hf_tensors, make_checkpoint, model_inputs  # noqa: E402
from r1vfree_mcore.testing.distributed import run_distributed  # noqa: E402


def _compare(rank, world, ckpts):
    from transformers import AutoConfig

    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.models.backends.sdpa import SDPAttention
    from r1vfree_mcore.models.common.packing import pack_sequences, unpack
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    out = {}
    for ckpt, side in zip(ckpts, ("left", "right")):
        cfg = AutoConfig.from_pretrained(ckpt)
        inputs = model_inputs(build_inputs(Path(ckpt), side))
        mask = inputs["attention_mask"].bool()
        initialize_parallel(ParallelConfig())
        runs = {}
        for spec in ("local", "transformer_engine"):
            model = build_model(cfg, ParallelConfig(), spec)
            load_hf_state_dict(model, hf_tensors(Path(ckpt)))
            logits = model(**inputs)
            logits[mask].float().logsumexp(-1).sum().backward()
            pk = pack_sequences(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"], cfg)
            with torch.no_grad():
                packed = unpack(model(pixel_values=inputs["pixel_values"], **pk.model_kwargs()), pk.index)
            runs[spec] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()}, packed,
                          type(model.language_model.decoder.layers[0].self_attention.core_attention))
        (l_ref, g_ref, _, a_ref), (l_sdpa, g_sdpa, p_sdpa, a_sdpa) = runs["local"], runs["transformer_engine"]
        out[side] = {
            "attention_classes": (a_ref.__name__, a_sdpa.__name__, issubclass(a_sdpa, SDPAttention)),
            "logit_diff": float((l_ref - l_sdpa)[mask].abs().max()),
            "finite_everywhere": bool(torch.isfinite(l_sdpa).all()),  # fully masked padding rows too
            "packed_diff": float((p_sdpa - l_ref)[mask].abs().max()),
            "grad_rel_diff": max(float((g_sdpa[n] - g).abs().max() / (g.abs().max() + 1e-12)) for n, g in g_ref.items()),
        }
        destroy_parallel()
    return out


@pytest.mark.slow
def test_te_fallback_uses_sdpa_and_equals_local(tmp_path):
    from r1vfree_mcore.models.backends.transformer_engine import te_available

    if te_available():
        pytest.skip("transformer_engine is importable: no fallback here")
    ckpts = [str(make_checkpoint(tmp_path, "qwen2_vl", tied=True)), str(make_checkpoint(tmp_path, "qwen2_5_vl", tied=False))]
    (res,) = run_distributed(_compare, 1, ckpts, timeout=300)
    for side, r in res.items():
        assert r["attention_classes"] == ("DotProductAttention", "SDPAttention", True), r
        assert r["logit_diff"] <= 1e-5 and r["packed_diff"] <= 1e-5 and r["finite_everywhere"], (side, r)
        assert r["grad_rel_diff"] <= 1e-4, (side, r)


def test_fallback_is_logged_and_local_stays_dot_product(caplog):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from r1vfree_mcore.models.backends import get_backend
    from r1vfree_mcore.models.backends.sdpa import SDPAttention
    from r1vfree_mcore.models.backends.transformer_engine import te_available

    assert get_backend("local").core_attention is DotProductAttention
    if te_available():
        assert get_backend("transformer_engine").name == "transformer_engine"
        return
    with caplog.at_level(logging.WARNING):
        backend = get_backend("transformer_engine")
    assert backend.name == "local" and backend.core_attention is SDPAttention
    assert any("torch SDPA attention" in r.getMessage() for r in caplog.records)
