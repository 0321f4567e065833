"""GRPO loss: PPO-clipped policy term with asymmetric bounds, k3 KL to a reference, and a table
of token aggregations (original GRPO, DAPO token-mean, Dr. GRPO)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Aggregation:
    """How per-token losses ``l[b, t]`` (already 0 where masked) become one scalar.

    ``loss = numerator(l, mask) / normalizer`` where ``normalizer`` is ``local_normalizer(mask)``
    or, when given, the caller's ``global_normalizer`` counting ``unit`` over every micro-batch
    and DP rank. Numerators add up over micro-batches, so with a global normaliser the sum of the
    micro-batch losses is the full-batch loss.
    """

    unit: str
    numerator: Callable[[Tensor, Tensor], Tensor]
    local_normalizer: Callable[[Tensor], Tensor]


def _seq_mean_numerator(l: Tensor, mask: Tensor) -> Tensor:
    # An all-masked row has sum 0; clamping its length to 1 keeps 0 / 0 out.
    lengths = mask.sum(dim=1).clamp(min=1).to(l.dtype)
    return (l.sum(dim=1) / lengths).sum()


AGGREGATIONS: dict[str, Aggregation] = {
    # Original GRPO / R1V-Free: mean over sequences of (masked token sum / completion length).
    "seq-mean-token-mean": Aggregation(
        unit="sequences",
        numerator=_seq_mean_numerator,
        local_normalizer=lambda mask: torch.tensor(float(mask.shape[0])),
    ),
    # DAPO: every valid token weighs the same.
    "token-mean": Aggregation(
        unit="valid (unmasked) tokens",
        numerator=lambda l, mask: l.sum(),
        local_normalizer=lambda mask: mask.sum().clamp(min=1).to(torch.float32),
    ),
    # Dr. GRPO: token sum over a constant, sequences x max completion length (T).
    "seq-mean-token-sum-norm": Aggregation(
        unit="sequences x max completion length T",
        numerator=lambda l, mask: l.sum(),
        local_normalizer=lambda mask: torch.tensor(float(mask.shape[0] * mask.shape[1])),
    ),
}


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    beta: float = 0.04,
    aggregation: str = "seq-mean-token-mean",
    entropy: Tensor | None = None,
    global_normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss of one micro-batch and its metrics.

    Per token (computed in fp32 whatever the input dtype)::

        ratio = exp(logp - old_logp)
        pg    = -min(ratio * A, clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * A)
        kl    = exp(ref - logp) - (ref - logp) - 1                  (k3 estimator)
        l     = pg + beta * kl                                      (0 where mask == 0)

    and ``loss = AGGREGATIONS[aggregation].numerator(l, mask) / N`` with

    * ``"seq-mean-token-mean"``: numerator ``sum_b (sum_t l[b,t] / len_b)``, N = #sequences;
    * ``"token-mean"``: numerator ``sum l``, N = #valid tokens;
    * ``"seq-mean-token-sum-norm"``: numerator ``sum l``, N = #sequences x T (T = max
      completion length, the tensors' second dim, a constant).

    Micro-batching (NeMo-RL style): pass ``global_normalizer`` = N counted over the whole batch
    (all micro-batches and DP ranks); then ``sum_over_microbatches(loss)`` equals the full-batch
    loss and the DP gradient *sum* is the full-batch gradient. (Megatron's schedule divides each
    micro-batch loss by #micro-batches and DDP averages over DP, so multiply by
    ``num_microbatches * dp_size`` there.) Without it, N is this micro-batch's own count.

    With ``old_logprobs = logprobs.detach()`` this is exactly the original R1V-Free loss
    ``-(exp(logp - logp.detach()) * A - beta * kl)`` aggregated by "seq-mean-token-mean".

    Args:
        logprobs, old_logprobs: ``[B, T]``; only ``logprobs`` needs grad.
        ref_logprobs: ``[B, T]``, or None; never read when ``beta == 0``.
        advantages: ``[B]`` (one per sequence) or ``[B, T]``.
        completion_mask: ``[B, T]``, nonzero on completion tokens. An all-masked row adds 0.
        entropy: optional ``[B, T]`` per-token entropy, only reported (masked mean).
    Returns:
        ``(loss, metrics)``; metrics are detached 0-dim fp32 tensors: kl, clip_frac_low,
        clip_frac_high, ratio_mean, ratio_max, advantage_mean, advantage_std, (entropy).
        Token metrics are masked means over this micro-batch.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}; choose one of {sorted(AGGREGATIONS)}")
    if clip_eps_low < 0 or clip_eps_low >= 1 or clip_eps_high < 0:
        raise ValueError(
            f"need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got {clip_eps_low}, "
            f"{clip_eps_high}"
        )
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when beta != 0")
    shape = logprobs.shape
    if logprobs.dim() != 2 or old_logprobs.shape != shape or completion_mask.shape != shape:
        raise ValueError(
            f"logprobs {tuple(shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must all be [B, T]"
        )
    if advantages.shape not in ((shape[0],), shape):
        raise ValueError(f"advantages must be [B] or [B, T], got {tuple(advantages.shape)}")

    mask = completion_mask.bool()
    logp = logprobs.float()
    adv = advantages.float()
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
    # Masked positions may hold garbage (-inf, NaN): zero them before exp so no NaN reaches
    # the sums or the gradient.
    log_ratio = torch.where(mask, logp - old_logprobs.float(), 0.0)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    kl = None
    if beta != 0:
        d = torch.where(mask, ref_logprobs.float() - logp, 0.0)
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, 0.0)

    agg = AGGREGATIONS[aggregation]
    norm = agg.local_normalizer(mask) if global_normalizer is None else global_normalizer
    loss = agg.numerator(per_token, mask) / torch.as_tensor(norm, dtype=torch.float32,
                                                            device=per_token.device)

    with torch.no_grad():
        adv_b = adv.expand(shape)
        metrics = {
            "kl": _masked_mean(kl, mask) if kl is not None else torch.zeros(()),
            "clip_frac_low": _masked_mean(((ratio < 1 - clip_eps_low) & (adv_b < 0)).float(),
                                          mask),
            "clip_frac_high": _masked_mean(((ratio > 1 + clip_eps_high) & (adv_b > 0)).float(),
                                           mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "ratio_max": torch.where(mask, ratio, 0.0).max() if mask.any() else torch.zeros(()),
            "advantage_mean": advantages.float().mean(),
            "advantage_std": advantages.float().std() if advantages.numel() > 1
            else torch.zeros(()),
        }
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy.float(), mask)
    return loss, {k: v.detach().float() for k, v in metrics.items()}
