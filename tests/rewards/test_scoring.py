"""RewardEngine / LocalRewardScorer: totals, clipping, ordering, retries, failure threshold."""

import math
import threading

import pytest

from r1vfree_mcore.rewards.backends import register_backend
from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.format import format_reward
from r1vfree_mcore.rewards.local import LocalRewardScorer
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardEngine, RewardFailureError


class LengthBackend:
    """Score = len(completion) - shift; fails on sample ids in ``bad`` and on the first ``flaky`` calls."""

    default_metric = "accuracy"
    default_min_score = 0.0

    def __init__(self, shift=0.0, bad=(), flaky=0, gate=None):
        self.shift, self.bad, self.flaky, self.calls = shift, set(bad), flaky, 0
        self.gate = gate

    def score(self, reqs):
        if self.gate is not None:
            self.gate.wait(10)
        self.calls += 1
        if self.calls <= self.flaky:
            raise ConnectionError("transient")
        for r in reqs:
            if r.sample_id in self.bad:
                raise RuntimeError(f"cannot score {r.sample_id}")
        return [len(r.completion) - self.shift for r in reqs]


register_backend("length_test", LengthBackend)

COMPLETIONS = ["<think>t</think><answer>yes</answer>", "x", "<think>a</think> <answer>no</answer>", "abc", "yy"]


def reqs(n=5):
    return [RewardRequest(i, "q", COMPLETIONS[i % len(COMPLETIONS)]) for i in range(n)]


def cfg(**kw):
    backends = kw.pop("backends", [{"name": "length_test", "weight": 0.5, "shift": 3.0}, {"name": "format", "weight": 2.0}])
    return RewardConfig(backends=backends, retry_backoff_s=0.0, batch_size=2, **kw)


def test_totals_clip_and_names():
    rs = reqs()
    res = RewardEngine(cfg()).score(rs)
    acc = [max(len(r.completion) - 3.0, 0.0) for r in rs]
    fmt = format_reward([r.completion for r in rs])
    assert res.scores == {"accuracy": acc, "format": fmt}
    assert res.total == pytest.approx([0.5 * a + 2.0 * f for a, f in zip(acc, fmt)])
    assert res.valid == [True] * 5 and res.failures == 0 and res.sample_ids == [0, 1, 2, 3, 4]
    m = res.metrics()
    assert m["rewards/accuracy"] == pytest.approx(sum(acc) / 5) and m["rewards/format"] == pytest.approx(0.4)
    # min_score None disables the clip
    res = RewardEngine(cfg(backends=[{"name": "length_test", "shift": 3.0, "min_score": None}])).score(rs)
    assert res.scores["accuracy"][1] == -2.0


def test_transient_errors_are_retried_and_counted():
    res = RewardEngine(cfg(retries=2, backends=[{"name": "length_test", "flaky": 2}])).score(reqs())
    assert res.valid == [True] * 5 and res.errors == 2 and res.failures == 0
    assert res.scores["accuracy"] == [float(len(r.completion)) for r in reqs()]


def test_failed_sample_is_invalid_not_zero_below_threshold(caplog):
    engine = RewardEngine(cfg(retries=1, max_failure_fraction=0.25, backends=[{"name": "length_test", "bad": [3]}]))
    res = engine.score(reqs(8))
    assert res.valid == [True, True, True, False, True, True, True, True]
    assert res.failures == 1 and not any(math.isnan(x) for x in res.total)
    assert res.scores["accuracy"][2] == float(len(COMPLETIONS[2]))  # its batch neighbour still scored
    assert "cannot score 3" in res.last_error and res.metrics()["reward/failures"] == 1.0
    assert "gave up on sample 3" in caplog.text


def test_threshold_stops_with_count_fraction_and_last_error():
    engine = RewardEngine(cfg(retries=1, max_failure_fraction=0.2, backends=[{"name": "length_test", "bad": [1, 4]}]))
    with pytest.raises(RewardFailureError, match=r"2 of 5 samples \(40.0%\).*max_failure_fraction=0.2.*cannot score"):
        engine.score(reqs())


def test_call_timeout_counts_as_failed_attempt():
    gate = threading.Event()  # never set during scoring: every call hangs until released
    engine = RewardEngine(cfg(retries=1, call_timeout_s=0.05, max_failure_fraction=1.0,
                              backends=[{"name": "length_test", "gate": gate}]))
    try:
        res = engine.score(reqs(2))
    finally:
        gate.set()  # release the abandoned calls
    assert res.valid == [False, False] and res.failures == 2
    assert res.errors == 6  # chunk (2 tries) + each sample alone (2 tries each)
    assert "call_timeout_s=0.05" in res.last_error


def test_local_scorer_is_non_blocking_and_ordered():
    gate = threading.Event()
    c = RewardConfig(backends=[{"name": "length_test", "gate": gate}, {"name": "format"}], batch_size=3)
    with LocalRewardScorer(c) as scorer:
        h1 = scorer.submit(reqs(5))
        h2 = scorer.submit(reqs(2))
        assert not h1.done()  # submit returned while scoring is blocked
        with pytest.raises(TimeoutError):
            h1.result(timeout=0.05)
        gate.set()
        r2, r1 = h2.result(10), h1.result(10)
    assert r1.sample_ids == [0, 1, 2, 3, 4] and r2.sample_ids == [0, 1]
    assert r1.scores["accuracy"] == [float(len(r.completion)) for r in reqs(5)]
    assert r1.timings["time/reward_compute"] > 0 and "time/reward_wait" in r1.timings
