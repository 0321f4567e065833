"""``make demo``: write tiny assets, train the tiny GRPO run on CPU, plot its reward curves.

Assets (written once, offline): a tiny random Qwen2.5-VL policy, a tiny ``vlm_scalar`` reward
model whose head clearly prefers a few words (PREFERRED) (so a tiny policy can raise its reward within
the run), and a synthetic RLHF-V-style dataset. Ends with
``reward: first=<mean of first 3 steps> last=<mean of last 3 steps>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# The reward model's "clear preference": each of these words in a completion adds ~1 to its score.
PREFERRED = ["yes", "red", "blue", "green", "circle", "square", "the", "is"]
CONFIG = Path(__file__).resolve().parent.parent / "launch" / "configs" / "tiny_cpu.yaml"


def write_assets(root: Path) -> dict[str, Path]:
    """Tiny policy, reward model and data under ``root`` (skipped when already there)."""
    from r1vfree_mcore.rewards.vlm_scalar import init_preference_head
    from r1vfree_mcore.testing.synthetic_data import write_synthetic_dataset
    from r1vfree_mcore.testing.tiny import TinySpec, write_tiny_checkpoint

    paths = {"policy": root / "policy", "reward": root / "reward", "data": root / "data"}
    if not (paths["policy"] / "config.json").exists():
        write_tiny_checkpoint(paths["policy"], TinySpec(family="qwen2_5_vl", num_layers=2, seed=0))
    if not (paths["reward"] / "value_head.json").exists():
        write_tiny_checkpoint(paths["reward"], TinySpec(family="qwen2_5_vl", num_layers=1, seed=1))
        init_preference_head(paths["reward"], tokens=PREFERRED)
    if not (paths["data"] / "dataset_info.json").exists():
        write_synthetic_dataset(paths["data"], 64, "disk", seed=0)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--assets", default="runs/tiny_assets")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", default="none", help="none (fresh run), auto (latest checkpoint in --run-dir) or a path")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)
    assets = write_assets(Path(a.assets))
    print(f"demo: tiny assets in {a.assets}; training (config {CONFIG.name}) into {a.run_dir}", flush=True)
    from r1vfree_mcore.train import cli
    from r1vfree_mcore.train.metrics import read_metrics
    from r1vfree_mcore.train.plot import plot_run

    args = ["--config", str(CONFIG), "--run-dir", a.run_dir, "--resume", a.resume,
            f"model.hf_dir={assets['policy']}", f"data.path={assets['data']}",
            f"reward.backends=[{{name: vlm_scalar, weight: 1.0, path: {assets['reward']}, use_extracted_answer: false}},"
            " {name: format, weight: 1.0}]"]
    if a.max_steps:
        args += ["--max-steps", str(a.max_steps)]
    rc = cli.main(args + list(a.overrides))
    if rc:
        return rc
    rows = read_metrics(a.run_dir)
    rewards = [r["reward"] for r in rows]
    first, last = sum(rewards[:3]) / len(rewards[:3]), sum(rewards[-3:]) / len(rewards[-3:])
    png = plot_run(a.run_dir)
    print(f"demo: {len(rows)} steps; metrics in {a.run_dir}/metrics.jsonl; curves in {png}")
    print(f"reward: first={first:.4f} last={last:.4f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
