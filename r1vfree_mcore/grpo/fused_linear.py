"""Fused output projection + log-probs: ``hidden -> logits chunk -> log-prob``, chunk by chunk.

The logits ``hidden @ weight.T`` exist one chunk of rows at a time, in one reused buffer of the
weight's dtype; the softmax statistics come from :mod:`r1vfree_mcore.grpo.softmax_rows`. The
backward needs each chunk's logits again: it recomputes them with one GEMM per chunk, turns them
in place into d loss / d logits, and feeds that to the two gradient GEMMs (d hidden, d weight).

Selective recompute (``logits_cache_bytes``): recomputing a chunk's logits is the fourth GEMM
the naive path does not pay. The forward may instead keep the logits of whole chunks, up to
``logits_cache_bytes``, so the backward skips their recompute GEMM; the rest are recomputed. The
cached buffers are then overwritten by their gradients and one of them serves as the backward's
work buffer, so the cache costs ``cached chunks - 1`` buffers of extra peak memory. It is kept only
when a gradient is needed, and a second backward through the same graph (``retain_graph``)
recomputes everything.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from r1vfree_mcore.grpo import softmax_rows as sr

# Default bound of the logits cache: 1.5 GiB, i.e. 5 chunks of 1024 x 151,936 bf16 logits. At
# B=8, T=1024 (bench/logprobs.py) that is 5 of 8 chunks: 6.7x less peak memory than the naive
# path instead of 15x with no cache, and 5 fewer chunk GEMMs (of 32) in the backward.
DEFAULT_LOGITS_CACHE_BYTES = 3 << 29


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, shard, compute_entropy,
                allreduce_hidden_grad, fp32_weight_grad, cache_bytes):
        n, nv = hidden.shape[0], shard.n_valid
        w = weight[:nv]
        rows = min(chunk_size, max(n, 1))
        slices = list(sr.chunks(n, rows))
        buf_bytes = rows * nv * hidden.element_size()
        n_cache = min(len(slices), cache_bytes // buf_bytes) if buf_bytes > 0 else 0
        table = sr.StatsTable(n, hidden.device)
        scratch = sr.Scratch(rows, shard, hidden.device, 2 if compute_entropy else 1)
        # Recomputed chunks first, through one buffer that then becomes the first cache slot.
        cache, buf = [], None
        for i, sl in enumerate(slices[n_cache:] + slices[:n_cache]):
            if buf is None:
                buf = hidden.new_empty(rows, nv)
            z = torch.mm(hidden[sl], w.t(), out=buf[: sl.stop - sl.start])
            table.put(sl, sr.chunk_stats(z, targets[sl], shard, temperature, compute_entropy,
                                         scratch))
            if i >= len(slices) - n_cache:
                cache.append((sl, buf))
                buf = None
        del buf
        ctx.save_for_backward(hidden, weight, targets, *table.for_backward())
        ctx.cache = cache
        ctx.cfg = (temperature, rows, shard, compute_entropy, allreduce_hidden_grad,
                   fp32_weight_grad)
        return table.logp, (table.entropy if compute_entropy else table.entropy[:0])

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, shift, log_z, entropy, live = ctx.saved_tensors
        temperature, rows, shard, compute_entropy, allreduce_hidden_grad, fp32_wgrad = ctx.cfg
        # cached logits are overwritten below: a second backward must recompute them
        cache, ctx.cache = ctx.cache, []
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nv = shard.n_valid
        w = weight[:nv]
        grad_h = torch.zeros_like(hidden) if need_h else None
        # fp32 accumulation costs a [V_local, H] fp32 buffer plus one add per chunk; the default
        # accumulates in the weight's dtype with addmm_ (fp32 math inside, one rounding per chunk).
        acc_dtype = torch.float32 if fp32_wgrad else weight.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) \
            if need_w else None
        g_ent = g_ent if compute_entropy and g_ent is not None and g_ent.numel() else None
        scratch = sr.Scratch(rows, shard, hidden.device, 1 if g_ent is None else 2)
        # cached chunks first: their buffers are consumed, the last one becomes the work buffer
        cached = {sl.start for sl, _ in cache}
        todo = cache + [(sl, None) for sl in sr.chunks(hidden.shape[0], rows)
                        if sl.start not in cached]
        if not (need_h or need_w) or nv == 0:  # nothing to compute (all-padding rank: zeros)
            todo = []
        del cache
        work = None
        while todo:
            sl, buf = todo.pop(0)
            h, n_rows = hidden[sl], sl.stop - sl.start
            if buf is None:  # recompute
                work = hidden.new_empty(rows, nv) if work is None else work
                z = torch.mm(h, w.t(), out=work[:n_rows])
            else:
                work, z = buf, buf[:n_rows]
            del buf
            gl, ge = sr.row_grads(g_logp, g_ent, live, sl)
            sr.chunk_grad(z, z, shift[sl], log_z[sl], entropy[sl], gl, ge, targets[sl], shard,
                       temperature, scratch)
            if need_h:
                torch.mm(z, w, out=grad_h[sl])
            if need_w:
                if z.dtype == acc_dtype:
                    grad_w[:nv].addmm_(z.t(), h)
                else:
                    grad_w[:nv].add_(z.t() @ h)
        del work
        if need_h and allreduce_hidden_grad:
            # hidden is replicated over TP; each rank saw only its vocab shard.
            sr.all_reduce(grad_h, shard, dist.ReduceOp.SUM)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None, None


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    sequence_first: bool = False,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    vocab_start: int | None = None,
    real_vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
    compute_entropy: bool = False,
    allreduce_hidden_grad: bool = True,
    fp32_weight_grad: bool = False,
    logits_cache_bytes: int = DEFAULT_LOGITS_CACHE_BYTES,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of ``targets`` under ``softmax(hidden @ weight.T / temperature)``
    without ever materialising the whole logits: they are computed, reduced and dropped per chunk.

    Args:
        hidden: ``[B, T, H]``, or ``[T, B, H]`` (Megatron layout) with ``sequence_first=True``;
            replicated over the TP group (no sequence parallelism). Same dtype as ``weight``.
        weight: ``[V_local, H]``, this rank's vocab shard of the output layer (no bias).
        targets: ``[B, T]`` global token ids.
        chunk_size: rows (tokens) per chunk; the logits buffer is ``chunk_size x V_local`` in the
            weight's dtype (plus <= 64 MiB of fp32 scratch, 128 MiB with entropy; on CUDA one
            fp32 chunk, two with entropy).
        allreduce_hidden_grad: sum d/d hidden over the TP group in the backward (what Megatron's
            ``copy_to_tensor_model_parallel_region`` does). Set False if the caller already
            routes ``hidden`` through such a region.
        fp32_weight_grad: accumulate the weight grad over chunks in an fp32 buffer (one
            rounding at the end) instead of in the weight's dtype (one rounding per chunk, no
            extra [V_local, H] fp32 buffer). No effect for fp32 weights.
        logits_cache_bytes: keep the logits of as many whole chunks as fit in this many bytes
            from the forward to the backward, which then skips their recompute GEMM (default
            1.5 GiB; 0 = recompute every chunk, least memory). Only used when a gradient is
            needed. Peak extra memory is at most this bound plus one chunk buffer (and the
            gradients), whatever B x T.
        Other arguments: as in :func:`r1vfree_mcore.grpo.logprobs.vocab_parallel_logprobs`.

    Returns:
        ``(logprobs, entropy or None)``, fp32 ``[B, T]``. Gradients flow to ``hidden`` and
        ``weight``.
    """
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"expected hidden [B, T, H] / [T, B, H] and weight [V_local, H], got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) dtypes differ")
    if logits_cache_bytes < 0:
        raise ValueError(f"logits_cache_bytes must be >= 0, got {logits_cache_bytes}")
    rows = hidden.shape[:2] if not sequence_first else hidden.shape[1::-1]
    if tuple(rows) != tuple(targets.shape):
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)} "
            f"(sequence_first={sequence_first})"
        )
    shard = sr.resolve_shard(weight.shape[0], vocab_start, real_vocab_size, group)
    sr.check_inputs(targets, shard, temperature, chunk_size)
    wants_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    tgt = targets.t() if sequence_first else targets
    logp, ent = _FusedLinearLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, tgt.reshape(-1), float(temperature),
        int(chunk_size), shard, compute_entropy, allreduce_hidden_grad, fp32_weight_grad,
        int(logits_cache_bytes) if wants_grad else 0,
    )

    def back(t):
        t = t.view(tgt.shape)
        return t.t() if sequence_first else t

    return back(logp), (back(ent) if compute_entropy else None)
