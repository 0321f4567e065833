"""Registry of reward backends: name -> class, imported only when chosen.

A backend is a class built as ``cls(**kwargs)`` from its config entry, with

- ``score(requests: list[RewardRequest]) -> list[float]`` (one float per request, in order;
  raise on failure, never return a placeholder), and
- class attributes ``default_metric`` (the name under ``rewards/``) and ``default_min_score``
  (lower clip applied unless the config overrides it; None = no clip).

Built-ins: ``format``, ``vlm_scalar``, ``ixc_reward``, ``http_judge``. Others are added with
:func:`register_backend` or named directly as ``"package.module:Class"``.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY: dict[str, Any] = {
    "format": "r1vfree_mcore.rewards.format:FormatBackend",
    "vlm_scalar": "r1vfree_mcore.rewards.vlm_scalar:VLMScalarBackend",
    "ixc_reward": "r1vfree_mcore.rewards.ixc:IXCRewardBackend",
    "http_judge": "r1vfree_mcore.rewards.http_judge:HTTPJudgeBackend",
}


def register_backend(name: str, cls: Any) -> None:
    """Register ``cls`` (or an ``"module:Class"`` string) under ``name``."""
    _REGISTRY[name] = cls


def is_known_backend(name: str) -> bool:
    """True for registered names and ``"module:Class"`` import paths."""
    return name in _REGISTRY or ":" in name


def backend_names() -> list[str]:
    """Registered backend names."""
    return sorted(_REGISTRY)


def backend_class(name: str) -> Any:
    """Resolve ``name`` to its class (imports the module on first use)."""
    target = _REGISTRY.get(name, name)
    if isinstance(target, str):
        if ":" not in target:
            raise KeyError(f"unknown reward backend {name!r}; known: {backend_names()}")
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target


def build_backend(name: str, kwargs: dict[str, Any]) -> Any:
    """Instantiate backend ``name`` with ``kwargs``; errors name the backend."""
    cls = backend_class(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"reward backend {name!r}: bad arguments {sorted(kwargs)}: {exc}") from exc
