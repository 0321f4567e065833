"""Qwen-VL vision tower on megatron-core layers: patch embed, 2-D rope, blocks, patch merger.

Both families share this module; :class:`VisionDims` carries the differences (norm, gated MLP,
activation, Qwen2.5-VL window attention). Input ``pixel_values`` are HF's flattened patches
``[N, C*T*P*P]``; the Conv3d patch embedding is the equivalent linear over that vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import build_module

from r1vfree_mcore.models.common.configs import merger_config, vision_config
from r1vfree_mcore.models.common.vision_dims import VisionDims
from r1vfree_mcore.models.common.layer_spec import mlp_spec, transformer_layer_spec
from r1vfree_mcore.models.common.repeats import collapse_repeats


def vision_position_ids(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(h, w) patch coordinates ``[N, 2]`` in HF's merge-block-major patch order."""
    out = []
    for t, h, w in grid_thw.tolist():
        hpos, wpos = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        hpos = hpos.reshape(shape).transpose(1, 2).flatten()
        wpos = wpos.reshape(shape).transpose(1, 2).flatten()
        out.append(torch.stack([hpos, wpos], dim=-1).repeat(t, 1))
    return torch.cat(out, dim=0)


def frame_cu_seqlens(grid_thw: torch.Tensor) -> torch.Tensor:
    """Cumulative patch counts, one segment per frame (full attention within an image frame)."""
    seqlens = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    return F.pad(seqlens.cumsum(0), (1, 0))


def window_index(grid_thw: torch.Tensor, merge: int, window_px: int, patch: int):
    """Qwen2.5-VL windows: (order of merged tokens grouped by window, cumulative window lengths in patches)."""
    win = window_px // merge // patch  # merged tokens per window side
    unit = merge * merge
    order, cu, base = [], [0], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        idx = torch.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = (win - gh % win) % win, (win - gw % win) % win
        nh, nw = (gh + ph) // win, (gw + pw) // win
        padded = F.pad(idx, (0, pw, 0, ph), value=-1)
        padded = padded.reshape(t, nh, win, nw, win).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
        counts = (padded >= 0).sum(-1).reshape(-1)
        flat = padded.reshape(-1)
        order.append(flat[flat >= 0] + base)
        for c in counts.tolist():
            if c:  # empty windows add no segment
                cu.append(cu[-1] + c * unit)
        base += t * gh * gw
    return torch.cat(order), torch.tensor(cu)


def repeated_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor, sizes: list[int]):
    """Collapse runs of identical consecutive images: ``(keep, inverse)`` with ``keep`` the index
    of each run's first image and ``inverse[i]`` the position in ``keep`` of image ``i``'s run.

    Images are equal when their grids and patch rows are (``torch.equal``: a cheap pass over the
    pixels compared with encoding them).
    """
    chunks = torch.split(pixel_values, sizes)
    return collapse_repeats(
        len(sizes), lambda i, j: torch.equal(grid_thw[i], grid_thw[j]) and torch.equal(chunks[i], chunks[j]))


class VisionRotary(torch.nn.Module):
    """2-D rope: half the rotary dims follow the row, half the column (HF's axial layout)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        spatial = head_dim // 2
        # On the CPU even under a meta-device build (the converters'): a buffer, not a weight.
        inv = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float, device="cpu") / spatial))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """Angles ``[N, 1, 1, head_dim]`` for megatron's (non-interleaved) rope."""
        freqs = pos[..., None].float() * self.inv_freq  # [N, 2, head_dim/4]
        hw = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)
        return torch.cat([hw, hw], dim=-1)[:, None, None, :]


class PatchMerger(MegatronModule):
    """Norm over each patch, concat merge^2 neighbours, MLP (fc1 column-, fc2 row-parallel)."""

    def __init__(self, dims: VisionDims, backend, tp: int, params_dtype):
        cfg = merger_config(dims, tp, params_dtype)
        super().__init__(config=cfg)
        self.merged = dims.merged_hidden
        self.ln_q = build_module(backend.norm, config=cfg, hidden_size=dims.hidden, eps=1e-6)
        self.mlp = build_module(mlp_spec(backend), config=cfg, input_size=self.merged, ffn_hidden_size=self.merged)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_q(x).reshape(-1, 1, self.merged)
        out, bias = self.mlp(x)
        if bias is not None:
            out = out + bias
        return out[:, 0]


class VisionTower(MegatronModule):
    """Vision encoder: ``(pixel_values [N, patch_dim], grid_thw [I, 3]) -> [N / merge^2, out_hidden]``."""

    def __init__(self, dims: VisionDims, backend, tp: int, params_dtype=torch.float32):
        cfg = vision_config(dims, tp, params_dtype)
        super().__init__(config=cfg)
        self.dims = dims
        self.backend = backend
        # Replicated on every TP rank: it is small and its output feeds column-parallel QKV.
        self.patch_embed = torch.nn.Linear(dims.patch_dim, dims.hidden, bias=False, dtype=params_dtype)
        self.rotary = VisionRotary(dims.head_dim, dims.rope_theta)
        spec = transformer_layer_spec(backend, backend.vision_mask_type)
        self.blocks = torch.nn.ModuleList(
            [build_module(spec, config=cfg, layer_number=i + 1) for i in range(dims.depth)]
        )
        self.merger = PatchMerger(dims, backend, tp, params_dtype)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged features ``[sum(t*h*w) / merge^2, out_hidden]``, images in order.

        A run of identical consecutive images (GRPO's G copies of a prompt's image) is encoded
        once and its features repeated: the same values, and in training the copies' gradients
        add up through the repeat, as they would over separate copies.
        """
        grid_thw = grid_thw.cpu()
        sizes = grid_thw.prod(-1).tolist()
        keep, inverse = repeated_images(pixel_values, grid_thw, sizes) if len(sizes) > 1 else ([0], [0])
        if len(keep) == len(sizes):
            return self._features(pixel_values, grid_thw)
        chunks = torch.split(pixel_values, sizes)
        feats = self._features(torch.cat([chunks[i] for i in keep]), grid_thw[keep])
        unit = self.dims.spatial_merge_size**2
        parts = torch.split(feats, [sizes[i] // unit for i in keep])
        return torch.cat([parts[j] for j in inverse])

    def _features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        # A frozen encoder keeps no activations for backward (the merger may still train).
        trainable = any(p.requires_grad for n, p in self.named_parameters() if not n.startswith("merger."))
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            hidden, order = self._encode(pixel_values, grid_thw)
        merged = self.merger(hidden)
        if order is not None:
            merged = merged[torch.argsort(order)]
        return merged

    def _encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """Patch embed + blocks: ``[N, hidden]`` (in window order for Qwen2.5-VL) and that order."""
        d = self.dims
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        rope = self.rotary(vision_position_ids(grid_thw, d.spatial_merge_size).to(x.device))
        full_mask = self.backend.vision_mask(frame_cu_seqlens(grid_thw)).to(x.device)
        order = None
        if d.window_size is not None:
            order, cu_win = window_index(grid_thw, d.spatial_merge_size, d.window_size, d.patch_size)
            order = order.to(x.device)
            window_mask = self.backend.vision_mask(cu_win).to(x.device)
            x = self._permute(x, order)
            rope = self._permute(rope, order)
        hidden = x.unsqueeze(1)  # [N, 1, hidden]: megatron's [s, b, h]
        for i, block in enumerate(self.blocks):
            windowed = order is not None and i not in d.fullatt_block_indexes
            hidden, _ = block(hidden, attention_mask=window_mask if windowed else full_mask, rotary_pos_emb=rope)
        return hidden[:, 0], order

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """dist_checkpointing view: each block through its own (TP-aware) sharded_state_dict.

        The default would treat the ``blocks`` ModuleList as a plain module (replicated tensors,
        local shapes), which breaks resharding across TP sizes.
        """
        from megatron.core import parallel_state
        from megatron.core.transformer.utils import sharded_state_dict_default

        tp_group = parallel_state.get_tensor_model_parallel_group()  # replica ids of replicated tensors
        out = {}
        for name, module in self.named_children():
            if name == "blocks":
                for i, block in enumerate(module):
                    out.update(block.sharded_state_dict(f"{prefix}blocks.{i}.", sharded_offsets, metadata))
            else:
                out.update(sharded_state_dict_default(module, f"{prefix}{name}.", sharded_offsets, metadata, tp_group))
        return out

    def _permute(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Reorder groups of merge^2 patches (one merged token each) by ``order``."""
        unit = self.dims.spatial_merge_size**2
        return x.reshape(x.shape[0] // unit, unit, *x.shape[1:])[order].reshape(x.shape)
