"""GRPO loss vs the original R1V-Free formula and float64 per-aggregation references."""

from __future__ import annotations

import pytest
import torch

from r1vfree_mcore.grpo.loss import AGGREGATIONS, grpo_loss

B, T = 4, 6


def _inputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=torch.float64) * 3).to(dtype)
    old = (logp.double() + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3).to(dtype)
    ref = (logp.double() + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2).to(dtype)
    adv = torch.randn(B, generator=g, dtype=torch.float64).to(dtype)
    lengths = torch.tensor([6, 3, 1, 0])  # full, padded, length 1, all masked
    mask = (torch.arange(T)[None] < lengths[:, None]).int()
    return logp, old, ref, adv, mask


def _original_r1v_free(per_token_logps, ref_per_token_logps, advantages, completion_mask, beta):
    # the original R1V-Free compute_loss (rows with >= 1 completion token)
    per_token_kl = (torch.exp(ref_per_token_logps - per_token_logps)
                    - (ref_per_token_logps - per_token_logps) - 1)
    per_token_loss = torch.exp(per_token_logps - per_token_logps.detach()) * \
        advantages.unsqueeze(1)
    per_token_loss = -(per_token_loss - beta * per_token_kl)
    return ((per_token_loss * completion_mask).sum(dim=1) / completion_mask.sum(dim=1)).mean()


def test_reproduces_original_r1v_free_exactly():
    logp, _, ref, adv, mask = _inputs()
    mask[3, 0] = 1  # the original divides 0 / 0 on an all-masked row
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    ours, _ = grpo_loss(a, a.detach(), ref, adv, mask, beta=0.04)
    orig = _original_r1v_free(b, ref, adv, mask, 0.04)
    ours.backward()
    orig.backward()
    assert torch.equal(ours, orig), (ours.item(), orig.item())
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def _reference(logp, old, ref, adv, mask, lo, hi, beta, aggregation):
    """Loop-based float64 reference, written independently of the implementation."""
    total, per_seq, n_tok = 0.0, [], 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[i, t]:
                continue
            r = torch.exp(logp[i, t] - old[i, t])
            a = adv[i]
            obj = min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
            d = ref[i, t] - logp[i, t]
            s = s + (-obj + beta * (torch.exp(d) - d - 1))
            n += 1
        total = total + s
        per_seq.append(s / n if n else 0.0)
        n_tok += n
    if aggregation == "seq-mean-token-mean":
        return sum(per_seq) / B
    if aggregation == "token-mean":
        return total / n_tok
    return total / (B * T)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_aggregations_match_reference_values_and_grads(aggregation):
    logp, old, ref, adv, mask = _inputs(seed=1, dtype=torch.float64)
    lo, hi = 0.2, 0.28  # asymmetric (DAPO clip-higher)
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    ours, metrics = grpo_loss(a, old, ref, adv, mask, clip_eps_low=lo, clip_eps_high=hi,
                              beta=0.04, aggregation=aggregation)
    want = _reference(b, old, ref, adv, mask, lo, hi, 0.04, aggregation)
    ours.backward()
    want.backward()
    torch.testing.assert_close(ours.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
    assert torch.all(a.grad[mask == 0] == 0)
    # some tokens really are clipped on both sides with these inputs
    assert metrics["clip_frac_low"] > 0 or metrics["clip_frac_high"] > 0


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_micro_batches_with_global_normalizer_sum_to_full_batch(aggregation):
    logp, old, ref, adv, mask = _inputs(seed=2)
    full, _ = grpo_loss(logp, old, ref, adv, mask, aggregation=aggregation)
    norms = {"seq-mean-token-mean": B, "token-mean": int(mask.sum()),
             "seq-mean-token-sum-norm": B * T}
    parts = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], aggregation=aggregation,
                       global_normalizer=norms[aggregation])[0]
             for s in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(sum(parts), full, rtol=1e-6, atol=1e-7)


class _Untouchable:
    def __getattr__(self, name):
        raise AssertionError(f"ref_logprobs.{name} accessed with beta=0")


def test_beta_zero_never_touches_ref():
    logp, old, _, adv, mask = _inputs(seed=3)
    l1, m1 = grpo_loss(logp, old, _Untouchable(), adv, mask, beta=0.0)
    l2, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    assert torch.equal(l1, l2) and m1["kl"] == 0
    with pytest.raises(ValueError, match="ref_logprobs is required"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)


def test_edge_cases_are_finite():
    logp, old, ref, adv, mask = _inputs(seed=4)
    logp[3] = float("-inf")  # all-masked row with garbage log-probs
    old[1, 5] = float("nan")  # masked padding position
    adv[0] = 0.0  # a group with identical rewards
    a = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(a, old, ref, adv, mask, aggregation="token-mean")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    assert torch.all(a.grad[3] == 0) and torch.all(a.grad[mask == 0] == 0)
    assert all(torch.isfinite(v) for v in metrics.values())
    empty, _ = grpo_loss(a, old, ref, adv, torch.zeros(B, T), aggregation="token-mean")
    assert empty == 0


def test_bf16_inputs_and_metrics():
    logp, old, ref, adv, mask = _inputs(seed=5, dtype=torch.bfloat16)
    ent = torch.rand(B, T)
    loss, m = grpo_loss(logp, old, ref, adv, mask, entropy=ent)
    assert loss.dtype == torch.float32
    keep = mask.bool()
    ratio = torch.exp(logp.float() - old.float())[keep]
    d = (ref.float() - logp.float())[keep]
    torch.testing.assert_close(m["kl"], (torch.exp(d) - d - 1).mean())
    torch.testing.assert_close(m["ratio_mean"], ratio.mean())
    torch.testing.assert_close(m["ratio_max"], ratio.max())
    torch.testing.assert_close(m["entropy"], ent[keep].mean())
    torch.testing.assert_close(m["advantage_mean"], adv.float().mean())
    adv_tok = adv.float()[:, None].expand(B, T)[keep]
    torch.testing.assert_close(m["clip_frac_low"], ((ratio < 0.8) & (adv_tok < 0)).float().mean())
    torch.testing.assert_close(m["clip_frac_high"], ((ratio > 1.2) & (adv_tok > 0)).float().mean())


def test_bad_arguments():
    logp, old, ref, adv, mask = _inputs()
    with pytest.raises(ValueError, match="aggregation='sum'"):
        grpo_loss(logp, old, ref, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, old, ref, adv[:2], mask)
    with pytest.raises(ValueError, match="completion_mask"):
        grpo_loss(logp, old, ref, adv, mask[:, :2])
