"""The run config: defaults, YAML + overrides, unknown keys and bad values named."""

import pytest

from r1vfree_mcore.train.config import ConfigError, load_config, save_config

REQ = ["model.hf_dir=/m", "data.path=/d"]


def test_overrides_and_types():
    cfg = load_config(None, REQ + ["parallel.tp=2", "grpo.beta=0", "reward.backends=[{name: format, weight: 2.0}]"])
    assert cfg.parallel.tp == 2 and cfg.grpo.beta == 0.0
    assert cfg.reward.backends == [{"name": "format", "weight": 2.0}]
    assert cfg.rollout.num_generations == 8 and cfg.grpo.aggregation == "seq-mean-token-mean"


def test_yaml_roundtrip(tmp_path):
    cfg = load_config(None, REQ + ["rollout.temperature=0.7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "override,key",
    [
        ("parallel.tpp=2", "parallel.tpp"),
        ("nosection.x=1", "nosection"),
        ("grpo.aggregation=bogus", "grpo.aggregation"),
        ("rollout.num_generations=1", "rollout.num_generations"),
        ("model.precision=fp8", "model.fp8_recipe"),
        ("parallel.pp_layer_split=[1,2,3]", "parallel.pp_layer_split"),
        ("data.min_pixels=999999999", "data.min_pixels"),
        ("optim.schedule=linear", "optim.schedule"),
        ("logging.report_to=[stdout]", "logging.report_to"),
        ("parallel.tp=two", "parallel.tp"),
        ("checkpoint.optim_sharding=fully_sharded_model_space", "checkpoint.optim_sharding"),
        ("model.spec=sdpa", "model.spec"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, REQ + [override])


def test_missing_required_and_file():
    with pytest.raises(ConfigError, match="model.hf_dir"):
        load_config(None, ["data.path=/d"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, REQ + ["parallel.tp"])


def test_world_layout_check():
    cfg = load_config(None, REQ + ["parallel.tp=2", "reward.num_ranks=1"])
    assert cfg.check_world(5) == 2
    with pytest.raises(ConfigError, match="does not divide"):
        cfg.check_world(4)
    with pytest.raises(ConfigError, match="reward.num_ranks"):
        cfg.check_world(1)
