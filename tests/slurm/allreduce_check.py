"""torchrun worker for the Slurm infra test: one gloo all_reduce across every node of the job.

Started by launch/launch.py --script (same arguments as the trainer; only --run-dir is used).
Each rank writes RUN_DIR/allreduce/rank<r>.json with what it saw, then sleeps ALLREDUCE_SLEEP
seconds (default 0), standing in for a trainer that ignores RUN_DIR/PREEMPT.
"""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    args, _ = parser.parse_known_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    seen = {
        "rank": rank,
        "world": world,
        "sum": value.item(),
        "node": int(os.environ.get("SLURM_NODEID", 0)),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "master_addr": os.environ["MASTER_ADDR"],
        "master_port": int(os.environ["MASTER_PORT"]),
        "restart": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        "argv": sys.argv[1:],
    }
    out = Path(args.run_dir) / "allreduce"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    print(f"allreduce: rank={rank} world={world} node={seen['node']} sum={seen['sum']} "
          f"host={socket.gethostname()}", flush=True)
    time.sleep(float(os.environ.get("ALLREDUCE_SLEEP", 0)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
