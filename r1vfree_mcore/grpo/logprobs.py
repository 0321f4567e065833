"""Per-token log-probs and entropy from vocab-parallel logits: chunked, exact, memory-lean.

Each tensor-parallel (TP) rank holds ``V_local = V_padded / TP`` vocab columns, the global ids
``[vocab_start, vocab_start + V_local)``. Ids ``>= real_vocab_size`` are Megatron's vocab padding
and are treated as ``-inf`` (excluded). Per row (token) the global softmax statistics are built
with two TP all-reduces per chunk: MAX of the row maxima, then one SUM of the stacked
``[sum exp, target logit, sum p*logit]``. Nothing of size V crosses ranks.

Rows are processed ``chunk_size`` at a time; each chunk is upcast to fp32 (a copy: input logits
are never modified), so the extra memory is O(chunk_size x V_local). The backward recomputes the
softmax of each chunk from the saved per-row max / log-normaliser (O(rows) floats), so no
full-vocab fp32 tensor is ever saved. Both outputs are differentiable:

    d logp_t / d z_j = onehot_j - p_j
    d H      / d z_j = -p_j (log p_j + H)          (z = logits / temperature)

``fused_linear_logprobs`` does the same from ``hidden @ weight.T`` chunk by chunk, so even the
low-precision logits exist only one chunk at a time; its backward recomputes the chunk's logits.

Conventions: a logit of ``-inf`` is allowed (probability 0, zero gradient, no NaN); ``+inf`` or
NaN logits are not. A row whose logits are all ``-inf`` (e.g. a padding position filled with
``-inf``) gets log-prob 0, entropy 0 and zero gradient. A target whose own logit is ``-inf`` gets
a huge negative finite log-prob (about -1e30) rather than ``-inf``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Logits shifted by the row max are clamped here so that -inf never meets 0 * inf in fp32.
_NEG_BIG = -1e30


@dataclass(frozen=True)
class VocabShard:
    """This rank's slice of the vocabulary and the group that holds the other slices."""

    start: int  # global id of local column 0
    local_size: int  # V_local, columns held here (padding included)
    n_valid: int  # local columns that are real vocab ids (the rest is padding)
    real_vocab_size: int
    group: dist.ProcessGroup | None
    world: int  # TP size; 1 means no communication


def _default_tp_group() -> dist.ProcessGroup | None:
    # If megatron's parallel_state was never imported it cannot be initialised; not importing it
    # here keeps this module light (importing megatron.core takes seconds).
    parallel_state = sys.modules.get("megatron.core.parallel_state")
    if parallel_state is not None and parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


def resolve_shard(
    local_size: int,
    vocab_start: int | None = None,
    real_vocab_size: int | None = None,
    group: dist.ProcessGroup | None = None,
) -> VocabShard:
    """Fill in defaults: the TP group from megatron's parallel_state (if initialised) else
    single-rank; ``vocab_start = tp_rank * local_size``; ``real_vocab_size = local_size * TP``."""
    group = group if group is not None else _default_tp_group()
    world = dist.get_world_size(group) if (group is not None and dist.is_initialized()) else 1
    if vocab_start is None:
        vocab_start = dist.get_rank(group) * local_size if world > 1 else 0
    if real_vocab_size is None:
        real_vocab_size = local_size * world
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")
    if real_vocab_size < 1:
        raise ValueError(f"real_vocab_size must be >= 1, got {real_vocab_size}")
    n_valid = max(0, min(local_size, real_vocab_size - vocab_start))
    return VocabShard(vocab_start, local_size, n_valid, real_vocab_size, group, world)


def _all_reduce(t: torch.Tensor, shard: VocabShard, op) -> torch.Tensor:
    if shard.world > 1:
        dist.all_reduce(t, op=op, group=shard.group)
    return t


def _upcast(chunk: torch.Tensor, shard: VocabShard, temperature: float) -> torch.Tensor:
    """fp32 copy of the real-vocab columns of a chunk, divided by the temperature."""
    x = chunk[:, : shard.n_valid].to(torch.float32, copy=True)
    if temperature != 1.0:
        x.div_(temperature)
    return x


def _local_targets(targets: torch.Tensor, shard: VocabShard):
    local = targets - shard.start
    in_shard = (local >= 0) & (local < shard.n_valid)
    return local.clamp(0, max(shard.n_valid - 1, 0)).unsqueeze(1), in_shard


def _shift(x: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    return x.sub_(row_max.unsqueeze(1)).clamp_(min=_NEG_BIG)


def _chunk_forward(x, targets, shard: VocabShard, compute_entropy: bool):
    """Global row stats of one fp32 chunk ``x`` (consumed). Returns (max, logZ, logp, H, live)
    where logZ is relative to max and ``live`` marks rows with at least one finite logit."""
    rows = x.shape[0]
    if shard.n_valid > 0:
        row_max = x.amax(dim=1)
    else:
        row_max = x.new_full((rows,), float("-inf"))
    _all_reduce(row_max, shard, dist.ReduceOp.MAX)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    stats = x.new_zeros(3, rows)  # [sum exp, target logit, sum exp * logit]
    if shard.n_valid > 0:
        _shift(x, row_max)
        idx, in_shard = _local_targets(targets, shard)
        stats[1] = torch.where(in_shard, x.gather(1, idx).squeeze(1), stats[1])
        if compute_entropy:
            e = torch.exp(x)
            stats[0] = e.sum(dim=1)
            stats[2] = e.mul_(x).sum(dim=1)
        else:
            stats[0] = x.exp_().sum(dim=1)
    _all_reduce(stats, shard, dist.ReduceOp.SUM)
    sum_exp, target, sum_ex = stats
    live = sum_exp > 0
    safe = torch.where(live, sum_exp, torch.ones_like(sum_exp))
    log_z = torch.log(safe)
    zero = torch.zeros_like(sum_exp)
    logp = torch.where(live, target - log_z, zero)
    entropy = torch.where(live, log_z - sum_ex / safe, zero) if compute_entropy else None
    return row_max, log_z, logp, entropy, live


def _chunk_backward(x, row_max, log_z, entropy, g_logp, g_ent, targets, shard, temperature):
    """d(loss)/d(logits) of one recomputed fp32 chunk ``x`` (overwritten in place)."""
    _shift(x, row_max + log_z)  # x = log p (one pass)
    if g_ent is None:
        x.exp_().mul_(-g_logp.unsqueeze(1))
    else:
        p = torch.exp(x)
        x.add_(entropy.unsqueeze(1)).mul_(g_ent.unsqueeze(1)).add_(g_logp.unsqueeze(1))
        x.mul_(p).neg_()
    if shard.n_valid > 0:  # a rank holding only padding has no columns to touch
        idx, in_shard = _local_targets(targets, shard)
        x.scatter_add_(1, idx, torch.where(in_shard, g_logp, 0.0).unsqueeze(1))
    if temperature != 1.0:
        x.div_(temperature)
    return x


def _row_grads(grads, live, sl, compute_entropy):
    g_logp = torch.where(live[sl], grads[0][sl].float(), 0.0)
    g_ent = None
    if compute_entropy and grads[1] is not None:
        g_ent = torch.where(live[sl], grads[1][sl].float(), 0.0)
    return g_logp, g_ent


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def _forward_rows(rows_fn, targets, n, chunk_size, shard, temperature, compute_entropy):
    """Run _chunk_forward over all row chunks; ``rows_fn(sl)`` gives the chunk's raw logits."""
    out = {k: torch.empty(n, dtype=torch.float32, device=targets.device)
           for k in ("max", "logz", "logp", "ent")}
    live = torch.empty(n, dtype=torch.bool, device=targets.device)
    for sl in _chunks(n, chunk_size):
        x = _upcast(rows_fn(sl), shard, temperature)
        m, lz, lp, ent, lv = _chunk_forward(x, targets[sl], shard, compute_entropy)
        del x
        out["max"][sl], out["logz"][sl], out["logp"][sl], live[sl] = m, lz, lp, lv
        if ent is not None:
            out["ent"][sl] = ent
    return out, live


def _check_inputs(targets, shard, temperature, chunk_size):
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if targets.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= shard.real_vocab_size):
        raise ValueError(
            f"targets must lie in [0, real_vocab_size={shard.real_vocab_size}), got range "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )


class _VocabParallelLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_size, shard, compute_entropy):
        flat = logits.reshape(-1, shard.local_size)
        tflat = targets.reshape(-1)
        out, live = _forward_rows(
            lambda sl: flat[sl], tflat, flat.shape[0], chunk_size, shard, temperature,
            compute_entropy,
        )
        ctx.save_for_backward(logits, tflat, out["max"], out["logz"], out["ent"], live)
        ctx.cfg = (temperature, chunk_size, shard, compute_entropy)
        ent = out["ent"].view(targets.shape) if compute_entropy else out["ent"].new_zeros(())
        return out["logp"].view(targets.shape), ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        logits, tflat, row_max, log_z, entropy, live = ctx.saved_tensors
        temperature, chunk_size, shard, compute_entropy = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        flat = logits.reshape(-1, shard.local_size)
        grad = torch.zeros_like(flat)
        grads = (g_logp.reshape(-1), g_ent.reshape(-1) if compute_entropy else None)
        for sl in _chunks(flat.shape[0], chunk_size):
            g_lp, g_h = _row_grads(grads, live, sl, compute_entropy)
            x = _upcast(flat[sl], shard, temperature)
            gx = _chunk_backward(x, row_max[sl], log_z[sl], entropy[sl], g_lp, g_h, tflat[sl],
                                 shard, temperature)
            grad[sl, : shard.n_valid] = gx.to(grad.dtype)
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
        chunk_size: rows (tokens) per chunk; extra memory is O(chunk_size x V_local) fp32.
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
    shard = resolve_shard(logits.shape[-1], vocab_start, real_vocab_size, group)
    _check_inputs(targets, shard, temperature, chunk_size)
    logp, ent = _VocabParallelLogprobs.apply(
        logits, targets, float(temperature), int(chunk_size), shard, compute_entropy
    )
    return logp, (ent if compute_entropy else None)


class _FusedLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, shard, compute_entropy,
                allreduce_hidden_grad, fp32_weight_grad):
        w = weight[: shard.n_valid]
        out, live = _forward_rows(
            lambda sl: hidden[sl] @ w.t(), targets, hidden.shape[0], chunk_size, shard,
            temperature, compute_entropy,
        )
        ctx.save_for_backward(hidden, weight, targets, out["max"], out["logz"], out["ent"], live)
        ctx.cfg = (temperature, chunk_size, shard, compute_entropy, allreduce_hidden_grad,
                   fp32_weight_grad)
        return out["logp"], (out["ent"] if compute_entropy else out["ent"].new_zeros(()))

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, row_max, log_z, entropy, live = ctx.saved_tensors
        temperature, chunk_size, shard, compute_entropy, allreduce_hidden_grad, fp32_wgrad = \
            ctx.cfg
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nv = shard.n_valid
        w = weight[:nv]
        grad_h = torch.zeros_like(hidden) if need_h else None
        # fp32 accumulation costs a [V_local, H] fp32 buffer plus one add per chunk; the default
        # accumulates in the weight's dtype with addmm_ (fp32 math inside, one rounding per chunk).
        acc_dtype = torch.float32 if fp32_wgrad else weight.dtype
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) \
            if need_w else None
        grads = (g_logp, g_ent if compute_entropy else None)
        for sl in _chunks(hidden.shape[0], chunk_size):
            g_lp, g_h = _row_grads(grads, live, sl, compute_entropy)
            h = hidden[sl]
            x = _upcast(h @ w.t(), shard, temperature)
            gx = _chunk_backward(x, row_max[sl], log_z[sl], entropy[sl], g_lp, g_h, targets[sl],
                                 shard, temperature)
            g = gx if weight.dtype == torch.float32 else gx.to(weight.dtype)
            del x, gx
            if need_h:
                grad_h[sl] = g @ w
            if need_w:
                if g.dtype == acc_dtype:
                    grad_w[:nv].addmm_(g.t(), h)
                else:
                    grad_w[:nv].add_(g.t() @ h.to(g.dtype))
        if need_h and allreduce_hidden_grad:
            # hidden is replicated over TP; each rank saw only its vocab shard.
            _all_reduce(grad_h, shard, dist.ReduceOp.SUM)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None


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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropy) of ``targets`` under ``softmax(hidden @ weight.T / temperature)``
    without ever materialising the logits: they are computed, reduced and dropped per chunk.

    Args:
        hidden: ``[B, T, H]``, or ``[T, B, H]`` (Megatron layout) with ``sequence_first=True``;
            replicated over the TP group (no sequence parallelism).
        weight: ``[V_local, H]``, this rank's vocab shard of the output layer (no bias).
        targets: ``[B, T]`` global token ids.
        allreduce_hidden_grad: sum d/d hidden over the TP group in the backward (what Megatron's
            ``copy_to_tensor_model_parallel_region`` does). Set False if the caller already
            routes ``hidden`` through such a region.
        fp32_weight_grad: accumulate the weight grad over chunks in an fp32 buffer (one
            rounding at the end) instead of in the weight's dtype (one rounding per chunk, no
            extra [V_local, H] fp32 buffer). No effect for fp32 weights.
        Other arguments: as in :func:`vocab_parallel_logprobs`.

    Returns:
        ``(logprobs, entropy or None)``, fp32 ``[B, T]``. Gradients flow to ``hidden`` and
        ``weight``.
    """
    if hidden.dim() != 3 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"expected hidden [B, T, H] / [T, B, H] and weight [V_local, H], got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    rows = hidden.shape[:2] if not sequence_first else hidden.shape[1::-1]
    if tuple(rows) != tuple(targets.shape):
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)} "
            f"(sequence_first={sequence_first})"
        )
    shard = resolve_shard(weight.shape[0], vocab_start, real_vocab_size, group)
    _check_inputs(targets, shard, temperature, chunk_size)
    tgt = targets.t() if sequence_first else targets
    logp, ent = _FusedLinearLogprobs.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, tgt.reshape(-1), float(temperature),
        int(chunk_size), shard, compute_entropy, allreduce_hidden_grad, fp32_weight_grad,
    )

    def back(t):
        t = t.view(tgt.shape)
        return t.t() if sequence_first else t

    return back(logp), (back(ent) if compute_entropy else None)
