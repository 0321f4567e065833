"""The precision switch: spec fallback, autocast and decoder-only FP8 fields from ModelConfig."""

from __future__ import annotations

import logging

import pytest
import torch

from r1vfree_mcore.train.config import ModelConfig
from r1vfree_mcore.train.precision import PrecisionPlan, plan_precision

BF16, FP32 = torch.bfloat16, torch.float32

# (config fields, te importable) -> (spec, params dtype, autocast dtype, megatron fp8 recipe, #notes)
PLANS = [
    (dict(precision="fp32"), False, ("local", FP32, None, None, 0)),
    (dict(precision="bf16"), False, ("local", FP32, BF16, None, 0)),
    (dict(precision="bf16", dtype="bf16"), False, ("local", BF16, None, None, 0)),
    (dict(precision="fp32", dtype="bf16"), False, ("local", BF16, None, None, 1)),
    (dict(precision="bf16", spec="transformer_engine"), True, ("transformer_engine", FP32, BF16, None, 0)),
    (dict(precision="bf16", spec="transformer_engine"), False, ("local_sdpa", FP32, BF16, None, 1)),
    (dict(precision="fp8", fp8_recipe="delayed", spec="transformer_engine", dtype="bf16"), True,
     ("transformer_engine", BF16, None, "delayed", 0)),
    (dict(precision="fp8", fp8_recipe="current", spec="transformer_engine"), True,
     ("transformer_engine", FP32, BF16, "tensorwise", 0)),
    (dict(precision="fp8", fp8_recipe="current", spec="transformer_engine"), False, ("local_sdpa", FP32, BF16, None, 2)),
    (dict(precision="fp8", fp8_recipe="delayed", spec="local"), True, ("local", FP32, BF16, None, 1)),
]
# Without CUDA, bf16 compute over fp32 parameters falls back to fp32 (megatron's linears are
# CUDA-autocast only); bf16 parameters still compute in bf16.
CPU_PLANS = [
    (dict(precision="bf16"), False, ("local", FP32, None, None, 1)),
    (dict(precision="bf16", dtype="bf16"), False, ("local", BF16, None, None, 0)),
    (dict(precision="fp8", fp8_recipe="delayed", spec="local"), False, ("local", FP32, None, None, 2)),
]


@pytest.mark.parametrize("cuda,fields,te,expected", [(True, *p) for p in PLANS] + [(False, *p) for p in CPU_PLANS])
def test_plan_table(cuda, fields, te, expected, caplog):
    with caplog.at_level(logging.WARNING):
        plan = plan_precision(ModelConfig(hf_dir="x", **fields), te_available=te, cuda=cuda)
    got = (plan.spec, plan.params_dtype, plan.autocast_dtype, plan.fp8_recipe, len(plan.notes))
    assert got == expected, plan
    assert sum("precision fallback" in r.getMessage() for r in caplog.records) == len(plan.notes)
    assert f"spec={plan.spec}" in plan.describe()
    assert ("fp8 decoder linears" in plan.describe()) == (plan.fp8_recipe is not None)


def test_probe_on_this_machine_falls_back_without_te():
    from r1vfree_mcore.models.backends.transformer_engine import te_available

    plan = plan_precision(ModelConfig(hf_dir="x", precision="bf16", spec="transformer_engine"))
    assert plan.spec == ("transformer_engine" if te_available() else "local_sdpa")


def test_spec_names_pick_their_backends():
    """The plan's spec names are what get_backend builds: local_sdpa = local linears + SDPA."""
    from r1vfree_mcore.models.backends import get_backend
    from r1vfree_mcore.models.backends.local import LocalBackend
    from r1vfree_mcore.models.backends.sdpa import LocalSDPABackend, SDPAttention

    local, sdpa = get_backend("local"), get_backend("local_sdpa")
    assert type(local) is LocalBackend and local.core_attention is not SDPAttention
    assert isinstance(sdpa, LocalSDPABackend) and sdpa.core_attention is SDPAttention
    with pytest.raises(ValueError, match="spec must be one of"):
        get_backend("sdpa")


def test_fp8_fields_reach_only_the_decoder_config():
    """The overrides build a decoder TransformerConfig with fp8; vision and merger configs have none."""
    from r1vfree_mcore.models.common.configs import decoder_config, merger_config, vision_config
    from r1vfree_mcore.models.common.vision_dims import vision_dims_of
    from r1vfree_mcore.testing.tiny import TinySpec, _hf_config, build_tokenizer

    hf = _hf_config(TinySpec(), build_tokenizer())
    for recipe, mc_recipe in (("delayed", "delayed"), ("current", "tensorwise")):
        plan = plan_precision(ModelConfig(hf_dir="x", precision="fp8", fp8_recipe=recipe,
                                          spec="transformer_engine", dtype="bf16"), te_available=True,
                                cuda=True)
        dec = decoder_config(hf, 1, 1, None, BF16, plan.decoder_overrides())
        assert dec.fp8 == "hybrid" and str(getattr(dec.fp8_recipe, "value", dec.fp8_recipe)) == mc_recipe
        dims = vision_dims_of(hf)
        assert vision_config(dims, 1, BF16).fp8 is None and merger_config(dims, 1, BF16).fp8 is None
    assert PrecisionPlan("local", FP32, BF16, None).decoder_overrides() == {}


def test_forward_context_autocasts_fp32_params_only():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    fwd = PrecisionPlan("local", FP32, BF16, None).wrap_forward(lambda m, mb: m(mb))
    assert fwd(lin, x).dtype == BF16
    assert PrecisionPlan("local", FP32, None, None).wrap_forward(lambda m, mb: m(mb))(lin, x).dtype == FP32
