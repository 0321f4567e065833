"""End-to-end r1vfree-train runs on the tiny config: layouts, reward ranks, preemption, resume."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from r1vfree_mcore.train.metrics import REQUIRED_KEYS, read_metrics

from r1vfree_mcore.testing.trainer_run import ROOT, run_trainer, trainer_args, trainer_env

pytestmark = pytest.mark.slow


def _check_metrics(run_dir, steps):
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for k in REQUIRED_KEYS:
            assert k in r, k
            assert isinstance(r[k], (int, float)) and math.isfinite(r[k]), (k, r[k])
    return rows


def test_single_process_with_corrupt_images(tiny_assets, tmp_path):
    run = tmp_path / "run"
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "3", data=tiny_assets["jsonl"]))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = _check_metrics(run, 3)
    assert rows[-1]["data/images_skipped"] >= 1 and rows[-1]["data/images_converted"] >= 1
    assert "role=policy" in p.stdout and "r1vfree: done at step=3" in p.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert (run / "config.yaml").is_file() and (run / "rollouts.jsonl").is_file()


@pytest.mark.parametrize("layout", [["parallel.tp=2"], ["parallel.pp=2"]], ids=["tp2", "pp2"])
def test_parallel_layouts_with_a_reward_rank(tiny_assets, tmp_path, layout):
    run = tmp_path / "run"
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "3", "reward.num_ranks=1", *layout), nproc=3)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    _check_metrics(run, 3)
    assert "rank=2 world=3 role=reward" in p.stdout
    assert p.stdout.count("role=policy") == 2


def test_sigterm_checkpoint_and_exact_resume(tiny_assets, tmp_path):
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    p = run_trainer(trainer_args(tiny_assets, ref_run, "--max-steps", "5"))
    assert p.returncode == 0, p.stderr[-3000:]
    ref = read_metrics(ref_run)

    env = trainer_env()
    proc = subprocess.Popen([sys.executable, "-m", "r1vfree_mcore.train.cli",
                             *trainer_args(tiny_assets, run, "--max-steps", "5")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # SIGTERM while step 2 is running
        out.append(line)
        if line.startswith("r1vfree: step=1 "):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline
    rest, err = proc.communicate(timeout=240)
    text = "".join(out) + rest
    assert proc.returncode == 0, err[-3000:]
    # The step running when the signal lands finishes, is checkpointed, and the run exits 0.
    stopped = int(text.split("r1vfree: preempted at step=")[1].split(",")[0])
    assert 2 <= stopped <= 4, text
    assert f"r1vfree: preempted at step={stopped}, checkpoint saved" in text
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:06d}"

    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "5"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"r1vfree: resumed from step={stopped}" in p.stdout
    got = read_metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(got, ref):  # bit-exact: same rollouts, rewards, losses and grads
        for k in ("reward", "loss", "kl", "grad_norm", "completion_length"):
            assert a[k] == b[k], (a["step"], k, a[k], b[k])

    # The same checkpoint resumes at another layout (TP=2).
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "6", "parallel.tp=2"), nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "r1vfree: resumed from step=5" in p.stdout
    assert read_metrics(run)[-1]["step"] == 6


def test_bad_config_fails_fast(tiny_assets, tmp_path):
    p = run_trainer(trainer_args(tiny_assets, tmp_path / "r", "grpo.nope=1"))
    assert p.returncode == 2 and "r1vfree: config error: grpo.nope" in p.stderr
    p = run_trainer(["--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")])
    assert p.returncode == 2 and "config file not found" in p.stderr
