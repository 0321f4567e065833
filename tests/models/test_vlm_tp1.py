"""TP=1/PP=1 Qwen-VL policy model vs HF transformers: logits, export round trip, freezing.

All the megatron work runs in one spawned single-rank process (megatron's CPU workarounds stay
out of the pytest process); the tests below check its measurements.
"""

from __future__ import annotations

import pytest
import torch

from _vlm_harness import (
    build_inputs,
    build_text_inputs,
    hf_logits,
    hf_model,
    hf_tensors,
    make_checkpoint,
    max_diff,
    model_inputs,
    run_layout,
)
from r1vfree_mcore.testing.distributed import run_distributed

CASES = (("qwen2_vl", True, "left"), ("qwen2_5_vl", False, "right"))  # (family, tied, padding side)


def _tp1_checks(rank, world, ckpts, sides):
    from r1vfree_mcore.models import export_hf_state_dict, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel

    out = {}
    for ckpt, side in zip(ckpts, sides):
        inputs = build_inputs(ckpt, side)
        hf = hf_model(ckpt)
        ref = hf_logits(hf, inputs)
        mask = inputs["attention_mask"]
        model, logits, grads = run_layout(hf.config, ckpt, inputs, ParallelConfig())
        with torch.no_grad():
            eval_logits = model(**model_inputs(inputs))
        exported = export_hf_state_dict(model)
        r = {}
        text = build_text_inputs(ckpt)
        with torch.no_grad():
            t_logits = model(text["input_ids"], attention_mask=text["attention_mask"])[..., : ref.shape[-1]]
        r["text_only_logit_diff"] = max_diff(t_logits, hf_logits(hf, text), text["attention_mask"])
        # transformers-5 in-memory names (model.language_model.*, model.visual.*) through a getter.
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        memory = hf.state_dict()
        load_hf_state_dict(model, lambda name: memory[name], hf.config)
        r["memory_layout_reload_equal"] = all(torch.equal(p, before[n]) for n, p in model.named_parameters())
        disk = hf_tensors(ckpt)
        r |= {
            "train_logit_diff": max_diff(logits, ref, mask),
            "eval_logit_diff": max_diff(eval_logits[..., : ref.shape[-1]], ref, mask),
            "padded_vocab": eval_logits.shape[-1],
            "grads_finite_nonzero": all(torch.isfinite(g).all() for g in grads.values())
            and all(g.abs().sum() > 0 for n, g in grads.items() if "output_layer" not in n),
            "export_keys_equal": sorted(exported) == sorted(disk),
            "export_max_diff": max(float((exported[k] - disk[k]).abs().max()) for k in disk if k in exported),
        }
        destroy_parallel()
        # Frozen vision tower + merger: no grads, no optimizer state, same logits.
        frozen, f_logits, _ = run_layout(
            hf.config, ckpt, inputs, ParallelConfig(), freeze_vision=True, freeze_merger=True
        )
        vision_params = dict(frozen.vision.named_parameters())
        opt = torch.optim.AdamW([p for p in frozen.parameters() if p.requires_grad], lr=1e-3)
        before = {n: p.detach().clone() for n, p in vision_params.items()}
        opt.step()
        r["frozen_logit_diff"] = max_diff(f_logits, logits)
        r["frozen_have_grad"] = [n for n, p in vision_params.items() if p.grad is not None or p.requires_grad]
        r["frozen_in_opt_state"] = sum(p in opt.state for p in vision_params.values())
        r["frozen_changed"] = [n for n, p in vision_params.items() if not torch.equal(p, before[n])]
        r["decoder_has_state"] = len(opt.state) > 0
        destroy_parallel()
        # Full activation recompute in the decoder: same logits and grads.
        _, rc_logits, rc_grads = run_layout(
            hf.config, ckpt, inputs, ParallelConfig(),
            decoder_overrides=dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1),
        )
        r["recompute_logit_diff"] = max_diff(rc_logits, logits)
        r["recompute_grad_diff"] = max(float((g - grads[n]).abs().max()) for n, g in rc_grads.items())
        destroy_parallel()
        # Vision blocks frozen, merger trainable.
        part, _, _ = run_layout(hf.config, ckpt, inputs, ParallelConfig(), freeze_vision=True)
        r["partial_merger_grads"] = all(p.grad is not None for p in part.vision.merger.parameters())
        r["partial_block_grads"] = [n for n, p in part.vision.named_parameters()
                                    if not n.startswith("merger.") and p.grad is not None]
        destroy_parallel()
        # bf16 parameters everywhere (norms included), logits still close to the fp32 HF model.
        from r1vfree_mcore.models import build_model
        from r1vfree_mcore.parallel.state import initialize_parallel

        initialize_parallel(ParallelConfig())
        bf16 = build_model(hf.config, ParallelConfig(), params_dtype=torch.bfloat16)
        load_hf_state_dict(bf16, hf_tensors(ckpt))
        with torch.no_grad():
            b_logits = bf16(**model_inputs(inputs))[..., : ref.shape[-1]].float()
        r["bf16_dtypes"] = sorted({str(p.dtype) for p in bf16.parameters()})
        r["bf16_rel_diff"] = max_diff(b_logits, ref, mask) / float(ref.abs().max())
        destroy_parallel()
        out[str(ckpt)] = r
    return out


@pytest.fixture(scope="module")
def tp1_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    ckpts = [str(make_checkpoint(root, fam, tied)) for fam, tied, _ in CASES]
    (res,) = run_distributed(_tp1_checks, 1, ckpts, [side for *_, side in CASES], timeout=300)
    return [res[c] for c in ckpts]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{f}-{'tied' if t else 'untied'}-{s}pad" for f, t, s in CASES])
def test_tp1_logits_equal_hf(tp1_results, case):
    r = tp1_results[case]
    assert r["train_logit_diff"] <= 1e-4, r
    assert r["eval_logit_diff"] <= 1e-4, r
    assert r["text_only_logit_diff"] <= 1e-4, r
    assert r["padded_vocab"] % 128 == 0
    assert r["grads_finite_nonzero"]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_export_round_trips_hf_weights(tp1_results, case):
    r = tp1_results[case]
    assert r["export_keys_equal"], r
    assert r["export_max_diff"] == 0.0
    assert r["memory_layout_reload_equal"]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_frozen_vision_has_no_grads_or_optimizer_state(tp1_results, case):
    r = tp1_results[case]
    assert r["frozen_logit_diff"] == 0.0
    assert r["frozen_have_grad"] == []
    assert r["frozen_in_opt_state"] == 0
    assert r["frozen_changed"] == []
    assert r["decoder_has_state"]
    assert r["partial_merger_grads"]
    assert r["partial_block_grads"] == []


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_bf16_params(tp1_results, case):
    r = tp1_results[case]
    assert r["bf16_dtypes"] == ["torch.bfloat16"]
    assert r["bf16_rel_diff"] < 0.05, r["bf16_rel_diff"]


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(CASES)))
def test_decoder_recompute_changes_nothing(tp1_results, case):
    r = tp1_results[case]
    assert r["recompute_logit_diff"] <= 1e-6 and r["recompute_grad_diff"] <= 1e-6, r
