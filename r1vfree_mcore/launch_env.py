"""Derive a torchrun launch (nodes, node rank, processes per node, rendezvous) from the environment.

One torchrun runs per node. Under Slurm (one ``srun`` task per node) the node rank is
SLURM_NODEID, the node count SLURM_JOB_NUM_NODES, the master the first host of
SLURM_JOB_NODELIST and the port 20000 + SLURM_JOB_ID % 20000, so every node of a job agrees on
them without talking to each other. Outside Slurm: NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT
(defaults: one node, 127.0.0.1:29500).

torchrun's static rendezvous gives node ``k`` the global ranks ``[k * nproc, (k + 1) * nproc)``,
so "the last K nodes are reward nodes" is the same as ``reward.num_ranks = K * nproc`` (the
trainer treats global ranks >= WORLD_SIZE - reward.num_ranks as reward ranks).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_MODULE = "r1vfree_mcore.train.cli"
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


class LaunchError(ValueError):
    """The environment or the options do not describe a consistent launch."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything torchrun needs on one node."""

    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    reward_nodes: int = 0

    def __post_init__(self):
        for name in ("nnodes", "nproc_per_node"):
            if getattr(self, name) < 1:
                raise LaunchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.node_rank < self.nnodes:
            raise LaunchError(f"node_rank {self.node_rank} is outside [0, nnodes={self.nnodes})")
        if not 0 < self.master_port < 65536:
            raise LaunchError(f"master_port {self.master_port} is not a TCP port")
        if not 0 <= self.reward_nodes < self.nnodes:
            raise LaunchError(
                f"reward_nodes={self.reward_nodes} must leave at least one policy node "
                f"(nnodes={self.nnodes})"
            )

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def reward_ranks(self) -> int | None:
        """reward.num_ranks implied by whole reward nodes, or None to keep the config's value."""
        return self.reward_nodes * self.nproc_per_node if self.reward_nodes else None


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm host list such as ``gpu-[01-03,07],login1`` (no nested brackets)."""
    hosts: list[str] = []
    for prefix, ranges, suffix in re.findall(r"([^,\[]*)(?:\[([^\]]*)\])?([^,\[]*),?", hostlist):
        if not (prefix or ranges or suffix):
            continue
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(f"{prefix}{lo}{suffix}")
                continue
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise LaunchError(f"cannot parse host range {part!r} in {hostlist!r}")
            hosts += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return hosts


def slurm_hostnames(hostlist: str) -> list[str]:
    """``scontrol show hostnames`` when scontrol exists (it knows every syntax), else our parser."""
    if shutil.which("scontrol"):
        proc = subprocess.run(
            ["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True, timeout=30
        )
        if proc.returncode == 0 and proc.stdout.split():
            return proc.stdout.split()
    return expand_hostlist(hostlist)


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    value = env.get(key, "")
    if value == "":
        return default
    try:
        return int(value.split("(")[0])  # SLURM_* counts may look like "8(x2)"
    except ValueError:
        raise LaunchError(f"environment variable {key}={value!r} is not an integer") from None


def default_nproc_per_node(env: Mapping[str, str]) -> int:
    """NPROC_PER_NODE, else the GPUs Slurm gave this node, else visible CUDA devices, else 1."""
    for key in ("NPROC_PER_NODE", "SLURM_GPUS_ON_NODE"):
        value = _int(env, key)
        if value:
            return value
    try:
        import torch

        return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1
    except ImportError:
        return 1


def derive_plan(
    env: Mapping[str, str],
    *,
    nproc_per_node: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    reward_nodes: int | None = None,
    hostnames=slurm_hostnames,
) -> LaunchPlan:
    """Build the LaunchPlan from ``env`` (a Slurm job if SLURM_JOB_ID and a node list are set).

    Explicit arguments win over R1VFREE_MASTER_ADDR / R1VFREE_MASTER_PORT / REWARD_NODES, which
    win over what Slurm implies. Under Slurm a stray MASTER_ADDR/MASTER_PORT from the submitting
    shell is ignored on purpose: sbatch exports the whole environment, and a laptop's 127.0.0.1
    would break a multi-node job.
    """
    nproc = nproc_per_node or default_nproc_per_node(env)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if env.get("SLURM_JOB_ID") and nodelist:
        hosts = hostnames(nodelist)
        if not hosts:
            raise LaunchError(f"SLURM_JOB_NODELIST={nodelist!r} names no hosts")
        nnodes = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", len(hosts)))
        node_rank = _int(env, "SLURM_NODEID", 0)
        addr = hosts[0]
        port = SLURM_PORT_BASE + _int(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN
    else:
        nnodes = _int(env, "NNODES", 1)
        node_rank = _int(env, "NODE_RANK", 0)
        addr = env.get("MASTER_ADDR") or "127.0.0.1"
        port = _int(env, "MASTER_PORT", 29500)
    return LaunchPlan(
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr or env.get("R1VFREE_MASTER_ADDR") or addr,
        master_port=master_port or _int(env, "R1VFREE_MASTER_PORT", port),
        reward_nodes=reward_nodes if reward_nodes is not None else _int(env, "REWARD_NODES", 0),
    )


def torchrun_argv(
    plan: LaunchPlan,
    python: str,
    trainer_args: Sequence[str],
    *,
    module: str | None = DEFAULT_MODULE,
    script: str | None = None,
) -> list[str]:
    """The full command: ``python -m torch.distributed.run ... -m MODULE trainer_args``.

    With reward nodes, ``reward.num_ranks=<K * nproc>`` is appended to the trainer's overrides.
    """
    if (module is None) == (script is None):
        raise LaunchError("give exactly one of module or script")
    argv = [
        python, "-m", "torch.distributed.run",
        f"--nnodes={plan.nnodes}",
        f"--node-rank={plan.node_rank}",
        f"--nproc-per-node={plan.nproc_per_node}",
        f"--master-addr={plan.master_addr}",
        f"--master-port={plan.master_port}",
    ]
    argv += ["-m", module] if module else [script]
    argv += list(trainer_args)
    if plan.reward_ranks is not None:
        argv.append(f"reward.num_ranks={plan.reward_ranks}")
    return argv
