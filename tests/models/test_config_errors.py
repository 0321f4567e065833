"""Bad layouts / configs fail fast with messages naming the field; TE falls back with a warning."""

import copy
import logging

import pytest

from _vlm_harness import make_checkpoint
from r1vfree_mcore.models import family_of
from r1vfree_mcore.models.common.vlm import padded_vocab_size, stage_layer_counts, validate
from r1vfree_mcore.parallel.state import ParallelConfig


@pytest.fixture(scope="module")
def hf_config(tmp_path_factory):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("cfg"), "qwen2_5_vl", False))


def test_family_of(hf_config):
    assert family_of(hf_config) == "qwen2_5_vl"
    bad = copy.deepcopy(hf_config)
    bad.architectures, bad.model_type = ["LlamaForCausalLM"], "llama"
    with pytest.raises(ValueError, match="unknown architecture.*LlamaForCausalLM"):
        family_of(bad)


@pytest.mark.parametrize(
    "edit, cfg, message",
    [
        (None, ParallelConfig(tp=4), r"text_config.num_key_value_heads=2 is not divisible by parallel.tp=4"),
        (None, ParallelConfig(tp=8), r"text_config.num_attention_heads=4 is not divisible by parallel.tp=8"),
        (("vision_config", "num_heads", 3), ParallelConfig(tp=2), r"vision_config.num_heads=3 is not divisible"),
        (None, ParallelConfig(pp=5), r"parallel.pp=5 exceeds text_config.num_hidden_layers=4"),
        (None, ParallelConfig(pp=2, pp_layer_split=(3, 2)), r"pp_layer_split=\(3, 2\) sums to 5"),
        (None, ParallelConfig(pp=2, pp_layer_split=(4, 0)), r"every stage needs >= 1 layer"),
        (None, ParallelConfig(pp=3), r"num_hidden_layers=4 is not divisible by parallel.pp=3"),
    ],
)
def test_bad_layouts_fail_fast(hf_config, edit, cfg, message):
    conf = copy.deepcopy(hf_config)
    if edit:
        setattr(getattr(conf, edit[0]), edit[1], edit[2])
    with pytest.raises(ValueError, match=message):
        validate(conf, cfg)


def test_good_layouts(hf_config):
    validate(hf_config, ParallelConfig(tp=2, pp=2))
    assert stage_layer_counts(4, ParallelConfig(pp=2, pp_layer_split=(3, 1))) == [3, 1]
    assert stage_layer_counts(4, ParallelConfig(pp=2)) == [2, 2]
    assert padded_vocab_size(470, 1) == 512 and padded_vocab_size(513, 2) == 768


def test_transformer_engine_falls_back_to_local_with_warning(caplog):
    from r1vfree_mcore.models.backends import get_backend
    from r1vfree_mcore.models.backends import transformer_engine as te_backend

    if te_backend.te_available():
        pytest.skip("transformer_engine is importable here")
    with caplog.at_level(logging.WARNING):
        backend = get_backend("transformer_engine")
    assert backend.name == "local"
    assert any("falling back to the local spec" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="spec must be one of"):
        get_backend("apex")


def test_fp8_context_without_te():
    import contextlib

    from r1vfree_mcore.models.backends.transformer_engine import fp8_context, te_available

    assert isinstance(fp8_context(None), contextlib.nullcontext)
    if not te_available():
        assert isinstance(fp8_context("delayed"), contextlib.nullcontext)
    with pytest.raises(ValueError, match="fp8 recipe"):
        fp8_context("mxfp8")


def test_decoder_overrides_cannot_change_architecture(hf_config):
    from r1vfree_mcore.models.common.configs import decoder_config

    with pytest.raises(ValueError, match=r"architecture fields \['num_layers'\]"):
        decoder_config(hf_config, 1, 1, None, None, {"num_layers": 2})


def test_no_weight_init_reaches_every_config_and_ends_with_its_block(hf_config):
    import torch

    from r1vfree_mcore.models.common.configs import decoder_config, merger_config, no_weight_init, vision_config
    from r1vfree_mcore.models.common.vision_dims import vision_dims_of

    dims = vision_dims_of(hf_config)

    def flags():
        return [decoder_config(hf_config, 1, 1, None, torch.float32).perform_initialization,
                vision_config(dims, 1, torch.float32).perform_initialization,
                merger_config(dims, 1, torch.float32).perform_initialization]

    assert flags() == [True, True, True]
    with no_weight_init():
        assert flags() == [False, False, False]
    assert flags() == [True, True, True]
