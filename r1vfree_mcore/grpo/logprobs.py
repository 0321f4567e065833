"""Per-token log-probs and entropy from vocab-parallel logits: chunked, exact, memory-lean.

Each tensor-parallel (TP) rank holds ``V_local = V_padded / TP`` vocab columns, the global ids
``[vocab_start, vocab_start + V_local)``. Ids ``>= real_vocab_size`` are Megatron's vocab padding
and are treated as ``-inf`` (excluded). Per row (token) the global softmax statistics are built
with two TP all-reduces per chunk: MAX of the row maxima, then one SUM of the stacked
``[sum exp, target logit, sum p*logit]`` (see :mod:`r1vfree_mcore.grpo.softmax_rows`). Nothing
of size V crosses ranks.

Rows are processed ``chunk_size`` at a time (one pair of all-reduces per chunk) and, within a
chunk, a few rows at a time through a small reused fp32 scratch: input logits are never modified
or upcast whole. The backward recomputes the softmax of each row from the saved per-row max /
log-normaliser (O(rows) floats), so no full-vocab fp32 tensor is ever saved. Both outputs are
differentiable:

    d logp_t / d z_j = onehot_j - p_j
    d H      / d z_j = -p_j (log p_j + H)          (z = logits / temperature)

:func:`fused_linear_logprobs` (in :mod:`r1vfree_mcore.grpo.fused_linear`, re-exported here) does
the same from ``hidden @ weight.T`` chunk by chunk, so even the low-precision logits are never
whole.

Conventions: a logit of ``-inf`` is allowed (probability 0, zero gradient, no NaN); ``+inf`` or
NaN logits are not. A row whose logits are all ``-inf`` (e.g. a padding position filled with
``-inf``) gets log-prob 0, entropy 0 and zero gradient. A target whose own logit is ``-inf`` gets
a huge negative finite log-prob (about -1e30) rather than ``-inf``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from r1vfree_mcore.grpo import softmax_rows as sr
from r1vfree_mcore.grpo.fused_linear import fused_linear_logprobs

__all__ = ["fused_linear_logprobs", "vocab_parallel_logprobs"]


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_size, shard, compute_entropy):
        flat = logits.reshape(-1, shard.local_size)
        tflat = targets.reshape(-1)
        n = flat.shape[0]
        table = sr.StatsTable(n, logits.device)
        scratch = sr.Scratch(min(chunk_size, max(n, 1)), shard, logits.device,
                             2 if compute_entropy else 1)
        for sl in sr.chunks(n, chunk_size):
            table.put(sl, sr.chunk_stats(flat[sl], tflat[sl], shard, temperature,
                                         compute_entropy, scratch))
        ctx.save_for_backward(logits, tflat, *table.for_backward())
        ctx.cfg = (temperature, chunk_size, shard, compute_entropy)
        ent = table.entropy.view(targets.shape) if compute_entropy else table.entropy[:0]
        return table.logp.view(targets.shape), ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, tflat, shift, log_z, entropy, live = ctx.saved_tensors
        temperature, chunk_size, shard, compute_entropy = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        flat = logits.reshape(-1, shard.local_size)
        n = flat.shape[0]
        grad = torch.empty_like(flat)
        grad[:, shard.n_valid:] = 0  # padded vocab columns get no gradient
        g_logp = g_logp.reshape(-1)
        g_ent = g_ent.reshape(-1) if compute_entropy and g_ent is not None else None
        scratch = sr.Scratch(min(chunk_size, max(n, 1)), shard, logits.device,
                             1 if g_ent is None else 2)
        for sl in sr.chunks(n, chunk_size):
            gl, ge = sr.row_grads(g_logp, g_ent, live, sl)
            sr.chunk_grad(flat[sl], grad[sl], shift[sl], log_z[sl], entropy[sl], gl, ge,
                       tflat[sl], shard, temperature, scratch)
        return grad.view_as(logits), None, None, None, None, None


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    vocab_start: int | None = None,
    real_vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    compute_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of ``targets`` and (optionally) entropy under ``softmax(logits / temperature)``.

    Args:
        logits: ``[..., V_local]`` (e.g. ``[B, T, V/TP]``), any float dtype; not modified.
        targets: ``[...]`` global token ids in ``[0, real_vocab_size)``, same leading shape.
        temperature: divides the logits exactly as at sampling time.
        chunk_size: rows (tokens) per chunk, i.e. per pair of TP all-reduces. The extra memory
            is O(rows) plus <= 64 MiB of fp32 scratch (x2 with entropy; on CUDA
            O(chunk_size x V_local)).
        vocab_start: global id of this rank's first column (default ``tp_rank * V_local``).
        real_vocab_size: vocab size without padding (default ``V_local * TP``).
        group: TP process group (default: megatron's TP group if initialised, else none).
        compute_entropy: also return the (differentiable) per-token entropy.

    Returns:
        ``(logprobs, entropy or None)``, fp32, shaped like ``targets``; identical on every TP
        rank. The backward gives this rank's shard of d/d logits (no communication).
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree: "
            "expected logits [..., V_local] with targets [...]"
        )
    shard = sr.resolve_shard(logits.shape[-1], vocab_start, real_vocab_size, group)
    sr.check_inputs(targets, shard, temperature, chunk_size)
    logp, ent = _VocabParallelLogprobs.apply(
        logits, targets, float(temperature), int(chunk_size), shard, compute_entropy
    )
    return logp, (ent if compute_entropy else None)
