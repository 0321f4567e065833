"""RewardConfig / BackendSpec validation and the backend registry."""

import pytest

from r1vfree_mcore.rewards.backends import backend_class, register_backend
from r1vfree_mcore.rewards.config import BackendSpec, RewardConfig
from r1vfree_mcore.rewards.format import FormatBackend


def test_from_dict_roundtrip_and_defaults(monkeypatch):
    monkeypatch.delenv("R1V_REWARD_RANKS", raising=False)
    cfg = RewardConfig.from_dict({
        "backends": [{"name": "vlm_scalar", "weight": 2.0, "path": "/m"}, {"name": "format"}],
        "num_reward_ranks": 1,
    })
    a, f = cfg.backends
    assert (a.name, a.weight, a.kwargs) == ("vlm_scalar", 2.0, {"path": "/m"})
    assert a.resolved() == ("accuracy", 0.0) and f.resolved() == ("format", None)
    assert RewardConfig.from_dict(cfg.to_dict()) == cfg
    monkeypatch.setenv("R1V_REWARD_RANKS", "3")
    assert RewardConfig.from_dict(cfg.to_dict()).num_reward_ranks == 3


@pytest.mark.parametrize("d,field", [
    ({"backends": [{"name": "nope"}]}, r"rewards.backends\[0\].name"),
    ({"backends": [{"name": "format", "weight": "x"}]}, r"rewards.backends\[0\].weight"),
    ({"backends": [{"name": "format"}, {"name": "format"}]}, "metric_name"),
    ({"backends": []}, "rewards.backends"),
    ({"retries": -1}, "rewards.retries"),
    ({"max_failure_fraction": 1.5}, "rewards.max_failure_fraction"),
    ({"heartbeat_s": 5.0, "dead_after_s": 2.0}, "rewards.dead_after_s"),
    ({"bogus": 1}, "unknown keys"),
])
def test_bad_config_names_field(d, field, monkeypatch):
    monkeypatch.delenv("R1V_REWARD_RANKS", raising=False)
    with pytest.raises(ValueError, match=field):
        RewardConfig.from_dict(d)


def test_registry_register_and_import_path():
    register_backend("format_alias", FormatBackend)
    assert backend_class("format_alias") is FormatBackend
    assert backend_class("r1vfree_mcore.rewards.format:FormatBackend") is FormatBackend
    cfg = RewardConfig(backends=[BackendSpec("format_alias", metric_name="fmt2"), {"name": "format"}])
    assert [b.resolved()[0] for b in cfg.backends] == ["fmt2", "format"]
    with pytest.raises(KeyError, match="unknown reward backend"):
        backend_class("nothing_here")
