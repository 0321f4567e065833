"""Pure tensor-by-tensor transforms between HF Qwen-VL weights and megatron-core shards.

Two independent steps, each a small function keyed by a name used in the weight-map tables:

* ``convert`` -- HF tensors <-> one full (TP=1) megatron tensor: 'copy', 'qkv' (fuse q/k/v per
  KV group), 'vision_qkv' (HF fused ``[Q_all; K_all; V_all]`` -> per-head ``[q_h; k_h; v_h]``),
  'gate_up' (``cat(gate, up)``), 'vocab' (pad rows to the padded vocab), 'patch' (Conv3d kernel
  -> linear over the flattened patch).
* ``split`` -- full megatron tensor <-> this TP rank's shard: 'replicated', 'dim0', 'dim1',
  'gate_up' (shard i = ``cat(gate.chunk(tp)[i], up.chunk(tp)[i])``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QKVShape:
    """Head layout needed to fuse / unfuse an attention QKV projection."""

    heads: int
    groups: int  # KV heads (== heads for the vision tower)
    head_dim: int


@dataclass(frozen=True)
class ConvertCtx:
    """What the converters need besides the tensors."""

    text_qkv: QKVShape
    vision_qkv: QKVShape
    vocab_size: int  # real vocab (HF rows)
    padded_vocab_size: int  # megatron rows at TP=1 (padded for the run's TP)


def _qkv_fuse(q, k, v, s: QKVShape):
    per = s.heads // s.groups
    rest = q.shape[1:]
    q = q.reshape(s.groups, per * s.head_dim, *rest)
    k = k.reshape(s.groups, s.head_dim, *rest)
    v = v.reshape(s.groups, s.head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _qkv_unfuse(t, s: QKVShape):
    per = s.heads // s.groups
    rest = t.shape[1:]
    t = t.reshape(s.groups, (per + 2) * s.head_dim, *rest)
    q, k, v = t.split([per * s.head_dim, s.head_dim, s.head_dim], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def hf_to_megatron(convert: str, hf: list[torch.Tensor], ctx: ConvertCtx) -> torch.Tensor:
    """Full megatron tensor from the rule's HF tensors."""
    if convert == "copy":
        return hf[0]
    if convert == "qkv":
        return _qkv_fuse(*hf, ctx.text_qkv)
    if convert == "vision_qkv":
        return _qkv_fuse(*hf[0].chunk(3, dim=0), ctx.vision_qkv)
    if convert == "gate_up":
        return torch.cat(hf, dim=0)
    if convert == "vocab":
        w = hf[0]
        pad = ctx.padded_vocab_size - w.shape[0]
        return torch.cat([w, w.new_zeros(pad, *w.shape[1:])]) if pad > 0 else w
    if convert == "patch":
        return hf[0].reshape(hf[0].shape[0], -1)
    raise KeyError(f"unknown convert kind {convert!r}")


def megatron_to_hf(convert: str, full: torch.Tensor, ctx: ConvertCtx, hf_shapes=None) -> list[torch.Tensor]:
    """The rule's HF tensors from a full megatron tensor (inverse of :func:`hf_to_megatron`)."""
    if convert == "copy":
        return [full]
    if convert == "qkv":
        return list(_qkv_unfuse(full, ctx.text_qkv))
    if convert == "vision_qkv":
        return [torch.cat(_qkv_unfuse(full, ctx.vision_qkv), dim=0)]
    if convert == "gate_up":
        return list(full.chunk(2, dim=0))
    if convert == "vocab":
        return [full[: ctx.vocab_size]]
    if convert == "patch":
        return [full.reshape(hf_shapes[0]) if hf_shapes else full]
    raise KeyError(f"unknown convert kind {convert!r}")


def split_tp(split: str, full: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    """This TP rank's shard of a full megatron tensor."""
    if split == "replicated" or tp == 1:
        return full
    if split == "dim0":
        return full.chunk(tp, dim=0)[rank]
    if split == "dim1":
        return full.chunk(tp, dim=1)[rank]
    if split == "gate_up":
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    raise KeyError(f"unknown split kind {split!r}")


def merge_tp(split: str, shards: list[torch.Tensor]) -> torch.Tensor:
    """Full megatron tensor from all TP ranks' shards (inverse of :func:`split_tp`)."""
    if split == "replicated" or len(shards) == 1:
        return shards[0]
    if split == "dim0":
        return torch.cat(shards, dim=0)
    if split == "dim1":
        return torch.cat(shards, dim=1)
    if split == "gate_up":
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    raise KeyError(f"unknown split kind {split!r}")
