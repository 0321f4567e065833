"""Sequence packing (THD) for training passes: variable-length rows in one row, no padding.

:func:`pack_sequences` turns a padded batch ``[b, s]`` into one packed row ``[1, T]`` holding
only the real tokens of every sequence, back to back, plus

* mrope position ids ``[3, 1, T]`` computed with :func:`get_rope_index` on **each sequence alone**
  (before packing), so every sub-sequence starts at position 0 exactly as in the padded batch;
* ``cu_seqlens`` (int32, one segment per sequence, plus one trailing padding segment when
  ``pad_to_multiple`` asks for it) for attention: TE's ``PackedSeqParams`` (``thd``) on GPU,
  an equivalent block-diagonal causal mask with the local spec (see
  :func:`packed_causal_mask`);
* a :class:`PackIndex` to map per-token outputs (logits, log-probs) back to ``[b, s]``.

Images need no remapping: rows are packed in order, so the ``<|image_pad|>`` tokens keep their
batch-major order and ``pixel_values`` / ``image_grid_thw`` are passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1vfree_mcore.models.common.rope_index import get_rope_index


@dataclass(frozen=True)
class PackIndex:
    """Where each packed token came from: ``rows[i], cols[i]`` in the padded ``[b, s]`` batch."""

    rows: torch.Tensor  # [n_real] long
    cols: torch.Tensor  # [n_real] long
    batch_shape: tuple[int, int]  # (b, s) of the padded batch
    total: int  # T, packed length including trailing pad tokens


@dataclass
class PackedBatch:
    """One packed row and what attention / unpacking need (see module doc)."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [3, 1, T]
    cu_seqlens: torch.Tensor  # [n_segments + 1] int32
    max_seqlen: int
    index: PackIndex
    image_grid_thw: torch.Tensor | None

    def packed_seq_params(self):
        """megatron-core ``PackedSeqParams`` (``qkv_format='thd'``) on ``input_ids``' device."""
        from megatron.core.packed_seq_params import PackedSeqParams

        cu = self.cu_seqlens.to(self.input_ids.device)
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                               max_seqlen_q=self.max_seqlen, max_seqlen_kv=self.max_seqlen)

    def model_kwargs(self) -> dict:
        """Keyword arguments of ``QwenVLModel.forward`` (add ``pixel_values`` on the first stage)."""
        return dict(input_ids=self.input_ids, position_ids=self.position_ids,
                    image_grid_thw=self.image_grid_thw, packed_seq_params=self.packed_seq_params())


def _grids_per_row(input_ids, attention_mask, image_grid_thw, image_token: int, merge: int) -> list:
    """Split ``image_grid_thw`` rows among the batch rows by counting each row's image tokens."""
    b = input_ids.shape[0]
    if image_grid_thw is None:
        return [None] * b
    grids = image_grid_thw.tolist()
    out, k = [], 0
    for r in range(b):
        need = int(((input_ids[r] == image_token) & attention_mask[r].bool()).sum())
        mine = []
        while need > 0:
            if k >= len(grids):
                raise ValueError(f"input_ids row {r} has more <|image_pad|> tokens than image_grid_thw covers")
            t, h, w = grids[k]
            mine.append(grids[k])
            need -= t * (h // merge) * (w // merge)
            k += 1
        if need < 0:
            raise ValueError(f"input_ids row {r}: <|image_pad|> count does not match image_grid_thw rows")
        out.append(torch.tensor(mine, dtype=image_grid_thw.dtype) if mine else None)
    if k != len(grids):
        raise ValueError(f"image_grid_thw has {len(grids)} rows but input_ids hold only {k} images")
    return out


def pack_sequences(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
                   hf_config, pad_to_multiple: int = 1, pad_token_id: int = 0) -> PackedBatch:
    """Pack the real tokens of a padded batch ``[b, s]`` into ``[1, T]`` (see module doc).

    ``pad_to_multiple``: round T up (FP8 GEMMs want multiples of 16); the extra tokens form their
    own trailing segment, so they attend only to themselves and are dropped by :func:`unpack`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [b, s], got {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError(f"rows {(lengths == 0).nonzero().flatten().tolist()} have no tokens (all padding)")
    per_row = _grids_per_row(input_ids, attention_mask, image_grid_thw, hf_config.image_token_id,
                             hf_config.vision_config.spatial_merge_size)
    ids_parts, pos_parts = [], []
    for r in range(input_ids.shape[0]):
        # Each sequence alone: its positions start at 0 whatever its neighbours hold.
        ids = input_ids[r : r + 1, keep[r]]
        pos_parts.append(get_rope_index(ids, per_row[r], None, hf_config)[:, :, :])
        ids_parts.append(ids)
    packed_ids = torch.cat(ids_parts, 1)
    position_ids = torch.cat(pos_parts, 2)
    n_real = packed_ids.shape[1]
    total = -(-n_real // pad_to_multiple) * pad_to_multiple
    seqlens = lengths.tolist()
    if total > n_real:
        extra = total - n_real
        packed_ids = F.pad(packed_ids, (0, extra), value=pad_token_id)
        position_ids = torch.cat([position_ids, torch.arange(extra).expand(3, 1, extra).to(position_ids)], 2)
        seqlens.append(extra)
    cu = F.pad(torch.tensor(seqlens, dtype=torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: the packing order
    index = PackIndex(rows=rows, cols=cols, batch_shape=tuple(input_ids.shape), total=total)
    return PackedBatch(input_ids=packed_ids, position_ids=position_ids, cu_seqlens=cu,
                       max_seqlen=max(seqlens), index=index, image_grid_thw=image_grid_thw)


def pack(x: torch.Tensor, index: PackIndex, fill=0) -> torch.Tensor:
    """Gather a padded per-token tensor ``[b, s, ...]`` into packed order ``[1, T, ...]``."""
    if tuple(x.shape[:2]) != index.batch_shape:
        raise ValueError(f"pack: tensor {tuple(x.shape)} does not start with batch shape {index.batch_shape}")
    out = x.new_full((1, index.total, *x.shape[2:]), fill)
    out[0, : len(index.rows)] = x[index.rows, index.cols]
    return out


def unpack(x: torch.Tensor, index: PackIndex, fill=0) -> torch.Tensor:
    """Scatter packed per-token outputs ``[1, T, ...]`` (logits, log-probs) back to ``[b, s, ...]``.

    Padding positions get ``fill``. Differentiable (an index-put into a fresh tensor).
    """
    if x.shape[0] != 1 or x.shape[1] != index.total:
        raise ValueError(f"unpack: expected [1, {index.total}, ...], got {tuple(x.shape)}")
    b, s = index.batch_shape
    out = x.new_full((b, s, *x.shape[2:]), fill)
    return out.index_put((index.rows, index.cols), x[0, : len(index.rows)])


def next_token_targets(input_ids: torch.Tensor, index: PackIndex, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed next-token targets ``[1, T]`` and a validity mask (False at each segment's last token)."""
    packed = pack(input_ids, index)
    targets = torch.roll(packed, -1, 1)
    valid = torch.ones_like(packed, dtype=torch.bool)
    valid[0, (cu_seqlens[1:].long() - 1)] = False
    valid[0, len(index.rows):] = False
    return torch.where(valid, targets, torch.zeros_like(targets)), valid


def packed_causal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[1, 1, T, T]`` bool (True = masked): causal within each segment, nothing across segments.

    The local spec's stand-in for THD attention (it materialises T x T: tests and small runs only).
    """
    t = int(cu_seqlens[-1])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    causal = torch.ones(t, t, dtype=torch.bool, device=cu_seqlens.device).triu(1)
    return ((seg.view(-1, 1) != seg.view(1, -1)) | causal).view(1, 1, t, t)
