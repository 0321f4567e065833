"""RewardTopology from the launch environment; rank roles and replica assignment."""

import pytest

from r1vfree_mcore.rewards.channel import advertise_host, authkey, bind_address
from r1vfree_mcore.rewards.topology import RewardTopology, init_policy_world


def test_from_env_roles_and_replicas(monkeypatch):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "6")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.setenv("R1V_REWARD_RANKS", "2")
    t = RewardTopology.from_env()
    assert (t.num_policy_ranks, t.is_reward_rank, t.reward_index) == (4, True, 1)
    assert [t.replica_for(i) for i in range(4)] == [0, 1, 0, 1]
    assert t.clients_of(1) == [1, 3] and t.global_rank_of(0) == 4
    assert RewardTopology.from_env(0).is_reward_rank is False  # explicit argument wins over env
    p = RewardTopology(rank=3, world_size=6, num_reward_ranks=2)
    assert not p.is_reward_rank
    with pytest.raises(ValueError, match="policy rank"):
        p.reward_index
    with pytest.raises(RuntimeError, match="reward rank"):
        init_policy_world(t)


def test_bad_layouts_name_the_setting():
    with pytest.raises(ValueError, match="num_reward_ranks=2 must be in"):
        RewardTopology(rank=0, world_size=2, num_reward_ranks=2)
    with pytest.raises(ValueError, match="RANK=4"):
        RewardTopology(rank=4, world_size=2, num_reward_ranks=1)


def test_channel_host_and_secret(monkeypatch):
    monkeypatch.delenv("R1V_REWARD_HOST", raising=False)
    monkeypatch.delenv("R1V_REWARD_SECRET", raising=False)
    local = RewardTopology(rank=1, world_size=2, num_reward_ranks=1, master_addr="127.0.0.1")
    remote = RewardTopology(rank=1, world_size=2, num_reward_ranks=1, master_addr="node0", master_port=7)
    assert advertise_host(local) == "127.0.0.1" and bind_address("127.0.0.1") == "127.0.0.1"
    assert advertise_host(remote, "gpu-17.cluster") == "gpu-17.cluster" and bind_address("gpu-17") == "0.0.0.0"
    monkeypatch.setenv("R1V_REWARD_HOST", "10.0.0.5")
    assert advertise_host(remote) == "10.0.0.5"
    assert authkey(local) != authkey(remote)
    monkeypatch.setenv("R1V_REWARD_SECRET", "s3cret")
    assert authkey(local) == authkey(remote) == b"s3cret"
