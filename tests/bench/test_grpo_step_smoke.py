"""bench/grpo_step.py: the shared rewards, the step summary, and an ours-only smoke run (no trl)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rewards_same_on_both_sides():
    r = _load("_grpo_step_rewards")
    texts = ["<think>a</think> <answer>b</answer>", "aaab", ""]
    assert r.diversity_reward(texts[1:]) == [0.5, 0.0]
    # TRL hands conversational completions (plain or content-part lists); ours hands plain text.
    conv = [[{"role": "assistant", "content": t}] for t in texts]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in texts]
    ours = [r.DiversityBackend().score([type("R", (), {"completion": t}) for t in texts])]
    assert r.trl_diversity_reward(conv) == r.trl_diversity_reward(parts) == ours[0]
    assert r.trl_format_reward(conv) == [1.0, 0.0, 0.0]


def test_summary_pools_rounds_after_warmup():
    g = _load("grpo_step")
    rounds = [{"step_s": [9.0, 1.0, 3.0, 2.0], "cpu_s": [1.0] * 4, "completion_length": [1, 4, 4, 4], "rss_mib": 5.0,
               "step_rss_mib": 4.0},
              {"step_s": [8.0, 5.0, 6.0, 7.0], "cpu_s": [2.0] * 4, "completion_length": [1, 4, 4, 4], "rss_mib": 7.0,
               "step_rss_mib": 3.0}]
    s = g.summarize(rounds, 1, 8)
    assert s["steps"] == 6 and s["step_s"] == 4.0 and s["min_step_s"] == 1.0  # median of 1 2 3 5 6 7
    assert s["cpu_s"] == 1.5
    assert s["round_medians"] == [2.0, 6.0] and s["rss_mib"] == 7.0 and s["tokens_per_s"] == 8 * 4 / 4.0
    assert s["step_rss_mib"] == 4.0
    with pytest.raises(ValueError, match="--steps"):
        g.summarize([{"step_s": [1.0], "cpu_s": [1.0], "completion_length": [1], "rss_mib": 1.0, "step_rss_mib": 1.0}],
                    1, 8)


@pytest.mark.slow
def test_ours_only_smoke(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "grpo_step.py"), "--ours-only", "--steps", "2", "--warmup", "1", "--rounds", "1",
           "--generations", "2", "--prompts", "1", "--completion-length", "4", "--work-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"bench": "grpo_step", "time_ratio_vs_trl": None, "rss_ratio_vs_trl": None}
    row = [c.strip() for c in next(line for line in lines if line.startswith("| ours")).strip("| ").split("|")]
    step_s, min_step_s, cpu_s, length, rss, proc_rss = (float(row[i]) for i in (1, 2, 4, 5, 7, 8))
    assert 0 < min_step_s <= step_s and cpu_s > 0 and rss > 200  # a real trainer process ran (torch + megatron)
    assert rss <= proc_rss  # the steps' peak is part of the whole run's
    assert length == 4.0  # EOS is silenced in the bench's checkpoint: every completion is full length
    metrics = [json.loads(x) for x in (tmp_path / "round0" / "ours_run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["bench/maxrss_mib"] > 200 for m in metrics)
