"""``r1vfree-plot RUN_DIR``: reward curves from RUN_DIR/metrics.jsonl as one PNG.

Draws the charts R1V-Free published from W&B: total reward, format and accuracy rewards,
completion length and reward_std per step (with a moving average when there are many steps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from r1vfree_mcore.train.metrics import read_metrics

PANELS = (
    ("reward", "reward"),
    ("rewards/format", "format reward"),
    ("rewards/accuracy", "accuracy reward (reward model)"),
    ("completion_length", "completion length (tokens)"),
    ("reward_std", "reward std within groups"),
    ("kl", "KL to reference"),
)


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of a run to ``out`` (default RUN_DIR/reward_curves.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no rows to plot")
    out = Path(out) if out else Path(run_dir) / "reward_curves.png"
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if not pts:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color="#9ab", lw=1, label="per step")
        if len(ys) >= 10:
            ax.plot(xs, _smooth(list(ys), max(3, len(ys) // 10)), color="#135", lw=2, label="moving avg")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"R1V-Free GRPO: {Path(run_dir).name}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot reward curves of a r1vfree-train run.")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/reward_curves.png)")
    a = p.parse_args(argv)
    print(f"wrote {plot_run(a.run_dir, a.out)}")


if __name__ == "__main__":
    main()
