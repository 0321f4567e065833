"""r1vfree-train under the real slurm/ scripts on a two-node Slurm: training, preemption, errors.

Uses launch/configs/tiny_cpu.yaml (CPU, gloo; its assets written to a temporary directory) with
one process per node and the second node as the reward node (--reward-nodes 1 ->
reward.num_ranks=1): rank 0 = policy on n1, rank 1 = reward on n2.
For developing the scripts without the trainer: R1VFREE_SLURM_TEST_TRAINER=PATH runs a stand-in
script instead of the trainer module, R1VFREE_SLURM_TEST_CONFIG=PATH another recipe.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
import yaml
from slurm_jobs import REPO, job_log

STAND_IN = os.environ.get("R1VFREE_SLURM_TEST_TRAINER")
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = REPO / "launch" / "configs" / "tiny_cpu.yaml"
# tiny_cpu.yaml expects the assets of `python -m r1vfree_mcore.demo` here (relative to the cwd).
ASSETS_PREFIX = "runs/tiny_assets/"
RANK_LINE = re.compile(r"r1vfree: rank=(\d+) world=(\d+) role=(\w+) node=(\d+)")


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> str:
    """tiny_cpu.yaml with its asset paths pointed at freshly written tiny assets (not the repo)."""
    override = os.environ.get("R1VFREE_SLURM_TEST_CONFIG")
    if override:
        return override
    from r1vfree_mcore.demo import write_assets

    root = tmp_path_factory.mktemp("tiny")
    write_assets(root / "assets")

    def repoint(node):
        if isinstance(node, dict):
            return {k: repoint(v) for k, v in node.items()}
        if isinstance(node, list):
            return [repoint(v) for v in node]
        if isinstance(node, str) and node.startswith(ASSETS_PREFIX):
            return str(root / "assets" / node[len(ASSETS_PREFIX):])
        return node

    recipe = root / "tiny_cpu.yaml"
    recipe.write_text(yaml.safe_dump(repoint(yaml.safe_load(TINY.read_text()))))
    assert str(root) in recipe.read_text(), f"{TINY} no longer points at {ASSETS_PREFIX}"
    return str(recipe)


def _submit(slurm, recipe, run_dir, *trainer_args):
    knobs = {"LAUNCH_SCRIPT": STAND_IN} if STAND_IN else {}
    ids = slurm.submit("--config", recipe, "--run-dir", str(run_dir), "--nodes", "2",
                       "--nproc-per-node", "1", "--reward-nodes", "1", "--", *trainer_args,
                       **knobs)
    return ids["TRAIN_JOB_ID"]


def _metric_steps(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


def _rank_lines(log_text):
    return {(int(r), int(w), role, int(n)) for r, w, role, n in RANK_LINE.findall(log_text)}


def test_two_node_job_trains_three_steps(slurm, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    job = _submit(slurm, tiny_recipe, run_dir, "--max-steps", "3")
    info = slurm.wait(job, timeout=240)
    log = job_log(run_dir, job).read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    # One policy rank on node 0, one reward rank on node 1 (the reward node).
    assert _rank_lines(log) == {(0, 2, "policy", 0), (1, 2, "reward", 1)}, log[-4000:]
    assert _metric_steps(run_dir) == [1, 2, 3]
    assert re.search(r"^r1vfree: step=3\b", log, re.M)
    assert not (run_dir / "PREEMPT").exists()


def test_usr1_checkpoints_requeues_and_resumes_without_losing_a_step(slurm, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    max_steps = 5
    job = _submit(slurm, tiny_recipe, run_dir, "--max-steps", str(max_steps))
    log_path = None
    deadline = time.monotonic() + 180
    while log_path is None and time.monotonic() < deadline:
        logs = list((run_dir / "logs").glob(f"*-{job}.out"))
        log_path = logs[0] if logs else time.sleep(0.3)
    assert log_path is not None, "the job never started"
    slurm.wait_for_text(log_path, r"r1vfree: step=1\b", timeout=180)
    slurm.run("scancel", "--signal=USR1", "--batch", str(job))

    preempted = slurm.wait_for_text(log_path, r"r1vfree: preempted at step=(\d+)", timeout=120)
    step = int(preempted.group(1))
    assert 1 <= step < max_steps
    # Requeued (restart count 1), resumed from the checkpoint, then ran to the end.
    info = slurm.wait(job, timeout=240, until=lambda i: i.get("Restarts") == "1")
    log = log_path.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert f"r1vfree-slurm: job={job} restart=1 " in log
    assert re.search(rf"r1vfree: resumed from step={step}\b", log), log[-4000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (run_dir / "checkpoints" / latest).is_dir()  # the trainer may also save at the end
    assert _metric_steps(run_dir) == list(range(1, max_steps + 1))  # none lost, none repeated
    assert not (run_dir / "PREEMPT").exists()


def test_impossible_layout_fails_fast_with_readable_error(slurm, tiny_recipe, tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    job = _submit(slurm, tiny_recipe, run_dir, "--max-steps", "2", "parallel.tp=3")  # 1 policy rank
    info = slurm.wait(job, timeout=120)
    log = job_log(run_dir, job).read_text()
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", log[-4000:]
    assert info["Restarts"] == "0"
    assert re.search(r"^r1vfree: config error: .*parallel\.tp", log, re.M), log[-4000:]
    assert time.monotonic() - start < 90
    assert not (run_dir / "metrics.jsonl").exists()
