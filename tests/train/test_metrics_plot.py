"""Metrics sinks write what the contract says; the plot is drawn from the JSONL."""

import json

from r1vfree_mcore.train.metrics import MetricsLogger, read_metrics
from r1vfree_mcore.train.plot import plot_run


def test_jsonl_tensorboard_wandb_offline_and_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    m = MetricsLogger(tmp_path, ["jsonl", "tensorboard", "wandb"], config={"a": 1})
    for step in range(1, 13):
        m.log(step, {"reward": 0.1 * step, "rewards/format": 0.5, "kl": float("nan"), "completion_length": 10})
    m.log(12, {"reward": 9.0})  # a step logged again after a resume: the last row wins
    m.log_rollouts(1, [{"prompt": "p", "completion": "c", "rewards/format": 1.0}])
    m.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 13)) and rows[-1]["reward"] == 9.0
    assert rows[0]["kl"] is None  # NaN is written as null, never as invalid JSON
    assert list((tmp_path / "tensorboard").glob("events.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert json.loads((tmp_path / "rollouts.jsonl").read_text())["completion"] == "c"
    png = plot_run(tmp_path)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_disabled_logger_writes_nothing(tmp_path):
    m = MetricsLogger(tmp_path / "x", ["jsonl"], enabled=False)
    m.log(1, {"reward": 1.0})
    m.close()
    assert not (tmp_path / "x").exists()
