"""Dense float64 references for the GRPO math tests (full log_softmax, no chunking, no TP)."""

from __future__ import annotations

import torch


def dense_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float,
                   real_vocab_size: int):
    """float64 log-prob of targets and entropy over the first real_vocab_size columns."""
    z = logits[..., :real_vocab_size].to(torch.float64) / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p = logp_all.exp()
    # p * log p with p == 0 is 0 (the -inf logits); masked_fill keeps inf out of the backward
    entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    return logp, entropy


def make_logits(b, t, v_padded, real_vocab, seed, neg_inf_frac=0.05):
    """Random logits with some -inf entries (never a whole row or the target) and junk in the
    padded columns, which must be ignored; plus targets."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v_padded, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, real_vocab, (b, t), generator=g)
    holes = torch.rand(b, t, v_padded, generator=g) < neg_inf_frac
    holes.scatter_(-1, targets.unsqueeze(-1), False)
    logits[holes] = float("-inf")
    logits[..., real_vocab:] = 50.0  # padding junk: would dominate if not excluded
    return logits, targets


def grads_of(fn, inputs, upstream):
    """Gradients of sum_i <outputs_i, upstream_i> w.r.t. inputs (a list of leaf tensors)."""
    outs = fn(*inputs)
    total = sum((o.to(torch.float64) * u).sum() for o, u in zip(outs, upstream) if o is not None)
    return [g for g in torch.autograd.grad(total, inputs)], outs
