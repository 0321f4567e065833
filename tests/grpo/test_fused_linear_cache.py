"""Selective recompute in fused_linear_logprobs: cached chunk logits give the same gradients as
recomputed ones, are consumed by the first backward, and bad settings are rejected."""

from __future__ import annotations

import pytest
import torch

from grpo_reference import dense_logprobs
from r1vfree_mcore.grpo.logprobs import fused_linear_logprobs

B, T, HID, V = 2, 11, 32, 40
CHUNK = 4  # 22 rows: 6 chunks, the last one of 2 rows


def _inputs(dtype):
    g = torch.Generator().manual_seed(21)
    hidden = torch.randn(B, T, HID, generator=g).to(dtype)
    weight = (torch.randn(V, HID, generator=g) * 0.3).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    up = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    return hidden, weight, targets, up


def _run(hidden, weight, targets, up, cache_bytes, backwards=1):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp, ent = fused_linear_logprobs(h, w, targets, chunk_size=CHUNK, temperature=0.9,
                                    compute_entropy=True, logits_cache_bytes=cache_bytes)
    loss = (lp * up[0]).sum() + (ent * up[1]).sum()
    for i in range(backwards):
        loss.backward(retain_graph=i + 1 < backwards)
    return lp.detach(), ent.detach(), h.grad, w.grad


@pytest.mark.parametrize("cached_chunks", [1, 3, 6])
def test_cached_chunks_give_bitwise_same_results_in_bf16(cached_chunks):
    hidden, weight, targets, up = _inputs(torch.bfloat16)
    chunk_bytes = CHUNK * V * 2
    ref = _run(hidden, weight, targets, up, 0)
    ours = _run(hidden, weight, targets, up, cached_chunks * chunk_bytes)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    # and the recompute path itself is right (bf16 tolerance vs float64)
    h64 = hidden.double().requires_grad_()
    rlp, _ = dense_logprobs(h64 @ weight.double().t(), targets, 0.9, V)
    torch.testing.assert_close(ref[0].double(), rlp, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("cache_bytes", [0, 10**9])
def test_second_backward_with_retain_graph_recomputes(cache_bytes):
    # the first backward overwrites cached logits with gradients; a second one must not use them
    hidden, weight, targets, up = _inputs(torch.float32)
    once = _run(hidden, weight, targets, up, cache_bytes)
    twice = _run(hidden, weight, targets, up, cache_bytes, backwards=2)
    torch.testing.assert_close(twice[2], 2 * once[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(twice[3], 2 * once[3], atol=1e-6, rtol=1e-5)


def test_no_grad_call_matches_grad_call():
    hidden, weight, targets, up = _inputs(torch.float32)
    with torch.no_grad():
        lp, ent = fused_linear_logprobs(hidden, weight, targets, chunk_size=CHUNK,
                                        temperature=0.9, compute_entropy=True)
    ref = _run(hidden, weight, targets, up, 10**9)
    assert lp.grad_fn is None
    assert torch.equal(lp, ref[0]) and torch.equal(ent, ref[1])


def test_bad_cache_and_dtype_settings_raise():
    hidden, weight, targets, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match="logits_cache_bytes"):
        fused_linear_logprobs(hidden, weight, targets, logits_cache_bytes=-1)
    with pytest.raises(TypeError, match="dtypes differ"):
        fused_linear_logprobs(hidden, weight.bfloat16(), targets)
