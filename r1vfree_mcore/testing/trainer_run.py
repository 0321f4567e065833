"""Run ``r1vfree-train`` on the tiny config from tests (one process or under torchrun)."""

import os
import subprocess
import sys
from pathlib import Path

from r1vfree_mcore.parallel.ports import free_port

LAUNCHER_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "TORCHELASTIC_RUN_ID")
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "launch" / "configs" / "tiny_cpu.yaml"
def trainer_args(assets, run_dir, *extra, data=None):
    """CLI arguments of a short tiny run using the assets of :func:`r1vfree_mcore.demo.write_assets`."""
    return [
        "--config", str(CONFIG), "--run-dir", str(run_dir),
        f"model.hf_dir={assets['policy']}", f"data.path={data or assets['data']}",
        f"reward.backends=[{{name: vlm_scalar, weight: 1.0, path: {assets['reward']}, "
        "use_extracted_answer: false}, {name: format, weight: 1.0}]",
        "rollout.max_completion_length=6", "rollout.num_generations=4", "checkpoint.every_steps=0",
        "logging.report_to=[jsonl]", *extra,
    ]


def trainer_env(**extra) -> dict:
    """The environment of a trainer subprocess started from a test.

    A test process that set up its own process group leaves MASTER_PORT/RANK/WORLD_SIZE in its
    environment, and its store still listens there: the trainer must not inherit them.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_trainer(args, nproc=1, timeout=300, **popen):
    """Run r1vfree-train (under torchrun when nproc > 1); returns the CompletedProcess."""
    env = trainer_env()
    if nproc == 1:
        cmd = [sys.executable, "-m", "r1vfree_mcore.train.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--master-port", str(free_port()), "-m", "r1vfree_mcore.train.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **popen)

