"""The reward channel in one process (server thread + client): fast checks of the protocol."""

import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest

from r1vfree_mcore.rewards.channel import RewardRankError, lookup, open_store
from r1vfree_mcore.rewards.client import RewardClient
from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.format import format_reward
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.server import serve_rewards
from r1vfree_mcore.rewards.topology import RewardTopology
from r1vfree_mcore.testing.distributed import free_port


def test_wrong_authkey_is_rejected_and_serving_continues(monkeypatch):
    monkeypatch.setenv("R1V_REWARD_SECRET", "right")
    port = free_port()
    cfg = RewardConfig(backends=[{"name": "format"}], num_reward_ranks=1, connect_timeout_s=30.0)
    policy = RewardTopology(rank=0, world_size=2, num_reward_ranks=1, master_port=port)
    reward = RewardTopology(rank=1, world_size=2, num_reward_ranks=1, master_port=port)
    errors = []

    def serve():
        try:
            serve_rewards(cfg, reward)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    store = open_store(policy, 30.0)  # rank 0 hosts the rendezvous store
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    info = lookup(store, policy, 0, 30.0)
    with pytest.raises(AuthenticationError):
        Client((info["host"], info["port"]), authkey=b"wrong")
    completions = ["<think>a</think><answer>b</answer>", "b", "<think>x</think>\n<answer>y</answer>"]
    with RewardClient(cfg, policy) as client:
        assert f"on host 127.0.0.1:{info['port']}" in client.where
        h1 = client.submit([RewardRequest(i, "q", c) for i, c in enumerate(completions)])
        h2 = client.submit([])
        res = h1.result(30)
        assert h2.result(30).sample_ids == []
    server.join(10)
    assert not server.is_alive() and not errors  # shut down cleanly after the client closed
    assert res.scores["format"] == format_reward(completions) and res.sample_ids == [0, 1, 2]
    with pytest.raises(RewardRankError, match="did not publish"):
        lookup(store, policy, 5, 0.2)
