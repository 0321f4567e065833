"""Row-wise softmax statistics and gradients over a vocab-parallel chunk of logits.

The two kernels shared by :mod:`r1vfree_mcore.grpo.logprobs` and
:mod:`r1vfree_mcore.grpo.fused_linear`: :func:`chunk_stats` (forward: per-row max, log-normaliser,
target log-prob, entropy) and :func:`chunk_grad` (backward: d loss / d logits of the chunk).

Each tensor-parallel (TP) rank holds ``V_local`` vocab columns, the global ids
``[start, start + V_local)``; ids ``>= real_vocab_size`` are Megatron's vocab padding and are
excluded (treated as ``-inf``). Per chunk of rows there are two TP all-reduces: MAX of the local
row maxima, then one SUM of the stacked, rescaled ``[sum exp, target logit, sum p*logit]``.

Why row blocks: on the CPU, a fresh fp32 copy of a ``[rows, V]`` chunk costs a page fault per
4 KiB and every fp32 pass over it streams it through memory. Both kernels therefore walk the
chunk ``block`` rows at a time through one reused fp32 scratch (at most 64 MiB), reading the
raw (e.g. bf16) logits once and, in the backward, writing the gradient once. The
statistics of a block are local (own max), so one pass suffices; the TP combine rescales them
by ``exp(local max - global max)``. On CUDA a block is the whole chunk (fewer kernel launches).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Logits shifted by the row max are clamped here so that -inf never meets 0 * inf in fp32.
NEG_BIG = -1e30
# fp32 elements per CPU row block (64 MiB, 105 rows at V=151,936). Measured on the shared 2-core
# EPYC VM, fwd + bwd of one 1024 x 151,936 bf16 chunk: whole-chunk fp32 passes (the previous
# version) 0.86 s wall at best; 16-32-row blocks 0.21 s on a quiet machine but a 3.9 s median
# under load ~13 (each op is a parallel region that waits for both threads, and small blocks
# mean thousands of them); 131-row blocks 1.0 s median under the same load.
_CPU_BLOCK_ELEMS = 16_000_000


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


def check_inputs(targets: torch.Tensor, shard: VocabShard, temperature: float,
                 chunk_size: int) -> None:
    """Reject a non-positive temperature / chunk size and non-integer or out-of-range targets."""
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


def all_reduce(t: torch.Tensor, shard: VocabShard, op) -> torch.Tensor:
    """In-place all-reduce over the TP group (no-op at TP=1)."""
    if shard.world > 1:
        dist.all_reduce(t, op=op, group=shard.group)
    return t


def chunks(n: int, size: int):
    """Row slices of at most ``size`` rows covering ``range(n)``."""
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def row_grads(g_logp: torch.Tensor, g_ent: torch.Tensor | None, live: torch.Tensor, sl: slice):
    """fp32 upstream grads of rows ``sl``, zeroed on dead rows (``g_ent`` may be None)."""
    gl = torch.where(live[sl], g_logp[sl].float(), 0.0)
    ge = None if g_ent is None else torch.where(live[sl], g_ent[sl].float(), 0.0)
    return gl, ge


@dataclass
class RowStats:
    """Per-row results of :func:`chunk_stats` (fp32 ``[rows]``). ``shift`` is the global row
    max of the tempered logits (0 for dead rows), ``log_z`` the log-normaliser relative to it,
    ``live`` marks rows with at least one finite logit."""

    shift: torch.Tensor
    log_z: torch.Tensor
    logp: torch.Tensor
    entropy: torch.Tensor | None
    live: torch.Tensor


class StatsTable:
    """Per-row forward results of a whole call, filled chunk by chunk (fp32 / bool ``[n]``)."""

    def __init__(self, n: int, device: torch.device):
        self.shift, self.log_z, self.logp, self.entropy = (
            torch.zeros(n, dtype=torch.float32, device=device) for _ in range(4))
        self.live = torch.zeros(n, dtype=torch.bool, device=device)

    def put(self, sl: slice, st: RowStats) -> None:
        """Store the results of the chunk of rows ``sl``."""
        for k in ("shift", "log_z", "logp", "live"):
            getattr(self, k)[sl] = getattr(st, k)
        if st.entropy is not None:
            self.entropy[sl] = st.entropy

    def for_backward(self) -> tuple[torch.Tensor, ...]:
        """What the backward needs: ``(shift, log_z, entropy, live)``."""
        return self.shift, self.log_z, self.entropy, self.live


class Scratch:
    """Reusable fp32 row-block buffers for one call (allocated once, <= 64 MiB each on the CPU)."""

    def __init__(self, rows: int, shard: VocabShard, device: torch.device, n_buffers: int):
        nv = max(shard.n_valid, 1)
        self.block = rows if device.type == "cuda" else max(1, min(rows, _CPU_BLOCK_ELEMS // nv))
        self.bufs = [torch.empty(self.block, nv, dtype=torch.float32, device=device)
                     for _ in range(n_buffers)]


def _local_targets(targets: torch.Tensor, shard: VocabShard):
    local = targets - shard.start
    in_shard = (local >= 0) & (local < shard.n_valid)
    return local.clamp(0, max(shard.n_valid - 1, 0)).unsqueeze(1), in_shard


def _load(scratch: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """fp32 copy of a raw block (the caller's logits are never modified)."""
    return scratch[: z.shape[0]].copy_(z)


def _affine_(x: torch.Tensor, scale: float, offset: torch.Tensor) -> torch.Tensor:
    """``x = x * scale - offset`` in place, one pass (``offset`` is ``[rows, 1]``)."""
    if scale == 1.0:
        return x.sub_(offset)
    return torch.addcmul(-offset, x, x.new_full((), scale), out=x)


def _safe(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def chunk_stats(z: torch.Tensor, targets: torch.Tensor, shard: VocabShard, temperature: float,
                compute_entropy: bool, scratch: Scratch) -> RowStats:
    """Global row statistics of a raw chunk ``z`` ``[rows, >= n_valid]`` (not modified)."""
    rows, nv = z.shape[0], shard.n_valid
    dev, inv_t = z.device, 1.0 / temperature
    local_max = torch.full((rows,), float("-inf"), dtype=torch.float32, device=dev)
    # [sum exp, target logit, sum exp * logit], all relative to the local row max
    stats = torch.zeros(3, rows, dtype=torch.float32, device=dev)
    idx, in_shard = _local_targets(targets, shard)
    if nv > 0:
        for b in chunks(rows, scratch.block):
            x = _load(scratch.bufs[0], z[b, :nv])
            # max(z) / T is max(z / T) (T > 0): no pass to scale before the max
            m = x.amax(dim=1).mul_(inv_t)
            local_max[b] = m
            x = _affine_(x, inv_t, _safe(m).unsqueeze(1))  # z / T - max
            if compute_entropy:
                x.clamp_(min=NEG_BIG)  # -inf * 0 would be NaN in the dot product below
                e = torch.exp(x, out=scratch.bufs[1][: x.shape[0]])
                stats[0, b] = e.sum(dim=1)
                # row-wise dot product without a [rows, V] temporary
                stats[2, b] = torch.bmm(e.unsqueeze(1), x.unsqueeze(2)).view(-1)
            else:
                stats[0, b] = x.exp_().sum(dim=1)
        # the target logit straight from the raw chunk: same value as x before the shift
        tgt = z[:, :nv].gather(1, idx).squeeze(1).float()
        if temperature != 1.0:
            tgt = tgt.mul_(inv_t)
        stats[1] = torch.where(in_shard, (tgt - _safe(local_max)).clamp_(min=NEG_BIG), 0.0)
    global_max = all_reduce(local_max.clone(), shard, dist.ReduceOp.MAX)
    shift = _safe(global_max)
    delta = _safe(local_max) - shift  # <= 0 wherever this rank has a finite logit
    scale = torch.where(stats[0] > 0, torch.exp(delta), 0.0)
    stats[2] = (stats[2] + delta * stats[0]) * scale
    stats[0] *= scale
    stats[1] = torch.where(in_shard, stats[1] + delta, 0.0)
    all_reduce(stats, shard, dist.ReduceOp.SUM)
    sum_exp, target, sum_ex = stats
    live = sum_exp > 0
    safe = torch.where(live, sum_exp, torch.ones_like(sum_exp))
    log_z = torch.log(safe)
    zero = torch.zeros_like(sum_exp)
    logp = torch.where(live, target - log_z, zero)
    entropy = torch.where(live, log_z - sum_ex / safe, zero) if compute_entropy else None
    return RowStats(shift, log_z, logp, entropy, live)


def chunk_grad(z: torch.Tensor, out: torch.Tensor, shift: torch.Tensor, log_z: torch.Tensor,
               entropy: torch.Tensor | None, g_logp: torch.Tensor, g_ent: torch.Tensor | None,
               targets: torch.Tensor, shard: VocabShard, temperature: float,
               scratch: Scratch) -> None:
    """Write d loss / d z of a raw chunk into ``out[:, :n_valid]`` (``out`` may be ``z``).

    With ``z`` tempered by ``1/T``, ``log p = z/T - shift - log_z`` and
    ``dz = (g_logp (onehot - p) - g_ent p (log p + H)) / T``; ``g_*`` are fp32 ``[rows]``
    (zero on dead rows).
    """
    nv = shard.n_valid
    if nv == 0:  # a rank holding only padding has no columns to touch
        return
    inv_t = 1.0 / temperature
    offset = (shift + log_z).unsqueeze(1)
    # per-row factors with 1/T folded in: dz = p * (a * log p + c) + onehot * g_logp / T
    a = None if g_ent is None else (-inv_t * g_ent).unsqueeze(1)
    c = (-inv_t * (g_logp if g_ent is None else g_logp + g_ent * entropy)).unsqueeze(1)
    idx, in_shard = _local_targets(targets, shard)
    hit = torch.where(in_shard, g_logp * inv_t, 0.0).unsqueeze(1)
    for b in chunks(z.shape[0], scratch.block):
        x = _affine_(_load(scratch.bufs[0], z[b, :nv]), inv_t, offset[b])  # log p
        if a is None:  # exp(-inf) = 0: no clamp needed
            x.exp_().mul_(c[b])
        else:  # log p = -inf must not meet p = 0 in the product
            p = torch.exp(x.clamp_(min=NEG_BIG), out=scratch.bufs[1][: x.shape[0]])
            x.mul_(a[b]).add_(c[b]).mul_(p)
        x.scatter_add_(1, idx[b], hit[b])
        out[b, :nv].copy_(x)
