"""The TransformerEngine backend and the FP8 autocast helper; the only module that imports TE.

TE modules are used without the fused layernorm+linear variants, so parameter names are the same
as in the local spec and one HF weight map serves both (TE adds ``_extra_state`` entries only).
The decoder uses TE's ``padding_causal`` mask type with a ``[b, 1, 1, s]`` key-padding mask; the
vision tower passes its block-diagonal mask with the ``arbitrary`` type.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from r1vfree_mcore.models.common.masks import block_diagonal_mask

log = logging.getLogger(__name__)
_IMPORT_ERROR: str | None = None


@functools.lru_cache(maxsize=1)
def te_available() -> bool:
    """True when transformer_engine.pytorch imports (needs a CUDA torch and a GPU stack)."""
    global _IMPORT_ERROR
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as exc:  # ImportError, OSError (missing cudnn), RuntimeError (no CUDA)
        _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
        return False
    return True


def import_error() -> str | None:
    """Why TE did not import (None if it did or was never tried)."""
    return _IMPORT_ERROR


class TEBackend:
    """Modules and masks for the TransformerEngine spec (GPU only)."""

    name = "transformer_engine"

    def __init__(self):
        from megatron.core.extensions.transformer_engine import (
            TEColumnParallelLinear,
            TEDotProductAttention,
            TENorm,
            TERowParallelLinear,
        )
        from megatron.core.transformer.enums import AttnMaskType

        self.column_parallel_linear = TEColumnParallelLinear
        self.row_parallel_linear = TERowParallelLinear
        self.norm = TENorm
        self.core_attention = TEDotProductAttention
        self.decoder_mask_type = AttnMaskType.padding_causal
        self.vision_mask_type = AttnMaskType.arbitrary

    @staticmethod
    def decoder_mask(attention_mask: torch.Tensor | None, seq_len: int, batch: int,
                     device: torch.device | str | None = None) -> torch.Tensor | None:
        """Key-padding mask ``[b, 1, 1, s]`` bool (True = padding); TE adds the causal part."""
        if attention_mask is None:
            return torch.zeros(batch, 1, 1, seq_len, dtype=torch.bool, device=device or "cuda")
        return ~attention_mask.bool().view(batch, 1, 1, seq_len)

    vision_mask = staticmethod(block_diagonal_mask)

    @staticmethod
    def packed_decoder_inputs(packed_seq_params):
        """(None, params): TE runs THD attention over ``cu_seqlens`` (flash / fused backends)."""
        return None, packed_seq_params


def fp8_context(recipe: str | None):
    """FP8 autocast for ``recipe`` in {'delayed', 'current', None}; nullcontext without TE or recipe."""
    if recipe not in ("delayed", "current", None):
        raise ValueError(f"fp8 recipe must be 'delayed', 'current' or None, got {recipe!r}")
    if recipe is None or not te_available():
        if recipe is not None:
            log.warning("fp8 recipe %r requested but transformer_engine is not importable; running without FP8", recipe)
        return contextlib.nullcontext()
    import transformer_engine.common.recipe as te_recipe
    import transformer_engine.pytorch as te

    if recipe == "delayed":
        r = te_recipe.DelayedScaling(fp8_format=te_recipe.Format.HYBRID)
    else:
        r = te_recipe.Float8CurrentScaling(fp8_format=te_recipe.Format.HYBRID)
    return te.fp8_autocast(enabled=True, fp8_recipe=r)
