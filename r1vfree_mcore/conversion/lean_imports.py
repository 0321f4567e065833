"""Import megatron-core without the parts a converter process never uses (~2 s of start-up).

Importing ``megatron.core`` costs ~3 s here, and ~2 s of that is two things a conversion never
touches: its fused kernels are wrapped with ``torch.compile`` at import time (``megatron.core.jit``),
which pulls in TorchInductor, and its inference context imports ``wandb`` if installed. A
conversion builds models only to hold and save weights (no forward pass; ``--verify`` runs its
models in a separately spawned process), so :func:`import_megatron_lean` imports megatron-core
with ``torch.compile`` as a pass-through decorator and ``wandb`` hidden, then puts both back.
In this process megatron's fused helpers then stay plain eager functions: call it only from a
converter entry point (the ``r1vfree-convert`` CLI), never from a process that trains.
"""

from __future__ import annotations

import sys


def _passthrough_compile(model=None, **kwargs):
    """``torch.compile`` stand-in: returns the function (or a decorator that does)."""
    return model if model is not None else (lambda fn: fn)


def import_megatron_lean() -> bool:
    """Import megatron-core, its dist_checkpointing and our model code lean; False if megatron-core
    was already imported (nothing is done then)."""
    if "megatron.core" in sys.modules:
        return False
    import torch

    compile_fn, had_wandb, wandb = torch.compile, "wandb" in sys.modules, sys.modules.get("wandb")
    torch.compile = _passthrough_compile
    sys.modules["wandb"] = None  # `import wandb` raises ImportError; megatron treats it as absent
    try:
        import megatron.core  # noqa: F401
        from megatron.core import dist_checkpointing  # noqa: F401

        import r1vfree_mcore.models.common.vlm  # noqa: F401  (the megatron model modules it builds on)
    finally:
        torch.compile = compile_fn
        if had_wandb:
            sys.modules["wandb"] = wandb
        else:
            sys.modules.pop("wandb", None)
    return True
