"""megatron-core TransformerConfigs for the Qwen-VL decoder, vision blocks and patch merger.

Every size comes from the HF config (decoder) or a family's :class:`VisionDims` (vision tower).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable

import torch
import torch.nn.functional as F
from megatron.core.activations import quick_gelu
from megatron.core.transformer import TransformerConfig

from r1vfree_mcore.models.common.hf_config import head_dim, rope_params, text_config
from r1vfree_mcore.models.common.vision_dims import VisionDims

ACTIVATIONS: dict[str, Callable] = {"quick_gelu": quick_gelu, "silu": F.silu, "gelu": F.gelu}


def eager_quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """megatron's ``quick_gelu`` without its ``torch.compile`` wrapper (see :func:`activation`)."""
    return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> Callable:
    """The activation ``name``. Without a GPU, megatron's ``torch.compile``-wrapped (``jit_fuser``)
    helpers are replaced by eager twins: on CPU a first call compiles C++ with TorchInductor
    (seconds, a g++ worker pool, ~100 MiB more peak RSS) for no measurable gain on small tensors."""
    if name == "quick_gelu" and not torch.cuda.is_available():
        return eager_quick_gelu
    return ACTIVATIONS[name]


_INIT_WEIGHTS: ContextVar[bool] = ContextVar("init_weights", default=True)


@contextlib.contextmanager
def no_weight_init():
    """Build models without initialising their weights (like transformers' ``no_init_weights``):
    for a model whose every weight is overwritten next, e.g. the converters' stages built on the
    meta device (where megatron's init would only cost time: each meta init op imports TorchDynamo)."""
    token = _INIT_WEIGHTS.set(False)
    try:
        yield
    finally:
        _INIT_WEIGHTS.reset(token)


def _common(tp: int, params_dtype: torch.dtype) -> dict[str, Any]:
    return dict(
        perform_initialization=_INIT_WEIGHTS.get(),
        tensor_model_parallel_size=tp,
        use_cpu_initialization=not torch.cuda.is_available(),
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        # The fused bias-dropout-add is torch.compile'd (see activation()). Qwen's attention and
        # MLP outputs have no bias and dropout is 0, so it is a plain residual add; on a GPU its
        # compiled version recompiled on every new decode shape (recompile limit hit in the GPU
        # check's trainer run, ~20 s lost in step 1), on the CPU it needs a compiler: eager always.
        bias_dropout_fusion=False,
    )


def decoder_config(hf_config, tp: int, pp: int, layer_split, params_dtype, overrides=None) -> TransformerConfig:
    """Config of the mrope GPT decoder (RMSNorm, SwiGLU, GQA, qkv bias).

    ``overrides``: extra TransformerConfig fields for the run (e.g. recompute_granularity,
    variable_seq_lengths); they may not change the architecture read from the HF config.
    """
    tc = text_config(hf_config)
    _, section = rope_params(hf_config)
    layout = None
    if pp > 1 and layer_split is not None:
        # Explicit per-stage layer counts, e.g. (3, 1) -> "Ettt|tL".
        layout = "|".join("t" * n for n in layer_split)
        layout = "E" + layout + "L"
    arch = dict(
        num_layers=tc.num_hidden_layers,
        hidden_size=tc.hidden_size,
        ffn_hidden_size=tc.intermediate_size,
        num_attention_heads=tc.num_attention_heads,
        num_query_groups=tc.num_key_value_heads,
        kv_channels=head_dim(tc),
        normalization="RMSNorm",
        layernorm_epsilon=tc.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=activation(getattr(tc, "hidden_act", "silu")),
        add_bias_linear=False,
        add_qkv_bias=True,
        mrope_section=section,
        pipeline_model_parallel_size=pp,
        pipeline_model_parallel_layout=layout,
    )
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & set(arch))
    if clash:
        raise ValueError(f"decoder_overrides may not set architecture fields {clash} (they come from the HF config)")
    return TransformerConfig(**arch, **{**_common(tp, params_dtype), **overrides})


def vision_config(dims: VisionDims, tp: int, params_dtype) -> TransformerConfig:
    """Config of the vision blocks (built on the first pipeline stage only, hence pp=1 here)."""
    return TransformerConfig(
        num_layers=dims.depth,
        hidden_size=dims.hidden,
        ffn_hidden_size=dims.ffn_hidden,
        num_attention_heads=dims.heads,
        num_query_groups=dims.heads,
        kv_channels=dims.head_dim,
        normalization=dims.norm,
        layernorm_epsilon=1e-6,
        gated_linear_unit=dims.gated,
        activation_func=activation(dims.activation),
        add_bias_linear=True,
        add_qkv_bias=True,
        **_common(tp, params_dtype),
    )


def merger_config(dims: VisionDims, tp: int, params_dtype) -> TransformerConfig:
    """Config of the merger MLP: merged_hidden -> merged_hidden -> out_hidden, exact GELU."""
    return TransformerConfig(
        num_layers=1,
        hidden_size=dims.out_hidden,
        ffn_hidden_size=dims.merged_hidden,
        num_attention_heads=tp,  # unused (no attention); megatron wants a multiple of TP
        normalization=dims.norm,
        layernorm_epsilon=1e-6,
        gated_linear_unit=False,
        activation_func=F.gelu,
        add_bias_linear=True,
        **_common(tp, params_dtype),
    )
