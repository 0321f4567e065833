"""Layer-spec backends: 'local' (pure torch, CPU), 'local_sdpa' (local linears, torch SDPA
attention: the GPU path without TE) and 'transformer_engine' (GPU).

:func:`get_backend` turns the spec string into a backend object. TransformerEngine is imported
only in :mod:`r1vfree_mcore.models.backends.transformer_engine`, and only when asked for.
"""

from __future__ import annotations

import logging

from r1vfree_mcore.models.backends.local import LocalBackend

log = logging.getLogger(__name__)

SPECS = ("local", "local_sdpa", "transformer_engine")


def get_backend(spec: str):
    """Backend for ``spec``; 'transformer_engine' falls back to 'local' with torch SDPA attention
    (:mod:`~r1vfree_mcore.models.backends.sdpa`, with a warning) without TE."""
    if spec == "local":
        return LocalBackend()
    if spec == "local_sdpa":
        from r1vfree_mcore.models.backends.sdpa import LocalSDPABackend

        return LocalSDPABackend()
    if spec == "transformer_engine":
        from r1vfree_mcore.models.backends import transformer_engine

        if transformer_engine.te_available():
            return transformer_engine.TEBackend()
        from r1vfree_mcore.models.backends.sdpa import LocalSDPABackend

        log.warning(
            "spec='transformer_engine' requested but transformer_engine is not importable (%s); "
            "falling back to the local spec (torch SDPA attention)",
            transformer_engine.import_error(),
        )
        return LocalSDPABackend()
    raise ValueError(f"spec must be one of {SPECS}, got {spec!r}")
