"""GPU-only checks of the TE path: THD packing, decoder-only FP8, FP8 weight-cache refresh.

Skipped without CUDA + TransformerEngine (never run on the CPU machines this project is built
on): run them with ``pytest -m gpu tests/gpu`` on the first GPU at hand, after
``bash bench/gpu_check.sh``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from _vlm_harness import build_inputs, hf_tensors, make_checkpoint, model_inputs  # noqa: E402
from r1vfree_mcore.testing.distributed import run_distributed  # noqa: E402


def _build(ckpt, dtype, overrides=None):
    from transformers import AutoConfig

    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig

    cfg = AutoConfig.from_pretrained(ckpt)
    model = build_model(cfg, ParallelConfig(), "transformer_engine", params_dtype=dtype, decoder_overrides=overrides)
    assert model.backend.name == "transformer_engine"
    load_hf_state_dict(model, hf_tensors(Path(ckpt)))
    return cfg, model


def _cuda(d):
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in d.items()}


def _te_worker(rank, world, ckpt):
    import transformer_engine.pytorch as te_pt

    from r1vfree_mcore.models.common.packing import pack_sequences, unpack
    from r1vfree_mcore.parallel.schedule import run_microbatches
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.train.config import ModelConfig
    from r1vfree_mcore.train.precision import plan_precision

    initialize_parallel(ParallelConfig())
    inputs = _cuda(model_inputs(build_inputs(Path(ckpt), "left")))
    real = inputs["attention_mask"].bool()
    out = {}
    # 1. THD packing with TE attention == padded batch (bf16).
    cfg, model = _build(ckpt, torch.bfloat16)
    pk = pack_sequences(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"], cfg, pad_to_multiple=16)
    with torch.no_grad():
        padded = model(**inputs).float()
        packed = unpack(model(pixel_values=inputs["pixel_values"], **pk.model_kwargs()).float(), pk.index)
    out["thd_rel_err"] = float((packed - padded)[real].norm() / padded[real].norm())

    # 2. FP8 only inside the decoder: record TE's global FP8 state in vision and decoder layers.
    mod = getattr(te_pt, "fp8", None) or getattr(te_pt, "quantization")  # renamed in newer TE
    state = mod.FP8GlobalStateManager
    for recipe in ("delayed", "current"):
        plan = plan_precision(ModelConfig(hf_dir="-", spec="transformer_engine", precision="fp8",
                                          fp8_recipe=recipe, dtype="bf16"), te_available=True)
        _, fp8 = _build(ckpt, torch.bfloat16, plan.decoder_overrides())
        seen = {}
        fp8.vision.blocks[0].register_forward_hook(lambda *a: seen.__setitem__("vision", state.is_fp8_enabled()))
        layer = fp8.language_model.decoder.layers[0]
        layer.register_forward_hook(lambda *a: seen.__setitem__("decoder", state.is_fp8_enabled()))
        with torch.no_grad():
            logits = unpack(fp8(pixel_values=inputs["pixel_values"], **pk.model_kwargs()).float(), pk.index)
        out[f"fp8_{recipe}_seen"] = dict(seen)
        out[f"fp8_{recipe}_rel_err"] = float((logits - padded)[real].norm() / padded[real].norm())

        # 3. Weight cache refresh: a weight change between schedule calls must change the output.
        mb = {"pixel_values": inputs["pixel_values"], **pk.model_kwargs()}

        def fwd(m, b):
            return m(**b)

        def collect(b, logits):
            return logits.new_zeros(()), {"logits": logits.detach().float().clone()}

        first = run_microbatches(fp8, [mb, mb], fwd, collect, forward_only=True)
        with torch.no_grad():
            layer.mlp.linear_fc1.weight.mul_(2.0)
        second = run_microbatches(fp8, [mb, mb], fwd, collect, forward_only=True)
        out[f"fp8_{recipe}_cache_refreshed"] = not torch.equal(first[0]["logits"], second[0]["logits"])
        out[f"fp8_{recipe}_microbatches_equal"] = torch.equal(second[0]["logits"], second[1]["logits"])
        del fp8
    return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_te_thd_packing_and_decoder_only_fp8(tmp_path):
    from r1vfree_mcore.models.backends.transformer_engine import te_available

    if not te_available():
        pytest.skip("transformer_engine is not importable")
    ckpt = make_checkpoint(tmp_path, "qwen2_5_vl", tied=False)
    (r,) = run_distributed(_te_worker, 1, str(ckpt), timeout=600)
    assert r["thd_rel_err"] <= 2e-2, r
    for recipe in ("delayed", "current"):
        assert r[f"fp8_{recipe}_seen"] == {"vision": False, "decoder": True}, r
        assert r[f"fp8_{recipe}_rel_err"] <= 0.15, r
        assert r[f"fp8_{recipe}_cache_refreshed"], r
    # Current scaling quantises each micro-batch alike (delayed scaling updates scales in between).
    assert r["fp8_current_microbatches_equal"], r
