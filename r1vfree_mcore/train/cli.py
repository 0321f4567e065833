"""``r1vfree-train``: the GRPO trainer's command line (one process, torchrun or srun).

    r1vfree-train --config launch/configs/NAME.yaml --run-dir DIR [--max-steps N]
                  [--resume auto|none|PATH] [--dry-run] [key.sub=value ...]

Ranks >= WORLD_SIZE - reward.num_ranks serve rewards; the others train. Exit codes: 0 done or
preempted (checkpoint saved), 2 configuration error, 1 any other failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="r1vfree-train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML recipe (launch/configs/*.yaml)")
    p.add_argument("--run-dir", required=True, help="metrics, logs and checkpoints go here")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--resume", default="auto", help="auto (from RUN_DIR/checkpoints/latest), none, or a path")
    p.add_argument("--dry-run", action="store_true", help="print the memory estimate per rank and exit")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p.parse_intermixed_args(argv)  # overrides may come before or after options


def main(argv=None) -> int:
    logging.basicConfig(level=os.environ.get("R1V_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from r1vfree_mcore.train.config import ConfigError, load_config, save_config

    overrides = list(args.overrides) + ([f"train.max_steps={args.max_steps}"] if args.max_steps else [])
    try:
        cfg = load_config(args.config, overrides)
        world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
        cfg.check_world(world)
    except ConfigError as exc:
        print(f"r1vfree: config error: {exc}", file=sys.stderr, flush=True)
        return 2
    if args.dry_run:
        from r1vfree_mcore.train.memory import print_estimate

        print_estimate(cfg, world)
        return 0
    return run(cfg, Path(args.run_dir), args.resume)


def run(cfg, run_dir: Path, resume: str) -> int:
    """Dispatch this process to its role and run it to the end."""
    import yaml

    from r1vfree_mcore.rewards import RewardTopology, init_policy_world, serve_rewards
    from r1vfree_mcore.train.setup import node_line

    if "WORLD_SIZE" not in os.environ and "SLURM_NTASKS" not in os.environ:
        # A plain single process: pick a free port so two local runs never collide.
        from r1vfree_mcore.parallel.ports import free_port

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    topo = RewardTopology.from_env(cfg.reward.num_ranks)
    role = "reward" if topo.is_reward_rank else "policy"
    print(node_line(role), flush=True)
    if topo.is_reward_rank:
        serve_rewards(cfg.reward.to_reward_config(), topo)
        return 0

    import torch.distributed as dist

    from r1vfree_mcore.train.config import save_config
    from r1vfree_mcore.train.loop import Trainer
    from r1vfree_mcore.train.setup import build_components

    init_policy_world(topo)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if dist.get_rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
    components = build_components(cfg, topo)
    trainer = Trainer(components, run_dir, config_yaml)
    try:
        trainer.resume(resume)
        status = trainer.fit(cfg.train.max_steps)
    finally:
        if components.scorer is not None:
            components.scorer.close()
    if dist.get_rank() == 0:
        print(f"r1vfree: {status} at step={trainer.step}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
