"""--dry-run memory estimates: arithmetic checks and the 7B recipes fit 80 GB GPUs."""

import re
from pathlib import Path

import pytest

from r1vfree_mcore.train.config import load_config
from r1vfree_mcore.train.memory import estimate, layer_params, print_estimate, shapes_for

CONFIGS = Path(__file__).resolve().parents[2] / "launch" / "configs"


def _world(path: Path) -> int:
    m = re.search(r"nodes=(\d+) gpus_per_node=(\d+)", path.read_text())
    return int(m[1]) * int(m[2])


def test_param_count_matches_published_7b():
    s = shapes_for("/nowhere/Qwen2.5-VL-7B-Instruct")
    from r1vfree_mcore.train.memory import vision_params

    total = s.layers * layer_params(s) + 2 * s.vocab * s.hidden + vision_params(s)
    assert 8.2e9 < total < 8.4e9  # Qwen2.5-VL-7B has 8.29B parameters


def test_layout_arithmetic(tmp_path):
    cfg = load_config(CONFIGS / "qwen2_5_vl_7b.yaml", ["parallel.tp=2", "grpo.beta=0", "reward.num_ranks=0"])
    one = estimate(cfg, 2)[0]
    assert one["reference"] == 0.0
    cfg4 = load_config(CONFIGS / "qwen2_5_vl_7b.yaml", ["parallel.tp=4", "grpo.beta=0", "reward.num_ranks=0"])
    four = estimate(cfg4, 4)[0]
    assert four["weights"] == pytest.approx(one["weights"] / 2, rel=1e-6)
    with pytest.raises(FileNotFoundError, match="model.hf_dir"):
        shapes_for(str(tmp_path / "Unknown-Model"))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("qwen2_5_vl_7b*.yaml")))
def test_7b_recipes_fit_80gb(name, capsys):
    path = CONFIGS / name
    peak = print_estimate(load_config(path), _world(path), gpu_gib=80)
    assert peak <= 72, f"{name}: {peak:.1f} GiB per rank"
    assert "fits in 80 GB" in capsys.readouterr().out
