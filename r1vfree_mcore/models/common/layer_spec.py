"""ModuleSpecs of a pre-norm transformer layer built from a backend's modules.

One function serves the decoder and both vision towers: the backend decides the Linear / Norm /
attention classes (local or TransformerEngine), the caller the mask type.
"""

from __future__ import annotations

from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules


def mlp_spec(backend) -> ModuleSpec:
    """Megatron MLP (fc1 column-parallel, fc2 row-parallel) with the backend's linears."""
    return ModuleSpec(
        module=MLP,
        submodules=MLPSubmodules(linear_fc1=backend.column_parallel_linear, linear_fc2=backend.row_parallel_linear),
    )


def transformer_layer_spec(backend, attn_mask_type: AttnMaskType) -> ModuleSpec:
    """norm -> self-attention (+residual) -> norm -> MLP (+residual), TP-sharded per head."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=backend.norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": attn_mask_type},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=backend.column_parallel_linear,
                    core_attention=backend.core_attention,
                    linear_proj=backend.row_parallel_linear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=_bias_dropout_add(),
            pre_mlp_layernorm=backend.norm,
            mlp=mlp_spec(backend),
            mlp_bda=_bias_dropout_add(),
        ),
    )


def _bias_dropout_add():
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

    return get_bias_dropout_add
