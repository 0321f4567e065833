"""Policy ranks + reward ranks in one launch (gloo/CPU, spawned processes).

Each process gets RANK/WORLD_SIZE/MASTER_* like torchrun; policy ranks build their own world
with init_policy_world and prove it with an all_reduce; reward ranks run serve_rewards.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.judge_stub import JudgeStub
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardEngine
from r1vfree_mcore.testing.distributed import run_distributed


def png_bytes(color=(200, 10, 10), size=(56, 84)) -> bytes:
    """A solid-colour PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


pytestmark = pytest.mark.slow

COMPLETIONS = ["<think>look</think> <answer>yes</answer>", "<answer>two shapes</answer>", "plain text",
               "<think>a</think><answer>The count is 3</answer>", ""]


def make_batches(rank: int, sizes: list[int]) -> list[list[RewardRequest]]:
    """Uneven batches per rank; every third sample has an image, every fifth none."""
    out = []
    for b, n in enumerate(sizes):
        out.append([
            RewardRequest(f"p{rank}b{b}s{i}", f"What is shown? ({rank}.{b}.{i})", COMPLETIONS[(rank + b + i) % 5],
                          png_bytes((40 * i % 255, 80, 120 + b), (56, 56 + 28 * (i % 3))) if i % 5 else None)
            for i in range(n)
        ])
    return out


SIZES = {0: [3, 1, 5], 1: [2, 6], 2: [4], 3: [1, 1]}


def _rank_main(rank, world, cfg_dict):
    import torch
    import torch.distributed as dist

    from r1vfree_mcore.rewards import client as rc
    from r1vfree_mcore.rewards.server import serve_rewards
    from r1vfree_mcore.rewards.topology import RewardTopology, init_policy_world

    cfg = RewardConfig.from_dict(cfg_dict)
    topo = RewardTopology.from_env(cfg.num_reward_ranks)
    if topo.is_reward_rank:
        serve_rewards(cfg, topo)
        return {"role": "reward", "replica": topo.reward_index}
    init_policy_world(topo)
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    scorer = rc.make_scorer(cfg, topo)
    handles = [scorer.submit(b) for b in make_batches(rank, SIZES[rank])]  # all in flight at once
    results = [h.result(timeout=120) for h in reversed(handles)][::-1]
    scorer.close()
    dist.barrier()  # rank 0 hosts the rendezvous store: it must outlive every rank's lookup
    return {"role": "policy", "world": dist.get_world_size(), "sum": t.item(), "replica": scorer.replica,
            "results": [(r.sample_ids, r.scores, r.total, r.valid, r.timings) for r in results]}


@pytest.mark.parametrize("policy,reward", [(2, 1), (2, 2)])
def test_reward_ranks_match_local_scoring(tiny_reward_dir, policy, reward, monkeypatch):
    monkeypatch.delenv("R1V_REWARD_RANKS", raising=False)
    cfg = {"backends": [{"name": "vlm_scalar", "path": str(tiny_reward_dir), "weight": 1.0},
                        {"name": "format", "weight": 0.5}],
           "num_reward_ranks": reward, "batch_size": 4, "connect_timeout_s": 120.0}
    out = run_distributed(_rank_main, policy + reward, cfg, init_process_group=False, timeout=300)
    assert [o["role"] for o in out] == ["policy"] * policy + ["reward"] * reward
    engine = RewardEngine(RewardConfig.from_dict(cfg))
    for rank in range(policy):
        o = out[rank]
        assert o["world"] == policy and o["sum"] == sum(range(1, policy + 1))  # the policy world only
        assert o["replica"] == rank % reward
        for batch, (ids, scores, total, valid, timings) in zip(make_batches(rank, SIZES[rank]), o["results"]):
            ref = engine.score(batch)
            assert ids == [r.sample_id for r in batch]  # order preserved per batch
            assert scores["format"] == ref.scores["format"]
            assert scores["accuracy"] == pytest.approx(ref.scores["accuracy"], abs=1e-5)
            assert total == pytest.approx(ref.total, abs=1e-5) and all(valid)
            assert timings["time/reward_compute"] > 0 and timings["time/reward_wait"] >= 0


def _fault_main(rank, world, cfg_dict, cfg_path):
    import torch.distributed as dist

    from r1vfree_mcore.rewards.channel import RewardRankError
    from r1vfree_mcore.rewards.client import RewardClient
    from r1vfree_mcore.rewards.scoring import RewardFailureError
    from r1vfree_mcore.rewards.topology import RewardTopology, init_policy_world

    cfg = RewardConfig.from_dict(cfg_dict)
    topo = RewardTopology.from_env(cfg.num_reward_ranks)
    if topo.is_reward_rank:  # the server runs as its own program so that the test can kill it
        proc = subprocess.run([sys.executable, "-m", "r1vfree_mcore.rewards.server", "--config", cfg_path],
                              timeout=150, capture_output=True, text=True)
        return {"role": "reward", "returncode": proc.returncode}
    init_policy_world(topo)
    client = RewardClient(cfg, topo)
    out = {"role": "policy", "where": client.where}
    if rank == 0:
        ok = [RewardRequest(f"s{i}", "q", f"<answer>{'x' * i}</answer>") for i in range(8)]
        res = client.submit(ok[:7] + [RewardRequest("bad", "q", "<answer>FAIL</answer>")]).result(60)
        out["valid"], out["failures"] = res.valid, res.failures
        out["ok_scores"] = res.scores["accuracy"][:7]
        try:
            client.submit(ok[:5] + [RewardRequest(f"bad{i}", "q", "<answer>FAIL</answer>") for i in range(3)]).result(60)
        except RewardFailureError as exc:
            out["threshold_error"] = str(exc)
    dist.barrier()  # both policy ranks are done with normal traffic before faults are injected
    pid = int(client.where.split("pid ")[1].split(")")[0])
    os.kill(pid, signal.SIGKILL if rank == 0 else signal.SIGSTOP)
    t0 = time.monotonic()
    handle = client.submit([RewardRequest("late", "q", "<answer>a</answer>")]) if rank == 1 else None
    try:
        (handle or client.submit([RewardRequest("late", "q", "a")])).result(timeout=60)
    except RewardRankError as exc:
        out["rank_error"], out["detect_s"] = str(exc), time.monotonic() - t0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already killed (rank 0) and reaped by its reward rank
        client.close()
    return out


def test_failures_threshold_and_dead_reward_ranks(tmp_path, monkeypatch):
    monkeypatch.delenv("R1V_REWARD_RANKS", raising=False)
    stub = JudgeStub()
    try:
        cfg = {"backends": [{"name": "http_judge", "url": stub.url, "retries": 0, "backoff_s": 0.0},
                            {"name": "format"}],
               "num_reward_ranks": 2, "retries": 1, "retry_backoff_s": 0.0, "max_failure_fraction": 0.25,
               "heartbeat_s": 0.3, "dead_after_s": 4.0, "connect_timeout_s": 120.0}
        path = tmp_path / "rewards.json"
        path.write_text(json.dumps(cfg))
        out = run_distributed(_fault_main, 4, cfg, str(path), init_process_group=False, timeout=180)
    finally:
        stub.stop()
    p0, p1, r0, r1 = out
    assert p0["valid"] == [True] * 7 + [False] and p0["failures"] == 1
    assert p0["ok_scores"] == [i % 11 / 10 for i in range(7)]
    assert "3 of 8 samples (37.5%)" in p0["threshold_error"]
    assert "sample 'bad" in p0["threshold_error"]
    # killed: the connection drops (detected before any heartbeat timeout);
    # frozen: the connection stays open, detected after dead_after_s without heartbeats
    assert "reward rank 2 (replica 0" in p0["rank_error"] and "died" in p0["rank_error"] and p0["detect_s"] < 4.0
    assert "reward rank 3 (replica 1" in p1["rank_error"] and "no heartbeat" in p1["rank_error"]
    assert 3.5 < p1["detect_s"] < 30.0
    assert "127.0.0.1" in p1["rank_error"]
    assert r0["returncode"] == -signal.SIGKILL and r1["returncode"] == -signal.SIGKILL
