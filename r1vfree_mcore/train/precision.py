"""The precision switch: one :class:`PrecisionPlan` from ``ModelConfig``, no forks in the trainer.

``model.precision`` (fp32 | bf16 | fp8), ``model.dtype`` (parameter dtype) and ``model.spec``
resolve to:

* ``spec``: the layer spec to build; ``transformer_engine`` without an importable TE becomes
  ``local_sdpa`` (local linears, torch SDPA attention; logged once, here and in :func:`~r1vfree_mcore.models.backends.get_backend`).
* ``params_dtype``: bf16 or fp32 parameters.
* ``autocast_dtype``: bf16 when compute is bf16/fp8 but parameters are fp32 (``torch.autocast``
  around every policy forward, :meth:`PrecisionPlan.forward_context`); None otherwise.
* ``fp8_recipe``: megatron-core's ``Fp8Recipe`` name for the **decoder** (``delayed`` ->
  ``DelayedScaling``, ``current`` -> ``tensorwise`` = ``Float8CurrentScaling``), passed as
  decoder TransformerConfig fields (:meth:`PrecisionPlan.decoder_overrides`). megatron's
  TransformerBlock then enters TE's ``fp8_autocast`` around the decoder layers itself, so only
  the decoder's TE linears run FP8: the vision tower and merger (their own configs, no fp8) and
  the output layer (a plain column-parallel linear) stay bf16.

FP8 weight caching (``is_first_microbatch``): megatron's TE linears cast each weight to FP8 on
the first micro-batch of a schedule call and reuse the cast for the others. The schedule calls
``model.set_is_first_microbatch()`` at every call's first micro-batch, which acts only when the
module's config has ``fp8`` set; the DDP wrapper carries the decoder config (``wrap_ddp`` passes
``model.config``), so with these overrides every ``run_microbatches`` call re-casts once. Weights
change only in ``optimizer.step()``, between calls, so the cache is never stale: one cast per
pass (log-prob pass, each training mini-batch), not one per micro-batch.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# ModelConfig.fp8_recipe -> megatron-core Fp8Recipe value.
FP8_RECIPES = {"delayed": "delayed", "current": "tensorwise"}
# Delayed scaling: the amax history NeMo/Megatron recipes use for training.
DELAYED_AMAX_HISTORY = 1024


@dataclass(frozen=True)
class PrecisionPlan:
    """What to build and how to run the policy (see module doc)."""

    spec: str
    params_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    fp8_recipe: str | None  # megatron Fp8Recipe value, None = no FP8
    notes: tuple[str, ...] = ()  # fallbacks taken, for the start-up log

    def decoder_overrides(self) -> dict:
        """Decoder TransformerConfig fields for ``build_model(decoder_overrides=...)``."""
        if self.fp8_recipe is None:
            return {}
        out = {"fp8": "hybrid", "fp8_recipe": self.fp8_recipe}  # e4m3 forward, e5m2 gradients
        if self.fp8_recipe == "delayed":
            out |= {"fp8_amax_history_len": DELAYED_AMAX_HISTORY, "fp8_amax_compute_algo": "max"}
        return out

    def forward_context(self, device_type: str | None = None):
        """Context for every policy forward: bf16 autocast for fp32 parameters, else a no-op."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def wrap_forward(self, forward_fn):
        """``forward_fn(model, mb)`` run inside :meth:`forward_context` (for ``run_microbatches``)."""

        def wrapped(model, mb):
            with self.forward_context():
                return forward_fn(model, mb)

        return wrapped

    def describe(self) -> str:
        """One log line: spec, parameter / compute dtypes, FP8 recipe, fallbacks."""
        compute = str(self.autocast_dtype or self.params_dtype).replace("torch.", "")
        fp8 = f", fp8 decoder linears ({self.fp8_recipe})" if self.fp8_recipe else ""
        extra = f" [{'; '.join(self.notes)}]" if self.notes else ""
        return f"precision: spec={self.spec}, params={str(self.params_dtype).replace('torch.', '')}, compute={compute}{fp8}{extra}"


def plan_precision(model_cfg, te_available: bool | None = None, cuda: bool | None = None) -> PrecisionPlan:
    """Resolve ``model.{precision,fp8_recipe,dtype,spec}`` (a ``ModelConfig``) into a plan.

    ``te_available`` defaults to whether TransformerEngine imports, ``cuda`` to whether CUDA is
    available (tests pass both explicitly). FP8 needs TE: without it (or with ``spec='local'``)
    the run computes in bf16 and says so. bf16 compute over fp32 parameters needs CUDA: megatron-
    core's linear autograd functions take their autocast state from ``custom_fwd(device_type=
    "cuda")``, so under CPU autocast their backward mixes bf16 grads with fp32 weights; on CPU
    the run computes in fp32 and says so (``model.dtype=bf16`` gives bf16 on CPU).
    """
    if te_available is None:
        from r1vfree_mcore.models.backends.transformer_engine import te_available as probe

        te_available = probe()
    notes = []
    spec = model_cfg.spec
    if spec == "transformer_engine" and not te_available:
        spec = "local_sdpa"  # what get_backend falls back to as well
        notes.append("transformer_engine not importable: local_sdpa spec (megatron-core linears, torch SDPA attention)")
    params_dtype = torch.bfloat16 if model_cfg.dtype == "bf16" else torch.float32
    precision = model_cfg.precision
    fp8 = None
    if precision == "fp8":
        if spec != "transformer_engine":
            notes.append("fp8 needs the transformer_engine spec: running bf16")
        else:
            fp8 = FP8_RECIPES[model_cfg.fp8_recipe]
    elif precision == "fp32" and params_dtype == torch.bfloat16:
        notes.append("model.dtype=bf16 computes in bf16 whatever model.precision says")
    low = precision in ("bf16", "fp8")
    autocast = torch.bfloat16 if low and params_dtype == torch.float32 else None
    if autocast is not None and not (torch.cuda.is_available() if cuda is None else cuda):
        autocast = None
        notes.append("bf16 autocast over fp32 parameters needs CUDA: computing fp32 (use model.dtype=bf16 on CPU)")
    plan = PrecisionPlan(spec, params_dtype, autocast, fp8, tuple(notes))
    for n in notes:
        log.warning("precision fallback: %s", n)
    return plan
