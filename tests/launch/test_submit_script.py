"""slurm/submit.sh: script choice, sbatch options and job environment (--dry-run, no Slurm)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "slurm" / "submit.sh"
RECIPE = "launch/configs/qwen2_vl_2b.yaml"


def submit(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "REWARD_NODES")}
    return subprocess.run([str(SUBMIT), *args], capture_output=True, text=True, timeout=30,
                          cwd=REPO, env=env)


def test_single_node_dry_run():
    out = submit("--config", RECIPE, "--gpus-per-node", "8", "--time", "2-00:00:00",
                 "--dry-run", "--", "--max-steps", "10", "optim.lr=2e-6")
    assert out.returncode == 0, out.stderr
    env_line, sbatch_line = out.stdout.splitlines()
    assert f"CONFIG={REPO / RECIPE} " in env_line
    assert f"RUN_DIR={REPO}/runs/qwen2_vl_2b " in env_line
    assert "NPROC_PER_NODE=8 " in env_line  # defaults to the GPUs per node
    assert "TRAIN_ARGS='--max-steps 10 optim.lr=2e-6'" in env_line
    assert sbatch_line.split() == [
        "sbatch", "--parsable", f"--chdir={REPO}",
        f"--output={REPO}/runs/qwen2_vl_2b/logs/%x-%j.out", "--nodes=1", "--time=2-00:00:00",
        "--gres=gpu:8", f"{REPO}/slurm/train_1node.sbatch"]


def test_multi_node_with_reward_node_and_export_chain(tmp_path):
    out = submit("--config", RECIPE, "--nodes", "4", "--gpus-per-node", "8", "--reward-nodes",
                 "1", "--run-dir", str(tmp_path / "r"), "--export-hf", "--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "REWARD_NODES=1 " in lines[0]
    assert lines[1].endswith(f"--nodes=4 --gres=gpu:8 {REPO}/slurm/train_multinode.sbatch")
    assert "--dependency=afterok:<TRAIN_JOB_ID>" in lines[2]
    assert lines[2].endswith("slurm/export_hf.sbatch")


def test_cpu_submission_requests_no_gpus():
    out = submit("--config", RECIPE, "--nodes", "2", "--nproc-per-node", "2", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "--gres" not in out.stdout and "NPROC_PER_NODE=2 " in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--config", "launch/configs/nope.yaml"), "config file not found"),
        (("--config", RECIPE, "--nodes", "2", "--reward-nodes", "2"), "must be < --nodes=2"),
        (("--config", RECIPE, "--nodes", "0"), "--nodes must be a positive integer"),
        (("--config", RECIPE, "--frobnicate"), "unknown option --frobnicate"),
        (("--nodes", "1"), "--config is required"),
        (("--config", RECIPE, "--", "a=b c"), "whitespace"),
    ],
)
def test_bad_submissions_are_refused_before_sbatch(args, message):
    out = submit(*args, "--dry-run")
    assert out.returncode == 2
    assert message in out.stderr
