"""Chunked vocab-parallel log-probs / entropy vs a dense float64 log_softmax (TP=1)."""

from __future__ import annotations

import pytest
import torch

from grpo_reference import dense_logprobs, grads_of, make_logits
from r1vfree_mcore.grpo import softmax_rows
from r1vfree_mcore.grpo.logprobs import fused_linear_logprobs, vocab_parallel_logprobs

B, T, V_PAD, REAL_V = 3, 7, 24, 21


def _ours(logits, targets, temperature, chunk, entropy=True):
    return vocab_parallel_logprobs(logits, targets, temperature=temperature, chunk_size=chunk,
                                   real_vocab_size=REAL_V, compute_entropy=entropy)


@pytest.mark.parametrize("block_rows", [None, 2])
@pytest.mark.parametrize("chunk", [1, 4, 5, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_grads_match_dense(chunk, temperature, block_rows, monkeypatch):
    if block_rows is not None:  # several CPU row blocks per chunk, as at a real vocab size
        monkeypatch.setattr(softmax_rows, "_CPU_BLOCK_ELEMS", block_rows * REAL_V)
    logits64, targets = make_logits(B, T, V_PAD, REAL_V, seed=chunk)
    logits = logits64.float().requires_grad_()
    ref_in = logits64.clone().requires_grad_()
    up = [torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)]
    (g_ours,), (lp, ent) = grads_of(lambda x: _ours(x, targets, temperature, chunk), [logits], up)
    (g_ref,), (rlp, rent) = grads_of(
        lambda x: dense_logprobs(x, targets, temperature, REAL_V), [ref_in], up)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    torch.testing.assert_close(lp.double(), rlp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), rent, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours[..., :REAL_V].double(), g_ref[..., :REAL_V], atol=1e-5,
                               rtol=1e-5)
    assert torch.all(g_ours[..., REAL_V:] == 0), "padded vocab columns must get zero grad"
    assert torch.isfinite(g_ours).all()


def test_logprobs_only_grad_and_no_entropy():
    logits64, targets = make_logits(B, T, V_PAD, REAL_V, seed=11)
    logits = logits64.float().requires_grad_()
    ref_in = logits64.clone().requires_grad_()
    up = [torch.randn(B, T, dtype=torch.float64)]
    (g,), (lp, ent) = grads_of(lambda x: _ours(x, targets, 1.3, 4, entropy=False), [logits], up)
    assert ent is None
    (g_ref,), (rlp,) = grads_of(lambda x: dense_logprobs(x, targets, 1.3, REAL_V)[:1],
                                  [ref_in], up)
    torch.testing.assert_close(lp.double(), rlp, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(g[..., :REAL_V].double(), g_ref[..., :REAL_V], atol=1e-5,
                               rtol=1e-5)


def test_input_logits_not_modified_and_bf16_upcast():
    logits64, targets = make_logits(B, T, V_PAD, REAL_V, seed=3)
    for dtype in (torch.float32, torch.bfloat16):
        logits = logits64.to(dtype).requires_grad_()
        before = logits.detach().clone()
        lp, ent = _ours(logits, targets, 1.0, 4)
        (lp.sum() + ent.sum()).backward()
        assert torch.equal(logits.detach(), before)
        assert lp.dtype == torch.float32 and logits.grad.dtype == dtype
        rlp, rent = dense_logprobs(before.double(), targets, 1.0, REAL_V)
        torch.testing.assert_close(lp.double(), rlp, atol=2e-5, rtol=1e-5)


def test_all_neg_inf_row_gives_zero_and_no_nan():
    logits64, targets = make_logits(B, T, V_PAD, REAL_V, seed=5)
    logits64[1, 2, :] = float("-inf")  # e.g. a padding position filled with -inf
    logits = logits64.float().requires_grad_()
    lp, ent = _ours(logits, targets, 1.0, 3)
    (lp.sum() + ent.sum()).backward()
    assert lp[1, 2] == 0 and ent[1, 2] == 0
    assert torch.all(logits.grad[1, 2] == 0)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert torch.isfinite(logits.grad).all()
    rlp, _ = dense_logprobs(logits64, targets, 1.0, REAL_V)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, 2] = False
    torch.testing.assert_close(lp[keep].double(), rlp[keep], atol=2e-5, rtol=1e-5)


def test_bad_inputs_raise_clear_errors():
    logits = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="real_vocab_size=6"):
        vocab_parallel_logprobs(logits, torch.full((2, 3), 7), real_vocab_size=6)
    with pytest.raises(ValueError, match="disagree"):
        vocab_parallel_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), temperature=0)
    with pytest.raises(TypeError, match="integer"):
        vocab_parallel_logprobs(logits, torch.zeros(2, 3))


@pytest.mark.parametrize("cache_chunks", [0, 2, 100])
@pytest.mark.parametrize("sequence_first", [False, True])
def test_fused_linear_matches_dense(sequence_first, cache_chunks, monkeypatch):
    # 21 rows in chunks of 4: none, some or all chunks' logits kept for the backward;
    # 3-row CPU blocks, so a chunk spans two blocks
    monkeypatch.setattr(softmax_rows, "_CPU_BLOCK_ELEMS", 3 * REAL_V)
    g = torch.Generator().manual_seed(7)
    hid = 16
    hidden64 = torch.randn(B, T, hid, generator=g, dtype=torch.float64)
    weight64 = torch.randn(V_PAD, hid, generator=g, dtype=torch.float64)
    targets = torch.randint(0, REAL_V, (B, T), generator=g)
    up = [torch.randn(B, T, dtype=torch.float64), torch.randn(B, T, dtype=torch.float64)]

    def ours(h, w):
        h_in = h.transpose(0, 1) if sequence_first else h
        return fused_linear_logprobs(h_in, w, targets, sequence_first=sequence_first,
                                     temperature=0.8, chunk_size=4, real_vocab_size=REAL_V,
                                     compute_entropy=True,
                                     logits_cache_bytes=cache_chunks * 4 * REAL_V * 4)

    def ref(h, w):
        return dense_logprobs(h @ w.t(), targets, 0.8, REAL_V)

    gs, (lp, ent) = grads_of(ours, [hidden64.float().requires_grad_(),
                                    weight64.float().requires_grad_()], up)
    rgs, (rlp, rent) = grads_of(ref, [hidden64.clone().requires_grad_(),
                                      weight64.clone().requires_grad_()], up)
    assert lp.shape == (B, T)
    torch.testing.assert_close(lp.double(), rlp, atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), rent, atol=5e-5, rtol=1e-5)
    for a, b in zip(gs, rgs):
        torch.testing.assert_close(a.double(), b, atol=5e-5, rtol=1e-4)
    assert torch.all(gs[1][REAL_V:] == 0)


@pytest.mark.parametrize("fp32_weight_grad", [False, True])
def test_fused_linear_bf16_close_to_dense(fp32_weight_grad):
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(2, 9, 32, generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(40, 32, generator=g) * 0.2).bfloat16().requires_grad_()
    targets = torch.randint(0, 40, (2, 9), generator=g)
    lp, _ = fused_linear_logprobs(hidden, weight, targets, chunk_size=5,
                                  fp32_weight_grad=fp32_weight_grad)
    lp.sum().backward()
    h2, w2 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    rlp, _ = dense_logprobs(h2 @ w2.t(), targets, 1.0, 40)
    rlp.sum().backward()
    torch.testing.assert_close(lp.double(), rlp, atol=0.05, rtol=0.02)
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(weight.grad.double(), w2.grad, atol=0.05, rtol=0.02)
    torch.testing.assert_close(hidden.grad.double(), h2.grad, atol=0.05, rtol=0.02)
