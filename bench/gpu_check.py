"""One GPU check of the Megatron policy path: correctness, speed (tokens/s, MFU), memory.

On one H100/H200 (``bash bench/gpu_check.sh``, < 8 min) with a random ~0.7B Qwen2.5-VL-shaped
model (text: hidden 896, 24 layers, 14 heads / 2 KV heads, ffn 4864, vocab 151,936, tied;
vision: depth 8, hidden 1280):

1. correctness: Megatron vs HF logits (relative Frobenius error over real tokens) in fp32 (local
   spec) and in bf16 for the local spec and the fastest one present (TransformerEngine, else
   local_sdpa), next to HF's own bf16-vs-fp32 error (the noise floor); packed (THD) vs padded
   logits; FP8 vs bf16 mean log-prob (TE only).
2. speed: GRPO training step (forward + backward of :func:`r1vfree_mcore.grpo.loss.grpo_loss` on
   :func:`vocab_parallel_logprobs`, TP=1) in tokens/s and MFU, bf16 (also at twice the batch on
   a GPU) and FP8 (TE only); rollout tokens/s of
   :class:`r1vfree_mcore.rollout.generator.MegatronGenerator`. ``--profile`` adds a
   torch.profiler table of one bf16 step and its wall vs GPU-busy time.
3. memory: peak allocated per phase (``torch.cuda.max_memory_allocated``, reset per phase).

MFU = model FLOPs / time / peak dense bf16 FLOP/s of the card (H100/H200 SXM: 989 TFLOP/s).
Model FLOPs per step = 6 x N x tokens (N: matmul parameters the tokens pass through: decoder
layers + output layer for text tokens, vision blocks + merger for patches) + causal attention
6 x layers x B x S^2 x (heads x head_dim) (fwd + bwd, half the S^2 for causality) + vision
attention 12 x depth x sum(segment^2) x hidden. The table ends with one JSON line.

``--cpu-smoke`` runs the same code paths on the CPU with a tiny model in well under a minute (no
TE, no timing claims; MFU null) so the script cannot rot (tests/gpu/test_gpu_check_smoke.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace

import torch

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


@dataclass(frozen=True)
class Sizes:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    mrope: tuple[int, int, int]
    v_depth: int
    v_hidden: int
    v_heads: int
    v_ffn: int
    image_px: int  # square images, multiple of 28
    batch: int  # sequences per training step
    seq: int  # tokens per training sequence
    prompt_text: int  # text tokens of a prompt besides the image
    new_tokens: int  # rollout tokens per sequence
    steps: int  # timed training steps


SIZES = {
    "gpu": Sizes(151936, 896, 24, 14, 2, 4864, (8, 12, 12), 8, 1280, 16, 3420, 224, 8, 1024, 64, 32, 5),
    "smoke": Sizes(512, 128, 2, 4, 2, 256, (4, 6, 6), 2, 64, 2, 128, 56, 2, 64, 8, 3, 1),
}


def hf_config(z: Sizes):
    """A Qwen2.5-VL config of these sizes; special ids sit at the top of the vocab."""
    from transformers import Qwen2_5_VLConfig

    v = z.vocab
    text = dict(vocab_size=v, hidden_size=z.hidden, intermediate_size=z.ffn, num_hidden_layers=z.layers,
                num_attention_heads=z.heads, num_key_value_heads=z.kv_heads, max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(z.mrope)},
                bos_token_id=v - 6, eos_token_id=v - 5, pad_token_id=v - 6)
    vision = dict(depth=z.v_depth, hidden_size=z.v_hidden, intermediate_size=z.v_ffn, num_heads=z.v_heads,
                  out_hidden_size=z.hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  window_size=112, fullatt_block_indexes=sorted({z.v_depth - 1, *range(3, z.v_depth, 4)}),
                  tokens_per_second=2)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=v - 1, video_token_id=v - 2,
                            vision_start_token_id=v - 3, vision_end_token_id=v - 4, tie_word_embeddings=True)


def make_batch(cfg, z: Sizes, lengths: list[int], device, seed: int = 0, padding_side: str = "left") -> dict:
    """Sequences ``text, <vision_start>, image pads, <vision_end>, text`` of ``lengths``, padded."""
    g = torch.Generator().manual_seed(seed)
    grid = z.image_px // 14
    n_img = grid * grid // 4
    rows, s = [], max(lengths)
    for n in lengths:
        pre = torch.randint(0, cfg.text_config.vocab_size - 16, (4,), generator=g)
        post = torch.randint(0, cfg.text_config.vocab_size - 16, (n - 6 - n_img,), generator=g)
        ids = torch.cat([pre, torch.tensor([cfg.vision_start_token_id] + [cfg.image_token_id] * n_img
                                           + [cfg.vision_end_token_id]), post])
        rows.append(ids)
    pad = cfg.text_config.pad_token_id
    input_ids = torch.full((len(rows), s), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), s, dtype=torch.long)
    for i, ids in enumerate(rows):
        sl = slice(s - len(ids), s) if padding_side == "left" else slice(0, len(ids))
        input_ids[i, sl], mask[i, sl] = ids, 1
    thw = torch.tensor([[1, grid, grid]] * len(rows))
    pv = torch.randn(int(thw.prod(-1).sum()), 3 * 2 * 14 * 14, generator=g)
    return dict(input_ids=input_ids.to(device), attention_mask=mask.to(device), pixel_values=pv.to(device),
                image_grid_thw=thw.to(device))


def hf_kwargs(hf, batch: dict, image_token_id: int, dtype) -> dict:
    """``batch`` for the HF model: pixel values in its dtype and, where its forward takes them,
    ``mm_token_type_ids`` (1 = image token). transformers 5.x builds the 3-D mrope positions
    only from those (a processor returns them); without, it silently falls back to 1-D text
    positions, which is a different model (0.12 relative logit error on the first GPU run)."""
    import inspect

    out = {**batch, "pixel_values": batch["pixel_values"].to(dtype)}
    if "mm_token_type_ids" in inspect.signature(hf.model.forward).parameters:
        out["mm_token_type_ids"] = (batch["input_ids"] == image_token_id).int()
    return out


def spec_key(spec: str) -> str:
    """Short name of a spec in the JSON keys (``te`` for transformer_engine)."""
    return {"transformer_engine": "te"}.get(spec, spec)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib():
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def build(cfg, hf_state, spec: str, dtype, overrides=None):
    """A TP=1 Megatron policy with the HF weights (megatron state must be initialised)."""
    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig

    model = build_model(cfg, ParallelConfig(), spec, params_dtype=dtype, decoder_overrides=overrides)
    load_hf_state_dict(model, lambda name: hf_state[name], cfg)
    return model


def grpo_loss_of(model, batch, prompt_len: int, vocab: int, plan):
    """(GRPO loss, mean completion log-prob) of the tokens after ``prompt_len``.

    beta 0 and old = current log-probs (the first update of a step): the loss value is then
    -mean(A) whatever the model, so precisions are compared on the mean log-prob instead.
    """
    from r1vfree_mcore.grpo.logprobs import vocab_parallel_logprobs
    from r1vfree_mcore.grpo.loss import grpo_loss

    with plan.forward_context():
        logits = model(**batch)
    ids = batch["input_ids"]
    lg = logits[:, prompt_len - 1 : -1]
    lp, _ = vocab_parallel_logprobs(lg, ids[:, prompt_len:], real_vocab_size=vocab)
    adv = torch.linspace(-1, 1, ids.shape[0], device=lp.device)
    mask = torch.ones_like(lp)
    loss, _ = grpo_loss(lp, lp.detach(), None, adv, mask, beta=0.0)
    return loss, lp.mean()


def model_flops(cfg, z: Sizes, tokens_per_seq: int, batch: int) -> float:
    """Model FLOPs of one forward+backward step (see module doc)."""
    tc, vc = cfg.text_config, cfg.vision_config
    hd = tc.hidden_size // tc.num_attention_heads
    kv = tc.num_key_value_heads * hd
    per_layer = tc.hidden_size * (tc.hidden_size + 2 * kv) + tc.hidden_size**2 + 3 * tc.hidden_size * tc.intermediate_size
    n_text = tc.num_hidden_layers * per_layer + tc.vocab_size * tc.hidden_size
    v_layer = 4 * vc.hidden_size**2 + 3 * vc.hidden_size * vc.intermediate_size
    merged = vc.hidden_size * 4
    n_vis = vc.depth * v_layer + (merged * merged + merged * tc.hidden_size) / 4  # merger runs per merged token
    patches = batch * (z.image_px // 14) ** 2
    tokens = batch * tokens_per_seq
    attn = 6 * tc.num_hidden_layers * batch * tokens_per_seq**2 * tc.num_attention_heads * hd
    v_attn = 12 * vc.depth * batch * (z.image_px // 14) ** 4 * vc.hidden_size  # full attention bound
    return 6 * n_text * tokens + 6 * n_vis * patches + attn + v_attn


def time_train(model, batch, prompt_len, vocab, plan, steps: int) -> float:
    """Seconds per GRPO forward+backward step (one warm-up step first)."""
    for i in range(steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        grpo_loss_of(model, batch, prompt_len, vocab, plan)[0].backward()
    sync()
    return (time.perf_counter() - t0) / steps


def profile_step(model, batch, prompt_len, vocab, plan, rows: int = 25) -> dict:
    """One GRPO step under torch.profiler: the top kernels / ops by device time, printed, and
    the step's wall time next to the summed device time (their ratio is how busy the GPU was)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    sync()
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        grpo_loss_of(model, batch, prompt_len, vocab, plan)[0].backward()
        sync()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=rows), flush=True)
    busy = sum(getattr(e, key, 0) for e in events if e.device_type.name in ("CUDA", "PrivateUse1")) / 1e6
    return {"profile_wall_s": round(wall, 4), "profile_device_busy_s": round(busy, 4)}


def rollout_tokens_per_s(model, cfg, z: Sizes, device) -> tuple[float, int, bool]:
    """Sampled tokens/s of MegatronGenerator on ``batch`` prompts of one image each."""
    from r1vfree_mcore.rollout.generator import MegatronGenerator, SamplingParams
    from r1vfree_mcore.rollout.prompts import PromptBatch

    n_img = (z.image_px // 14) ** 2 // 4
    b = make_batch(cfg, z, [n_img + 6 + z.prompt_text] * z.batch, device, seed=3)
    prompts = PromptBatch(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          pixel_values=b["pixel_values"], image_grid_thw=b["image_grid_thw"],
                          prompt_index=list(range(z.batch)), group=torch.zeros(z.batch, dtype=torch.long),
                          problems=[""] * z.batch, images_png=[b""] * z.batch)
    params = SamplingParams(max_new_tokens=z.new_tokens, eos_token_ids=(-1,), pad_token_id=cfg.text_config.pad_token_id)
    gen = MegatronGenerator(model, cfg.text_config.vocab_size)
    # Warm-up (allocator, cuDNN plans, first-call setup) on the same prompts, 2 tokens: untimed.
    gen.generate(prompts, replace(params, max_new_tokens=2), seed=0)
    sync()
    t0 = time.perf_counter()
    out = gen.generate(prompts, params, seed=0)
    sync()
    n = int(out.completion_mask.sum())
    return n / (time.perf_counter() - t0), n, gen.use_kv_cache


def init(smoke: bool):
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.testing.distributed import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    initialize_parallel(ParallelConfig())


class Report:
    """Table rows, the JSON fields, and the phases that failed (each failure is printed)."""

    def __init__(self, **fields):
        self.rows, self.res, self.errors = [], dict(fields), {}

    def row(self, section, what, value, mem=None):
        self.rows.append((section, what, value, mem))

    @contextlib.contextmanager
    def guard(self, section: str, phase: str):
        """Run one phase; a failure becomes a FAILED row and ``errors[phase]``, the rest still runs."""
        try:
            yield
        except Exception as exc:
            traceback.print_exc()
            self.errors[phase] = f"{type(exc).__name__}: {exc}"[:400]
            self.row(section, phase, f"FAILED {type(exc).__name__}", peak_gib())
        finally:
            gc.collect()


def correctness(rep: Report, cfg, z: Sizes, device, specs, state, ref, ref32, cb) -> None:
    """Megatron vs HF, packed vs padded, TE vs local (bf16), and rollout speed per spec."""
    from r1vfree_mcore.models.common.packing import pack_sequences, unpack

    vocab, real, outs = cfg.text_config.vocab_size, cb["attention_mask"].bool(), {}
    for spec in specs:
        key = spec_key(spec)
        model = None  # frees the previous spec's model before building
        with rep.guard("correctness", f"{spec}: build + logits"):
            reset_peak()
            model = build(cfg, state, spec, torch.bfloat16)
            with torch.no_grad():
                out = model(**cb)[..., :vocab].float()
                pk = pack_sequences(cb["input_ids"], cb["attention_mask"], cb["image_grid_thw"], cfg,
                                    pad_to_multiple=16)
                packed = unpack(model(pixel_values=cb["pixel_values"], **pk.model_kwargs())[..., :vocab].float(),
                                pk.index)
            outs[key] = out[real]
            err, perr = rel_err(out[real], ref[real]), rel_err(packed[real], out[real])
            rep.res[f"logit_rel_err_bf16_{key}"], rep.res[f"packed_vs_padded_rel_err_{key}"] = round(err, 5), round(perr, 5)
            rep.row("correctness", f"{spec}: Megatron vs HF logits, bf16 (rel err)", f"{err:.2e}", peak_gib())
            rep.res[f"logit_rel_err_bf16_vs_fp32_{key}"] = e32 = round(rel_err(out[real], ref32[real]), 5)
            rep.row("correctness", f"{spec}: Megatron bf16 vs HF fp32 logits (vs noise floor)", f"{e32:.2e}")
            rep.row("correctness", f"{spec}: packed THD vs padded logits (rel err)", f"{perr:.2e}")
            del out, packed
        if model is not None:
            with rep.guard("speed", f"rollout {key} bf16"):
                reset_peak()
                rtps, n, cached = rollout_tokens_per_s(model, cfg, z, device)
                rep.res[f"rollout_tokens_per_s_{key}"] = round(rtps, 1)
                rep.row("speed", f"rollout {key} bf16 ({'KV cache' if cached else 'recompute'}), {n} tokens",
                        f"{rtps:,.1f} tok/s", peak_gib())
            del model
    for key in set(outs) - {"local"}:
        rep.res[f"{key}_vs_local_rel_err"] = e = round(rel_err(outs[key], outs["local"]), 5)
        rep.row("correctness", f"{key} spec vs local spec logits, bf16 (rel err)", f"{e:.2e}")


def speed(rep: Report, cfg, z: Sizes, device, spec: str, te: bool, peak, state, profile: bool = False) -> None:
    """GRPO forward+backward tokens/s and MFU: bf16 and (TE) both FP8 recipes."""
    from r1vfree_mcore.train.config import ModelConfig
    from r1vfree_mcore.train.precision import plan_precision

    vocab = cfg.text_config.vocab_size
    prompt_len = (z.image_px // 14) ** 2 // 4 + 6 + z.prompt_text
    rep.res["model_flops_per_step"] = model_flops(cfg, z, z.seq, z.batch)
    bf16 = ModelConfig(hf_dir="-", spec=spec, precision="bf16", dtype="bf16")
    # (label, config, sequences per step); bf16-2x shows how much of the step is per-op CPU
    # overhead (it does not grow with the batch) rather than GPU work.
    variants = [("bf16", bf16, z.batch)] + ([("bf16-2x", bf16, 2 * z.batch)] if peak else [])
    if te:
        variants += [(f"fp8-{r}", ModelConfig(hf_dir="-", spec=spec, precision="fp8", fp8_recipe=r, dtype="bf16"),
                      z.batch) for r in ("delayed", "current")]
    logp = {}
    for label, mcfg, batch in variants:
        tb = make_batch(cfg, z, [z.seq] * batch, device, seed=2)
        flops = model_flops(cfg, z, z.seq, batch)
        model = None  # frees the previous variant's model (also after a failure)
        with rep.guard("speed", f"GRPO fwd+bwd {label}"):
            plan = plan_precision(mcfg, te_available=te)
            reset_peak()
            model = build(cfg, state, plan.spec, plan.params_dtype, plan.decoder_overrides())
            model.train()
            with torch.no_grad():
                logp[label] = float(grpo_loss_of(model, tb, prompt_len, vocab, plan)[1])
            sec = time_train(model, tb, prompt_len, vocab, plan, z.steps)
            if profile and label == "bf16":
                rep.res.update(prof := profile_step(model, tb, prompt_len, vocab, plan))
                rep.row("speed", "profiled bf16 step: wall / GPU kernels busy", f"{prof['profile_wall_s'] * 1e3:.1f} / "
                        f"{prof['profile_device_busy_s'] * 1e3:.1f} ms")
            del model
            tps = batch * z.seq / sec
            mfu = flops / sec / peak if peak else None
            rep.res[f"tokens_per_s_{label}"] = round(tps, 1)
            rep.res[f"mfu_{label}"] = None if mfu is None else round(mfu, 4)
            rep.row("speed", f"GRPO fwd+bwd {label} ({plan.spec}), {batch}x{z.seq} tok",
                    f"{tps:,.0f} tok/s, MFU {'n/a' if mfu is None else f'{100 * mfu:.1f}%'}", peak_gib())
    if "bf16" in logp:
        rep.res["mean_logprob_bf16"] = round(logp["bf16"], 5)
        for r in ("delayed", "current"):
            if f"fp8-{r}" in logp:
                d = abs(logp[f"fp8-{r}"] - logp["bf16"]) / max(abs(logp["bf16"]), 1e-6)
                rep.res[f"fp8_{r}_logprob_rel_diff"] = round(d, 5)
                rep.row("correctness", f"FP8 ({r}) vs bf16 mean completion log-prob (rel diff)", f"{d:.2e}")


def run(smoke: bool, profile: bool = False) -> Report:
    from transformers import AutoModelForImageTextToText

    from r1vfree_mcore.models.backends.transformer_engine import te_available

    z = SIZES["smoke" if smoke else "gpu"]
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None) if device == "cuda" else None
    te = device == "cuda" and te_available()
    rep = Report(bench="gpu_check", device=name, te=te)
    init(smoke)
    cfg = hf_config(z)

    # HF fp32 and bf16 references on a padded batch of three lengths (a failure here ends the
    # check). The fp32 reference decides parity; HF's own bf16 error against it is the bf16 noise floor
    # a Megatron bf16 error is judged by (random 24-layer models amplify rounding).
    reset_peak()
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32).eval()
    rep.res["params"] = sum(p.numel() for p in hf.parameters())
    n_img = (z.image_px // 14) ** 2 // 4
    cb = make_batch(cfg, z, [n_img + 6 + k for k in (z.seq // 4, z.seq // 2, z.seq // 3)], device, seed=1)
    with torch.no_grad():
        ref32 = hf(**hf_kwargs(hf, cb, cfg.image_token_id, torch.float32)).logits.float()
        state32 = {k: v.clone() for k, v in hf.state_dict().items()}
        hf = hf.to(torch.bfloat16)
        ref = hf(**hf_kwargs(hf, cb, cfg.image_token_id, torch.bfloat16)).logits.float()
    state = hf.state_dict()
    del hf
    real = cb["attention_mask"].bool()
    rep.res["hf_bf16_vs_fp32_rel_err"] = e = round(rel_err(ref[real], ref32[real]), 5)
    rep.row("correctness", "HF bf16 vs HF fp32 logits (bf16 noise floor)", f"{e:.2e}")
    rep.row("memory", "HF fp32 + bf16 reference: build + forward", "", peak_gib())
    with rep.guard("correctness", "local fp32: build + logits"):
        model = build(cfg, state32, "local", torch.float32)
        with torch.no_grad():
            out32 = model(**cb)[..., : cfg.text_config.vocab_size].float()
        rep.res["logit_rel_err_fp32"] = e = round(rel_err(out32[real], ref32[real]), 7)
        rep.row("correctness", "local fp32: Megatron vs HF fp32 logits (rel err)", f"{e:.2e}", peak_gib())
        del model, out32
    del state32
    # local (DotProductAttention) is the reference spec; the fastest spec present is timed.
    specs = ["local", "transformer_engine" if te else "local_sdpa"]
    correctness(rep, cfg, z, device, specs, state, ref, ref32, cb)
    del ref, ref32
    speed(rep, cfg, z, device, specs[-1], te, peak, state, profile)

    r = rep.res
    r["logit_rel_err_bf16"] = r.get(f"logit_rel_err_bf16_{spec_key(specs[-1])}")
    r["rollout_tokens_per_s"] = max((v for k, v in r.items() if k.startswith("rollout_tokens_per_s_") and v),
                                    default=None)
    r.setdefault("mfu_bf16", None)
    r["mfu_fp8"] = r.get("mfu_fp8-delayed")
    fp8_tps, bf16_tps = r.get("tokens_per_s_fp8-delayed"), r.get("tokens_per_s_bf16")
    r["fp8_speedup"] = round(fp8_tps / bf16_tps, 3) if fp8_tps and bf16_tps else None
    r["fp8_loss_rel_diff"] = r.get("fp8_delayed_logprob_rel_diff")
    r["peak_gib"] = {what: mem for _, what, _, mem in rep.rows if mem is not None}
    r["errors"] = rep.errors
    return rep


def print_table(rows, res, smoke: bool) -> None:
    width = max(len(r[1]) for r in rows) + 2
    print(f"\nGPU check ({res['device']}, TE {'yes' if res['te'] else 'no'}, params {res['params'] / 1e6:.0f}M"
          f"{', CPU smoke: no timing claims' if smoke else ''})")
    print(f"| {'section':<11} | {'check':<{width}} | {'value':<34} | {'peak GiB':>8} |")
    print(f"|{'-' * 13}|{'-' * (width + 2)}|{'-' * 36}|{'-' * 10}|")
    order = {"correctness": 0, "speed": 1, "memory": 2}
    for sec, what, val, mem in sorted(rows, key=lambda r: order[r[0]]):
        print(f"| {sec:<11} | {what:<{width}} | {str(val):<34} | {'-' if mem is None else mem:>8} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: code paths only, no timing claims")
    p.add_argument("--profile", action="store_true", help="also profile one bf16 GRPO step (top kernels)")
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu-smoke for the CPU code-path check", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # HF's patch-embed Conv3d: fp32 parity needs true fp32
    rep = run(a.cpu_smoke, a.profile)
    print_table(rep.rows, rep.res, a.cpu_smoke)
    print(json.dumps(rep.res))
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
