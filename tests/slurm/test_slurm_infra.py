"""The Slurm scripts and launcher on a real two-node Slurm, without the trainer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from slurm_jobs import REPO, job_log

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ALLREDUCE = "tests/slurm/allreduce_check.py"


def _dummy_config(tmp_path: Path) -> Path:
    # launch.py passes --config through; the all-reduce worker ignores its content.
    cfg = tmp_path / "dummy.yaml"
    cfg.write_text("train: {max_steps: 1}\n")
    return cfg


def test_two_node_torchrun_allreduce_and_export_chain(slurm, tmp_path):
    """srun -> launch.py -> torchrun on both nodes: ranks, node ranks and rendezvous derived
    from the Slurm environment; the dependent export job runs only after training ends."""
    run_dir = tmp_path / "run"
    ids = slurm.submit(
        "--config", str(_dummy_config(tmp_path)), "--run-dir", str(run_dir), "--nodes", "2",
        "--nproc-per-node", "2", "--export-hf", "--", "--max-steps", "3",
        LAUNCH_SCRIPT=ALLREDUCE,
    )
    train, export = ids["TRAIN_JOB_ID"], ids["EXPORT_JOB_ID"]
    assert f"afterok:{train}" in slurm.info(export)["Dependency"]
    info = slurm.wait(train, timeout=120)
    log = job_log(run_dir, train).read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log

    seen = [json.loads(p.read_text()) for p in sorted((run_dir / "allreduce").glob("rank*.json"))]
    assert sorted(s["rank"] for s in seen) == [0, 1, 2, 3]
    assert {s["world"] for s in seen} == {4}
    assert {s["sum"] for s in seen} == {1.0 + 2 + 3 + 4}
    # torchrun's static rendezvous: node k holds ranks [2k, 2k + 2).
    assert {(s["rank"], s["node"], s["local_rank"]) for s in seen} == {
        (0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)}
    assert {s["master_addr"] for s in seen} == {"n1"}
    assert {s["master_port"] for s in seen} == {20000 + train % 20000}
    assert seen[0]["argv"][:6] == ["--config", str(tmp_path / "dummy.yaml"), "--run-dir",
                                   str(run_dir), "--resume", "auto"]
    assert seen[0]["argv"][6:] == ["--max-steps", "3"]
    assert f"r1vfree-slurm: job={train} restart=0 nodes=2" in log

    # The export job starts after training and fails readably: there is no checkpoint here.
    info = slurm.wait(export, timeout=60)
    assert info["JobState"] == "FAILED"
    assert "no " + str(run_dir / "checkpoints" / "latest") in job_log(run_dir, export).read_text()


def test_missing_config_fails_fast_with_readable_error(slurm, tmp_path):
    """A bad recipe path stops the job before any node starts Python, with the trainer's wording."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    missing = tmp_path / "no_such_recipe.yaml"
    env = slurm.env(CONFIG=str(missing), RUN_DIR=str(run_dir))
    start = time.monotonic()
    job = int(slurm.run("sbatch", "--parsable", f"--output={run_dir}/job-%j.out",
                        str(REPO / "slurm" / "train_1node.sbatch"), env=env).split(";")[0])
    info = slurm.wait(job, timeout=60)
    assert time.monotonic() - start < 30
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "2:0")
    assert info["Restarts"] == "0"
    log = (run_dir / f"job-{job}.out").read_text()
    assert f"r1vfree: config error: config file not found: {missing}" in log
    assert "r1vfree-launch" not in log  # nothing was launched


def test_usr1_without_trainer_checkpoint_is_not_requeued(slurm, tmp_path):
    """USR1 reaches the batch shell (trap touches PREEMPT); a run that ends without consuming
    PREEMPT (no checkpoint taken) must not be requeued, and the stale file is removed."""
    run_dir = tmp_path / "run"
    job = slurm.submit("--config", str(_dummy_config(tmp_path)), "--run-dir", str(run_dir),
                       LAUNCH_SCRIPT=ALLREDUCE, ALLREDUCE_SLEEP="6")["TRAIN_JOB_ID"]
    slurm.wait_for_text(run_dir / "logs" / f"r1vfree-1node-{job}.out", r"allreduce: rank=0",
                        timeout=90)
    slurm.run("scancel", "--signal=USR1", "--batch", str(job))
    info = slurm.wait(job, timeout=60)
    log = job_log(run_dir, job).read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "0"), log
    assert "caught USR1" in log
    assert "not requeued: the trainer finished" in log
    assert not (run_dir / "PREEMPT").exists()
