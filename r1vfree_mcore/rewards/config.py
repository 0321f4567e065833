"""Typed reward configuration, validated on construction (errors name the field)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from r1vfree_mcore.rewards.backends import backend_class, backend_names, is_known_backend


@dataclass
class BackendSpec:
    """One reward backend: registry ``name``, ``weight`` in the total, and its own kwargs.

    ``metric_name`` names the reward in logs (``rewards/<metric_name>``) and keys the per-backend
    scores; default: the backend's ``default_metric`` (``accuracy`` for model backends,
    ``format`` for format). ``min_score`` clips scores below (default: the backend's
    ``default_min_score``, 0.0 for model backends as in R1V-Free; set None to disable).
    """

    name: str
    weight: float = 1.0
    metric_name: str | None = None
    min_score: float | None | str = "default"
    kwargs: dict[str, Any] = field(default_factory=dict)
    where: str = "rewards.backends[?]"  # for error messages only

    def __post_init__(self):
        if not isinstance(self.name, str) or not is_known_backend(self.name):
            raise ValueError(f"{self.where}.name: unknown backend {self.name!r}; known: {backend_names()}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight):
            raise ValueError(f"{self.where}.weight must be a finite number, got {self.weight!r}")
        if self.metric_name is not None and (not isinstance(self.metric_name, str) or not self.metric_name):
            raise ValueError(f"{self.where}.metric_name must be a non-empty string")
        if self.min_score != "default" and self.min_score is not None and not isinstance(self.min_score, (int, float)):
            raise ValueError(f"{self.where}.min_score must be a number or None, got {self.min_score!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "rewards.backends[?]") -> "BackendSpec":
        """``{"name": ..., "weight": ..., "metric_name": ..., "min_score": ..., **backend_kwargs}``."""
        if not isinstance(d, dict) or "name" not in d:
            raise ValueError(f"{where} must be a mapping with a 'name', got {d!r}")
        known = {"name", "weight", "metric_name", "min_score"}
        return cls(**{k: d[k] for k in known if k in d}, kwargs={k: v for k, v in d.items() if k not in known}, where=where)

    def resolved(self) -> tuple[str, float | None]:
        """(metric_name, min_score) with the backend's defaults filled in (imports the backend)."""
        cls = backend_class(self.name)
        metric = self.metric_name or getattr(cls, "default_metric", "accuracy")
        clip = getattr(cls, "default_min_score", 0.0) if self.min_score == "default" else self.min_score
        return metric, clip

    def to_dict(self) -> dict[str, Any]:
        """Inverse of :meth:`from_dict` (plain data, picklable, JSON-able)."""
        d = {"name": self.name, "weight": self.weight, **self.kwargs}
        if self.metric_name is not None:
            d["metric_name"] = self.metric_name
        if self.min_score != "default":
            d["min_score"] = self.min_score
        return d


@dataclass
class RewardConfig:
    """How rewards are computed and where.

    - ``backends``: list of :class:`BackendSpec` (or dicts); total = sum of weight x clipped score.
    - ``num_reward_ranks``: extra processes that serve rewards (0 = score in-process, in a thread).
      Overridden by env ``R1V_REWARD_RANKS`` in :meth:`from_dict` when set.
    - ``retries``: extra attempts for a failing backend call; ``retry_backoff_s`` doubles each try.
    - ``max_failure_fraction``: a step whose failed samples exceed this fraction of its samples
      raises ``RewardFailureError``; below it, failed samples come back with ``valid=False``.
    - ``batch_size``: samples per backend call on the reward side.
    - ``call_timeout_s``: a backend call running longer counts as a failed attempt (and is
      retried); None = no limit. The overdue call's thread is abandoned, not killed.
    - ``heartbeat_s`` / ``dead_after_s``: reward ranks send a heartbeat every ``heartbeat_s``; a
      client that hears nothing for ``dead_after_s`` raises ``RewardRankError``.
    - ``connect_timeout_s``: how long ranks wait for each other at rendezvous.
    - ``advertise_host``: hostname/IP reward ranks publish (default env ``R1V_REWARD_HOST``,
      else this host's FQDN; 127.0.0.1 when MASTER_ADDR is local).
    """

    backends: list[BackendSpec] = field(default_factory=lambda: [BackendSpec("format")])
    num_reward_ranks: int = 0
    retries: int = 2
    retry_backoff_s: float = 0.05
    max_failure_fraction: float = 0.1
    batch_size: int = 8
    call_timeout_s: float | None = None
    heartbeat_s: float = 1.0
    dead_after_s: float = 30.0
    connect_timeout_s: float = 300.0
    advertise_host: str | None = None

    def __post_init__(self):
        if not isinstance(self.backends, list) or not self.backends:
            raise ValueError("rewards.backends must be a non-empty list")
        self.backends = [
            b if isinstance(b, BackendSpec) else BackendSpec.from_dict(b, f"rewards.backends[{i}]")
            for i, b in enumerate(self.backends)
        ]
        metrics = [b.metric_name or getattr(backend_class(b.name), "default_metric", "accuracy") for b in self.backends]
        dup = sorted({m for m in metrics if metrics.count(m) > 1})
        if dup:
            raise ValueError(f"rewards.backends: metric_name {dup} used twice; give each backend its own metric_name")
        for name, lo in (("num_reward_ranks", 0), ("retries", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"rewards.{name} must be an int >= {lo}, got {v!r}")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ValueError(f"rewards.max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        if self.call_timeout_s is not None and not self.call_timeout_s > 0:
            raise ValueError(f"rewards.call_timeout_s must be > 0 or None, got {self.call_timeout_s!r}")
        for name in ("retry_backoff_s", "heartbeat_s", "dead_after_s", "connect_timeout_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"rewards.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.dead_after_s <= self.heartbeat_s:
            raise ValueError(f"rewards.dead_after_s ({self.dead_after_s}) must exceed rewards.heartbeat_s ({self.heartbeat_s})")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RewardConfig":
        """Build from plain data (e.g. the ``rewards:`` section of a YAML); unknown keys rejected."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"rewards: unknown keys {unknown}; known: {sorted(names)}")
        if os.environ.get("R1V_REWARD_RANKS"):
            d["num_reward_ranks"] = int(os.environ["R1V_REWARD_RANKS"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what is sent to the reward ranks and accepted by :meth:`from_dict`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["backends"] = [b.to_dict() for b in self.backends]
        return d
