"""Helpers for the Slurm tests: submit jobs to the test cluster and wait on them."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from slurm_cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
# Knobs of slurm/*.sbatch that must not leak from the developer's shell into test jobs.
JOB_KNOBS = ("CONFIG", "RUN_DIR", "NPROC_PER_NODE", "REWARD_NODES", "TRAIN_ARGS", "SRUN_ARGS",
             "LAUNCH_SCRIPT", "MASTER_PORT_OVERRIDE", "R1VFREE_MASTER_ADDR", "R1VFREE_MASTER_PORT",
             "MASTER_ADDR", "MASTER_PORT", "VENV", "HF_OUT", "NNODES", "NODE_RANK")


class Slurm:
    """Submit jobs to the test cluster and wait for them, every wait bounded by a timeout."""

    def __init__(self, cluster: SlurmCluster):
        self.cluster = cluster

    def env(self, **knobs: str) -> dict[str, str]:
        env = {k: v for k, v in self.cluster.env().items()
               if k not in JOB_KNOBS and not (k.startswith("SLURM_") and k != "SLURM_CONF")}
        env.update(PYTHON=sys.executable, R1VFREE_ROOT=str(REPO), PYTHONUNBUFFERED="1")
        env.update(knobs)
        return env

    def run(self, *cmd: str, env: dict | None = None, timeout: float = 30) -> str:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), cwd=REPO)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc.stdout

    def submit(self, *args: str, **knobs: str) -> dict[str, int]:
        """slurm/submit.sh ARGS with extra environment knobs; returns {'TRAIN_JOB_ID': id, ...}."""
        out = self.run(str(REPO / "slurm" / "submit.sh"), *args, env=self.env(**knobs))
        return {k: int(v) for k, v in re.findall(r"^(\w+_JOB_ID)=(\d+)$", out, re.M)}

    def info(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout: float = 120, until=None) -> dict[str, str]:
        """Poll until the job reaches a final state (and ``until(info)`` holds, if given)."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.info(job_id)
            if info.get("JobState") in FINAL_STATES and (until is None or until(info)):
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not done after {timeout:.0f}s: {info}")

    def wait_for_text(self, path: Path, pattern: str, timeout: float = 120) -> re.Match:
        """Poll a (log) file until ``pattern`` matches; returns the match."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                m = re.search(pattern, path.read_text(errors="replace"))
                if m:
                    return m
            time.sleep(0.3)
        text = path.read_text(errors="replace") if path.exists() else "<no file>"
        raise AssertionError(f"{pattern!r} not in {path} after {timeout:.0f}s:\n{text[-3000:]}")


def job_log(run_dir: Path, job_id: int) -> Path:
    """The job log written by slurm/submit.sh's --output=RUN_DIR/logs/%x-%j.out."""
    logs = sorted((run_dir / "logs").glob(f"*-{job_id}.out"))
    assert logs, f"no log for job {job_id} in {run_dir / 'logs'}"
    return logs[0]
