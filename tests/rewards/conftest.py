"""Shared fixtures for reward tests: a tiny vlm_scalar model and a stub judge server."""

from __future__ import annotations

import pytest

from r1vfree_mcore.rewards.judge_stub import JudgeStub


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """Tiny Qwen2-VL checkpoint (2 layers) with a random 'last'-pooling value head."""
    from r1vfree_mcore.rewards.vlm_scalar import save_value_head
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path_factory.mktemp("rm") / "tiny", family="qwen2_vl", num_layers=2)
    save_value_head(path, seed=3, bias=0.5)
    return path


@pytest.fixture
def judge_stub():
    stubs = []

    def make(**kw):
        stubs.append(JudgeStub(**kw))
        return stubs[-1]

    yield make
    for s in stubs:
        s.stop()
