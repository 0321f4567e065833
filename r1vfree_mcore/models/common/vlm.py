"""The Qwen-VL policy model for one pipeline stage, and :func:`build_model`.

Stage layout: the vision tower and the token embedding live on the first stage (image features
are scattered into the ``<|image_pad|>`` embeddings there); decoder layers are split across
stages (``ParallelConfig.pp_layer_split`` or evenly); the output layer is on the last stage.
"""

from __future__ import annotations

import math

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.module import MegatronModule

from r1vfree_mcore.models.backends import get_backend
from r1vfree_mcore.models.common.configs import decoder_config
from r1vfree_mcore.models.common.hf_config import family_of, rope_params, text_config, tied_embeddings
from r1vfree_mcore.models.common.inference import cached_decoder_mask
from r1vfree_mcore.models.common.layer_spec import transformer_layer_spec
from r1vfree_mcore.models.common.prefix_rows import plan_prefix_rows
from r1vfree_mcore.models.common.rope_index import get_rope_index
from r1vfree_mcore.models.common.vision import VisionTower
from r1vfree_mcore.models.common.vision_dims import vision_dims_of
from r1vfree_mcore.parallel.state import ParallelConfig

MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128


def padded_vocab_size(vocab: int, tp: int, divisible_by: int = MAKE_VOCAB_SIZE_DIVISIBLE_BY) -> int:
    """Megatron's vocab padding: round up to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab / multiple) * multiple)


def stage_layer_counts(num_layers: int, cfg: ParallelConfig) -> list[int]:
    """Decoder layers per pipeline stage (explicit split or as even as megatron makes it)."""
    if cfg.pp > num_layers:
        raise ValueError(f"parallel.pp={cfg.pp} exceeds text_config.num_hidden_layers={num_layers}")
    if cfg.pp_layer_split is not None:
        split = list(cfg.pp_layer_split)
        if sum(split) != num_layers:
            raise ValueError(
                f"parallel.pp_layer_split={tuple(split)} sums to {sum(split)}, "
                f"but text_config.num_hidden_layers={num_layers}"
            )
        if min(split) < 1:
            raise ValueError(f"parallel.pp_layer_split={tuple(split)}: every stage needs >= 1 layer")
        return split
    if num_layers % cfg.pp:
        raise ValueError(
            f"text_config.num_hidden_layers={num_layers} is not divisible by parallel.pp={cfg.pp}; "
            "set parallel.pp_layer_split"
        )
    return [num_layers // cfg.pp] * cfg.pp


def validate(hf_config, cfg: ParallelConfig) -> None:
    """Fail fast on layouts the weights cannot be sharded into; messages name the field."""
    tc = text_config(hf_config)
    dims = vision_dims_of(hf_config)
    checks = [
        ("text_config.num_attention_heads", tc.num_attention_heads),
        ("text_config.num_key_value_heads", tc.num_key_value_heads),
        ("text_config.intermediate_size", tc.intermediate_size),
        ("vision_config.num_heads", dims.heads),
        ("vision MLP hidden (vision_config)", dims.ffn_hidden),
        ("vision merger hidden (vision_config hidden x spatial_merge_size^2)", dims.merged_hidden),
    ]
    for field, value in checks:
        if value % cfg.tp:
            raise ValueError(f"{field}={value} is not divisible by parallel.tp={cfg.tp}")
    stage_layer_counts(tc.num_hidden_layers, cfg)


class QwenVLModel(MegatronModule):
    """One pipeline stage of Qwen2-VL / Qwen2.5-VL.

    ``forward`` returns vocab-parallel logits ``[b, s, padded_vocab / tp]`` on the last stage
    (not gathered over TP; the padded vocab columns are included: slice ``[..., :vocab]`` after
    gathering, or mask them in a vocab-parallel loss) and hidden states ``[s, b, hidden]`` to
    send to the next stage otherwise.
    """

    def __init__(self, hf_config, cfg: ParallelConfig, backend, params_dtype=torch.float32,
                 pre_process: bool = True, post_process: bool = True, decoder_overrides=None):
        tc = text_config(hf_config)
        dcfg = decoder_config(hf_config, cfg.tp, cfg.pp, cfg.pp_layer_split, params_dtype, decoder_overrides)
        super().__init__(config=dcfg)
        self.hf_config = hf_config
        self.model_type = ModelType.encoder_or_decoder  # read by megatron's schedules
        self.family = family_of(hf_config)
        self.backend = backend
        self.pre_process, self.post_process = pre_process, post_process
        self.image_token_id = hf_config.image_token_id
        self.vocab_size = tc.vocab_size
        self.padded_vocab_size = padded_vocab_size(tc.vocab_size, cfg.tp)
        self.vision = VisionTower(vision_dims_of(hf_config), backend, cfg.tp, params_dtype) if pre_process else None
        theta, _ = rope_params(hf_config)
        self.language_model = GPTModel(
            dcfg,
            transformer_layer_spec(backend, backend.decoder_mask_type),
            vocab_size=self.padded_vocab_size,
            max_sequence_length=tc.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=tied_embeddings(hf_config),
            position_embedding_type="mrope",
            rotary_base=theta,
        )
        # The layer offset of this stage, for mapping local decoder indices to HF indices.
        counts = stage_layer_counts(tc.num_hidden_layers, cfg)
        self.layer_offset = sum(counts[: parallel_state.get_pipeline_model_parallel_rank()])

    # megatron's finalize_model_grads all-reduces the tied embedding / output-layer grads between
    # the first and last stage through these two (it finds this module by `pre_process`).
    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        """The embedding (first stage) or tied output-layer copy (last stage), else None."""
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        """Hidden states received from the previous stage (megatron schedules call this)."""
        self.language_model.set_input_tensor(input_tensor)

    def forward(self, input_ids, position_ids=None, attention_mask=None, pixel_values=None, image_grid_thw=None,
                inference_context=None,
                packed_seq_params=None):
        """Logits ``[b, s, padded_vocab/tp]`` (last stage) or hidden states ``[s, b, h]`` (others).

        ``attention_mask`` is HF's ``[b, s]`` 1/0 padding mask; ``position_ids`` ``[3, b, s]`` are
        computed with :func:`get_rope_index` when None (every stage needs ``input_ids``,
        ``image_grid_thw`` and ``attention_mask`` for that; ``pixel_values`` only the first).
        ``packed_seq_params``: a packed row instead of a padded batch (see ``_forward_packed``).

        With ``inference_context`` (a megatron static KV-cache context, see
        :mod:`r1vfree_mcore.models.common.inference`): ``input_ids`` are the new tokens only,
        ``attention_mask`` ``[b, cached + s]`` and ``position_ids`` ``[3, b, cached + s]`` cover
        every key so far (required), and the last stage returns the last position's logits
        gathered over TP ``[b, 1, padded_vocab]``.
        """
        b, s = input_ids.shape
        if packed_seq_params is not None:  # THD packing: see models/common/packing.py
            return self._forward_packed(input_ids, position_ids, pixel_values, image_grid_thw, packed_seq_params)
        if inference_context is not None:
            if position_ids is None or attention_mask is None:
                raise ValueError("forward with inference_context needs position_ids and attention_mask of every key")
            mask = cached_decoder_mask(attention_mask, s)
        else:
            if position_ids is None:
                position_ids = get_rope_index(input_ids, image_grid_thw, attention_mask, self.hf_config)
            mask = self.backend.decoder_mask(attention_mask, s, b, device=input_ids.device)
        decoder_input = None
        if self.pre_process:
            decoder_input = self.language_model.embedding(input_ids=input_ids, position_ids=None)  # [s, b, h]
            if pixel_values is not None:
                decoder_input = self._scatter_images(decoder_input, input_ids, pixel_values, image_grid_thw)
        if inference_context is not None:  # megatron requires gathered logits in inference mode
            return self.language_model(input_ids, position_ids, mask, decoder_input=decoder_input,
                                       inference_context=inference_context, runtime_gather_output=True)
        return self.language_model(input_ids, position_ids, mask, decoder_input=decoder_input)

    def _forward_packed(self, input_ids, position_ids, pixel_values, image_grid_thw, packed_seq_params):
        """Forward of one packed row ``[1, T]`` (:func:`~r1vfree_mcore.models.common.packing.pack_sequences`).

        ``position_ids`` ``[3, 1, T]`` are required (computed per sub-sequence before packing);
        the backend turns ``packed_seq_params`` into THD attention (TE) or a block-diagonal
        causal mask (local spec).
        """
        if position_ids is None or input_ids.shape[0] != 1:
            raise ValueError("packed_seq_params needs input_ids [1, T] and per-sequence position_ids [3, 1, T]")
        mask, psp = self.backend.packed_decoder_inputs(packed_seq_params)
        if psp is None and self.pre_process and self.post_process:
            # No THD attention in this backend: its stand-in mask is [T, T] (O(T^2) attention over
            # the whole micro-batch). Padded rows give the same logits for far less, and the G
            # copies of a prompt share one prefix. With PP the hidden states crossing stages stay
            # packed: mask path.
            return self._forward_packed_as_rows(input_ids, position_ids, pixel_values, image_grid_thw,
                                                packed_seq_params.cu_seqlens_q)
        decoder_input = None
        if self.pre_process:
            decoder_input = self.language_model.embedding(input_ids=input_ids, position_ids=None)
            if pixel_values is not None:
                decoder_input = self._scatter_images(decoder_input, input_ids, pixel_values, image_grid_thw)
        return self.language_model(input_ids, position_ids, mask, decoder_input=decoder_input, packed_seq_params=psp)

    def _forward_packed_as_rows(self, input_ids, position_ids, pixel_values, image_grid_thw, cu_seqlens):
        """Logits ``[1, T, V/TP]`` of a packed row computed as padded rows in which consecutive
        sequences share their common prompt prefix (:mod:`~r1vfree_mcore.models.common.prefix_rows`)."""
        c = self.config
        chunks = [] if image_grid_thw is None else list(torch.split(pixel_values, image_grid_thw.prod(-1).tolist()))
        plan = plan_prefix_rows(
            input_ids, position_ids, cu_seqlens, self.image_token_id, chunks, image_grid_thw,
            self.hf_config.vision_config.spatial_merge_size, pad_token=1 if self.image_token_id == 0 else 0,
            # Rough FLOPs: per token the QKV/proj/MLP weights, per query-key pair QK^T and PV.
            token_cost=2 * (4 * c.hidden_size**2 + 3 * c.hidden_size * c.ffn_hidden_size), pair_cost=4 * c.hidden_size,
        )
        decoder_input = self.language_model.embedding(input_ids=plan.input_ids, position_ids=None)
        if plan.images:
            decoder_input = self._scatter_images(decoder_input, plan.input_ids, torch.cat([chunks[i] for i in plan.images]),
                                                 image_grid_thw[plan.images])
        logits = self.language_model(plan.input_ids, plan.position_ids, plan.mask, decoder_input=decoder_input)
        return logits[plan.rows, plan.cols].unsqueeze(0)

    def _scatter_images(self, emb, input_ids, pixel_values, image_grid_thw):
        """Put the image features, in order, at the ``<|image_pad|>`` positions (batch-major, as HF)."""
        feats = self.vision(pixel_values, image_grid_thw).to(emb.dtype)
        where = input_ids == self.image_token_id  # [b, s]
        if int(where.sum()) != feats.shape[0]:
            raise ValueError(
                f"{int(where.sum())} <|image_pad|> tokens in input_ids but {feats.shape[0]} image features "
                "from pixel_values/image_grid_thw"
            )
        out = emb.transpose(0, 1).masked_scatter(where[..., None], feats)  # emb is [s, b, h]
        return out.transpose(0, 1).contiguous()


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Set this TP rank's padded-vocab columns (global index >= ``vocab_size``) to -inf.

    Megatron pads the output layer to a multiple of 128 x TP rows; those logits are real numbers
    (0 after loading HF weights) and would leak probability mass into a softmax / log-prob.
    """
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    width = logits.shape[-1]
    col = torch.arange(width, device=logits.device) + tp_rank * width
    return logits.masked_fill(col >= vocab_size, float("-inf"))


def build_model(hf_config, parallel_cfg: ParallelConfig, spec: str = "local", *, freeze_vision: bool = False,
                freeze_merger: bool = False, params_dtype: torch.dtype = torch.float32,
                decoder_overrides: dict | None = None) -> QwenVLModel:
    """This rank's pipeline stage of the policy (megatron parallel state must be initialised).

    ``spec``: 'local', 'local_sdpa' or 'transformer_engine' (falls back to local_sdpa, with a
    warning, without TE).
    ``freeze_vision`` freezes the vision blocks and patch embedding, ``freeze_merger`` the merger:
    frozen parameters have ``requires_grad=False`` (no grads; build optimizers over trainable ones).
    ``decoder_overrides``: run-time TransformerConfig fields of the decoder (activation
    recompute, ``variable_seq_lengths``, ...); architecture fields are rejected.
    """
    validate(hf_config, parallel_cfg)
    for name, have in (("tp", parallel_state.get_tensor_model_parallel_world_size()),
                       ("pp", parallel_state.get_pipeline_model_parallel_world_size())):
        if getattr(parallel_cfg, name) != have:
            raise ValueError(f"parallel.{name}={getattr(parallel_cfg, name)} but megatron parallel_state has {have}")
    model = QwenVLModel(
        hf_config, parallel_cfg, get_backend(spec), params_dtype,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        decoder_overrides=decoder_overrides,
    )
    if params_dtype != torch.float32:
        # Torch norms (local spec) are created in fp32 whatever params_dtype says; cast every
        # parameter (not the rope frequency buffers, which stay fp32).
        for p in model.parameters():
            p.data = p.data.to(params_dtype)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())  # patch embed / rope buffers are built on the CPU
    if model.vision is not None:
        for name, p in model.vision.named_parameters():
            frozen = freeze_merger if name.startswith("merger.") else freeze_vision
            if frozen:
                p.requires_grad_(False)
    return model
