"""HF <-> Megatron checkpoint conversion for Qwen2-VL / Qwen2.5-VL (streaming, any TP/PP).

Public API: :func:`hf_to_mcore`, :func:`hf_to_mcore_many`, :func:`mcore_to_hf`, :func:`export_hf`
(the trainer's HF export), :class:`ConversionError`. CLI: ``python -m r1vfree_mcore.conversion.cli`` (``r1vfree-convert``).
"""

from r1vfree_mcore.conversion.errors import ConversionError

__all__ = ["ConversionError", "export_hf", "hf_to_mcore", "hf_to_mcore_many", "mcore_to_hf"]


def __getattr__(name):  # lazy: importing the package must not import megatron / transformers
    if name in ("hf_to_mcore", "hf_to_mcore_many"):
        from r1vfree_mcore.conversion import to_mcore

        return getattr(to_mcore, name)
    if name in ("mcore_to_hf", "export_hf"):
        from r1vfree_mcore.conversion import to_hf

        return getattr(to_hf, name)
    raise AttributeError(name)
