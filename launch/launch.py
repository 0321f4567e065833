#!/usr/bin/env python3
"""Start one torchrun on this node for r1vfree-train (single machine, or one srun task per node).

    python launch/launch.py [launcher options] --config CFG --run-dir DIR [trainer args ...]

Launcher options (everything else goes to the trainer unchanged):
  --nproc-per-node N   processes on this node (default: NPROC_PER_NODE, SLURM_GPUS_ON_NODE,
                       visible GPUs, else 1)
  --master-addr HOST   rendezvous host (default: first host of the Slurm job, or MASTER_ADDR)
  --master-port PORT   rendezvous port (default: 20000 + SLURM_JOB_ID % 20000, or MASTER_PORT)
  --reward-nodes K     the last K nodes run only reward ranks (adds reward.num_ranks=K*nproc)
  --module M / --script PATH   what torchrun runs (default: -m r1vfree_mcore.train.cli)
  --print-command      print the torchrun command and exit
Environment equivalents: NPROC_PER_NODE, R1VFREE_MASTER_ADDR, R1VFREE_MASTER_PORT, REWARD_NODES,
NNODES / NODE_RANK (outside Slurm).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from r1vfree_mcore.launch_env import DEFAULT_MODULE, LaunchError, derive_plan, torchrun_argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        usage="launch.py [launcher options] TRAINER_ARGS...", allow_abbrev=False, add_help=False
    )
    parser.add_argument("--launcher-help", action="help", help="show this help and exit")
    parser.add_argument("--nproc-per-node", type=int)
    parser.add_argument("--master-addr")
    parser.add_argument("--master-port", type=int)
    parser.add_argument("--reward-nodes", type=int)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--module")
    target.add_argument("--script")
    parser.add_argument("--print-command", action="store_true")
    opts, trainer_args = parser.parse_known_args(argv)
    try:
        plan = derive_plan(
            os.environ,
            nproc_per_node=opts.nproc_per_node,
            master_addr=opts.master_addr,
            master_port=opts.master_port,
            reward_nodes=opts.reward_nodes,
        )
        cmd = torchrun_argv(
            plan,
            sys.executable,
            trainer_args,
            module=None if opts.script else (opts.module or DEFAULT_MODULE),
            script=opts.script,
        )
    except LaunchError as exc:
        print(f"r1vfree-launch: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"r1vfree-launch: node_rank={plan.node_rank}/{plan.nnodes} nproc={plan.nproc_per_node} "
        f"master={plan.master_addr}:{plan.master_port} reward_nodes={plan.reward_nodes}",
        flush=True,
    )
    if opts.print_command:
        print(shlex.join(cmd))
        return 0
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main())
