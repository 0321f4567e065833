"""In-process reward scoring in a background thread (``num_reward_ranks = 0``).

Same interface as :class:`~r1vfree_mcore.rewards.client.RewardClient`: ``submit`` returns at
once, ``result`` blocks. The engine runs in one worker thread, so requests are scored in
submission order and backends need not be thread-safe.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.request import RewardRequest
from r1vfree_mcore.rewards.scoring import RewardEngine, RewardResult


class RewardHandle:
    """A pending batch; ``result(timeout)`` returns its :class:`RewardResult` (with wait time)."""

    def __init__(self, future: Future):
        self._future = future

    def done(self) -> bool:
        """True once the scores are in (``result`` will not block)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> RewardResult:
        """Block until scored; adds ``time/reward_wait`` (seconds blocked here) to the timings."""
        t0 = time.perf_counter()
        res = self._future.result(timeout)
        res.timings["time/reward_wait"] = time.perf_counter() - t0
        return res


class LocalRewardScorer:
    """Scores in this process; the engine (models) is built on construction."""

    def __init__(self, cfg: RewardConfig, engine: RewardEngine | None = None):
        self.cfg = cfg
        self.engine = engine or RewardEngine(cfg)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")

    def submit(self, requests: list[RewardRequest]) -> RewardHandle:
        """Queue ``requests`` for scoring and return immediately."""
        return RewardHandle(self._pool.submit(self.engine.score, list(requests)))

    def close(self) -> None:
        """Finish queued work and stop the thread."""
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
