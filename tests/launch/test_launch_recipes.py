"""Every recipe in launch/configs/ loads with the trainer's schema and fits its target hardware."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from r1vfree_mcore.train.config import load_config
from r1vfree_mcore.train.memory import estimate

CONFIGS = Path(__file__).resolve().parents[2] / "launch" / "configs"
ALL_YAMLS = sorted(CONFIGS.glob("*.yaml"))
# GPU recipes carry a machine-readable target line: `# recipe: nodes=.. gpus_per_node=.. ...`.
RECIPES = [p for p in ALL_YAMLS if "# recipe:" in p.read_text()]
# The keys every GPU recipe spells out (model.family is read from hf_dir's config.json).
RECIPE_KEYS = {
    "model": {"hf_dir", "freeze_vision", "dtype", "precision", "fp8_recipe", "spec"},
    "parallel": {"tp", "pp", "pp_layer_split"},
    "data": {"path", "format", "min_pixels", "max_pixels", "max_prompt_length", "shuffle_seed"},
    "rollout": {"num_generations", "max_completion_length", "temperature", "top_p", "top_k",
                "prompts_per_step"},
    "reward": {"num_ranks", "max_failure_fraction", "backends"},
    "grpo": {"beta", "clip_eps_low", "clip_eps_high", "aggregation", "num_iterations",
             "mini_batch_size"},
    "optim": {"lr", "weight_decay", "warmup_steps", "schedule", "grad_clip", "adam_beta1",
              "adam_beta2"},
    "train": {"max_steps", "seed"},
    "checkpoint": {"every_steps", "hf_export_every"},
    "logging": {"report_to", "wandb_project", "rollout_log"},
}


def target(path: Path) -> dict[str, int]:
    line = re.search(r"^# recipe: (.*)$", path.read_text(), re.M).group(1)
    return {k: int(v) for k, v in (kv.split("=") for kv in line.split())}


def test_the_expected_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"qwen2_vl_2b.yaml", "qwen2_5_vl_3b.yaml", "qwen2_5_vl_7b.yaml",
            "qwen2_5_vl_7b_fp8.yaml"} <= names


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: p.name)
def test_every_yaml_loads_with_the_trainer_schema(path):
    cfg = load_config(path)
    assert cfg.rollout.num_generations >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_spells_out_every_key(path):
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(RECIPE_KEYS)
    for section, keys in RECIPE_KEYS.items():
        assert keys <= set(raw[section]), f"{path.name}: {section} lacks {keys - set(raw[section])}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_layout_fits_its_target_hardware(path):
    t = target(path)
    cfg = load_config(path)
    world = t["nodes"] * t["gpus_per_node"]
    if t["reward_nodes"]:
        # what launch.py / submit.sh --reward-nodes K pass: the last K nodes are reward ranks
        assert cfg.reward.num_ranks == t["reward_nodes"] * t["gpus_per_node"]
    dp = cfg.check_world(world)
    assert dp >= 1
    # Megatron's TP splits whole KV groups.
    assert t["kv_heads"] % cfg.parallel.tp == 0
    text = path.read_text()
    assert re.search(r"^# Hardware: .*GPU", text, re.M), "header names the hardware"
    # The header's policy memory is the trainer's own estimate for this layout (within 10%).
    quoted = re.search(r"^# Expected memory per GPU: policy ~(\d+) GiB", text, re.M)
    assert quoted, "header states the expected policy memory"
    peak = max(row["total"] for row in estimate(cfg, world))
    assert abs(int(quoted.group(1)) - peak) <= 0.1 * peak, f"dry-run estimate is {peak:.1f} GiB"
    assert peak <= 0.9 * 80, "fits an 80 GB GPU with a 10% margin"
    assert f"--config launch/configs/{path.name}" in text, "launch command names this file"
    # GPU recipes run bf16 through TransformerEngine.
    assert (cfg.model.dtype, cfg.model.spec) == ("bf16", "transformer_engine")


def test_2b_recipe_is_the_original_r1v_free_setup():
    cfg = load_config(CONFIGS / "qwen2_vl_2b.yaml")
    assert "Qwen2-VL-2B" in cfg.model.hf_dir
    assert cfg.check_world(8) == 6 and cfg.reward.num_ranks == 2  # 6 policy + 2 reward GPUs
    assert cfg.rollout.num_generations == 8
    assert (cfg.data.max_prompt_length, cfg.rollout.max_completion_length) == (512, 512)
    assert cfg.data.max_pixels == 401408
    assert cfg.grpo.beta == 0.04 and cfg.optim.lr == 1e-6
    assert cfg.rollout.temperature == 1.0
    names = [b["name"] for b in cfg.reward.backends]
    assert names == ["ixc_reward", "format"]


def test_fp8_recipe_differs_from_bf16_7b_only_in_precision():
    bf16 = yaml.safe_load((CONFIGS / "qwen2_5_vl_7b.yaml").read_text())
    fp8 = yaml.safe_load((CONFIGS / "qwen2_5_vl_7b_fp8.yaml").read_text())
    assert fp8["model"].pop("precision") == "fp8" and bf16["model"].pop("precision") == "bf16"
    assert fp8["model"].pop("fp8_recipe") in ("delayed", "current")
    assert bf16["model"].pop("fp8_recipe") is None
    assert fp8 == bf16
