"""Score a batch of requests with the configured backends: retries, failure accounting, totals.

Used in-process by :class:`~r1vfree_mcore.rewards.local.LocalRewardScorer` and on reward ranks by
:func:`~r1vfree_mcore.rewards.server.serve_rewards`, so both paths give identical numbers.

Failure policy (no silent zeros): a backend call that raises is retried ``cfg.retries`` times
with doubling backoff; a multi-sample batch that still fails is split into single samples (each
retried again) so one bad sample cannot take its neighbours down. A sample whose retries are
exhausted in any backend is *failed*: it is logged with its sample id, its per-backend score and
total are 0.0 placeholders and ``valid[i]`` is False. Consumers must drop invalid samples from
their group statistics (advantages) and from the loss. When failed samples exceed
``cfg.max_failure_fraction`` of the batch, :class:`RewardFailureError` is raised instead.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from r1vfree_mcore.rewards.backends import build_backend
from r1vfree_mcore.rewards.config import RewardConfig
from r1vfree_mcore.rewards.request import RewardRequest

log = logging.getLogger(__name__)


class RewardFailureError(RuntimeError):
    """Too many samples of one step could not be scored; the message has count, fraction, last error."""


@dataclass
class RewardResult:
    """Scores of one submitted batch, in request order.

    ``scores[metric]`` are the clipped, unweighted per-backend scores; ``total`` the weighted sum;
    ``valid[i]`` False marks a failed sample (placeholder 0.0 scores: exclude it). ``errors``
    counts raised backend calls (including retried ones), ``failures`` the failed samples.
    ``timings`` holds ``time/reward_compute`` (seconds the reward side spent scoring) and, after
    ``result()``, ``time/reward_wait`` (seconds the caller was blocked waiting).
    """

    sample_ids: list[Any]
    scores: dict[str, list[float]]
    total: list[float]
    valid: list[bool]
    failures: int = 0
    errors: int = 0
    last_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Means over valid samples for logging: ``rewards/<metric>``, ``reward/total``, counts, times."""
        ok = [i for i, v in enumerate(self.valid) if v]
        mean = lambda xs: sum(xs[i] for i in ok) / len(ok) if ok else float("nan")  # noqa: E731
        out = {f"rewards/{m}": mean(s) for m, s in self.scores.items()}
        out["reward/total"] = mean(self.total)
        out["reward/failures"] = float(self.failures)
        out["reward/errors"] = float(self.errors)
        out.update(self.timings)
        return out


class RewardEngine:
    """The configured backends, loaded once, and the scoring policy around them."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.entries = []
        for spec in cfg.backends:
            metric, clip = spec.resolved()
            self.entries.append((metric, float(spec.weight), clip, build_backend(spec.name, dict(spec.kwargs))))

    def score(self, requests: list[RewardRequest]) -> RewardResult:
        """Score ``requests`` with every backend; raises RewardFailureError above the threshold."""
        t0 = time.perf_counter()
        n = len(requests)
        failed: set[int] = set()
        state = {"errors": 0, "last": None}
        scores: dict[str, list[float]] = {}
        for metric, _, clip, backend in self.entries:
            col: list[float | None] = [None] * n
            bs = self.cfg.batch_size
            for start in range(0, n, bs):
                idx = list(range(start, min(n, start + bs)))
                self._score_chunk(metric, backend, requests, idx, col, state)
            for i, v in enumerate(col):
                if v is None:
                    failed.add(i)
            scores[metric] = [0.0 if v is None else (max(v, clip) if clip is not None else v) for v in col]
        valid = [i not in failed for i in range(n)]
        total = [
            sum(w * scores[m][i] for m, w, _, _ in self.entries) if valid[i] else 0.0 for i in range(n)
        ]
        if n and len(failed) / n > self.cfg.max_failure_fraction:
            raise RewardFailureError(
                f"{len(failed)} of {n} samples ({len(failed) / n:.1%}) failed reward scoring, above "
                f"rewards.max_failure_fraction={self.cfg.max_failure_fraction}; "
                f"{state['errors']} backend errors; last error: {state['last']}"
            )
        return RewardResult(
            sample_ids=[r.sample_id for r in requests],
            scores=scores,
            total=total,
            valid=valid,
            failures=len(failed),
            errors=state["errors"],
            last_error=state["last"],
            timings={"time/reward_compute": time.perf_counter() - t0},
        )

    def _score_chunk(self, metric, backend, requests, idx, col, state) -> None:
        """Fill ``col[idx]`` with scores; on exhausted retries split the chunk, then give up per sample."""
        batch = [requests[i] for i in idx]
        out = self._call_with_retries(metric, backend, batch, state)
        if out is not None:
            for i, v in zip(idx, out):
                col[i] = v
            return
        if len(idx) > 1:
            for i in idx:
                self._score_chunk(metric, backend, requests, [i], col, state)
            return
        log.error("reward backend %r gave up on sample %r: %s", metric, requests[idx[0]].sample_id, state["last"])

    def _call_with_retries(self, metric, backend, batch, state) -> list[float] | None:
        ids = [r.sample_id for r in batch]
        for attempt in range(self.cfg.retries + 1):
            try:
                out = [float(v) for v in self._call(backend, batch)]
                if len(out) != len(batch):
                    raise ValueError(f"backend returned {len(out)} scores for {len(batch)} samples")
                bad = [ids[k] for k, v in enumerate(out) if v != v or v in (float("inf"), float("-inf"))]
                if bad:
                    raise ValueError(f"backend returned a non-finite score for samples {bad}")
                return out
            except Exception as exc:  # every backend failure is counted, logged and retried
                state["errors"] += 1
                state["last"] = f"{metric}: samples {ids}: {type(exc).__name__}: {exc}"
                log.warning("reward backend %r failed on samples %s (attempt %d/%d): %s",
                            metric, ids, attempt + 1, self.cfg.retries + 1, exc)
                if attempt < self.cfg.retries:
                    time.sleep(self.cfg.retry_backoff_s * (2 ** attempt))
        return None

    def _call(self, backend, batch) -> list[float]:
        """``backend.score(batch)``, bounded by ``cfg.call_timeout_s`` when set."""
        if self.cfg.call_timeout_s is None:
            return backend.score(batch)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-call")
        try:
            return pool.submit(backend.score, batch).result(timeout=self.cfg.call_timeout_s)
        except TimeoutError as exc:
            raise TimeoutError(f"backend call exceeded rewards.call_timeout_s={self.cfg.call_timeout_s}") from exc
        finally:
            pool.shutdown(wait=False)  # an overdue call is abandoned; it cannot be interrupted
