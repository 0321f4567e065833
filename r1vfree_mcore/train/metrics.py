"""Metric sinks: JSONL (always), TensorBoard and wandb (optional), and the per-sample rollout log.

Only the logging rank (global rank 0) creates sinks; other ranks get a no-op logger.
wandb runs offline when ``WANDB_MODE=offline`` is set or no API key is configured, so a run
never needs the network.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Keys every step writes (the contract of RUN_DIR/metrics.jsonl).
REQUIRED_KEYS = (
    "step", "reward", "rewards/format", "rewards/accuracy", "reward_std", "completion_length",
    "kl", "grad_norm", "lr", "tokens_per_s", "time/rollout", "time/reward_wait", "time/train",
)


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


class MetricsLogger:
    """Writes one JSON object per step to RUN_DIR/metrics.jsonl and mirrors to TB/wandb."""

    def __init__(self, run_dir: str | Path, report_to: list[str], config: dict | None = None,
                 project: str = "r1vfree-mcore", enabled: bool = True, rollout_log: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = self._wandb = None
        self._rollout_log = rollout_log
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a")
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if "wandb" in report_to:
            import wandb

            if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
                os.environ["WANDB_MODE"] = "offline"  # no key: never block on the network
            self._wandb = wandb.init(project=project, dir=str(self.run_dir), config=config or {},
                                     resume="allow", id=self._wandb_id())

    def _wandb_id(self) -> str:
        f = self.run_dir / "wandb_id.txt"
        if not f.exists():
            import uuid

            f.write_text(uuid.uuid4().hex[:12])
        return f.read_text().strip()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def log_rollouts(self, step: int, samples: list[dict]) -> None:
        """Per-sample prompt, completion and each reward (R1V-Free's DEBUG_MODE log)."""
        if not (self.enabled and self._rollout_log):
            return
        with open(self.run_dir / "rollouts.jsonl", "a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in s.items()}}) + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of RUN_DIR/metrics.jsonl; the last row wins for a step written twice (resume)."""
    rows: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[int(r["step"])] = r
    return [rows[k] for k in sorted(rows)]
