"""Rank / node / rendezvous derivation of the torchrun launcher (r1vfree_mcore.launch_env)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1vfree_mcore.launch_env import (
    LaunchError,
    LaunchPlan,
    derive_plan,
    expand_hostlist,
    torchrun_argv,
)
from r1vfree_mcore.parallel.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def slurm_env(**extra) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "123457",
        "SLURM_JOB_NODELIST": "gpu-[07-09,12]",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NODEID": "2",
        "SLURM_GPUS_ON_NODE": "8",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("n1", ["n1"]),
        ("n[1-2]", ["n1", "n2"]),
        ("gpu-[07-09,12]", ["gpu-07", "gpu-08", "gpu-09", "gpu-12"]),
        ("a[1-2],b3,c[08-10]", ["a1", "a2", "b3", "c08", "c09", "c10"]),
        ("node-[098-101]", ["node-098", "node-099", "node-100", "node-101"]),
    ],
)
def test_expand_hostlist(hostlist, hosts, tmp_path):
    assert expand_hostlist(hostlist) == hosts
    if shutil.which("scontrol"):  # same answer as Slurm's own parser (it only needs a conf)
        conf = tmp_path / "slurm.conf"
        conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=n1\n")
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True,
                             text=True, timeout=30, env=dict(os.environ, SLURM_CONF=str(conf)))
        assert out.stdout.split() == hosts, out.stderr


def test_expand_hostlist_rejects_bad_range():
    with pytest.raises(LaunchError, match="n\\[5-2\\]"):
        expand_hostlist("n[5-2]")


def test_slurm_job_gives_node_rank_master_and_port():
    plan = derive_plan(slurm_env(MASTER_ADDR="127.0.0.1", MASTER_PORT="29500"),
                       hostnames=expand_hostlist)
    # A stray MASTER_* from the submitting shell must not win over the job's own values.
    assert plan == LaunchPlan(nnodes=4, node_rank=2, nproc_per_node=8, master_addr="gpu-07",
                              master_port=20000 + 123457 % 20000)
    assert plan.world_size == 32
    assert plan.reward_ranks is None


def test_slurm_overrides_win_in_order():
    env = slurm_env(R1VFREE_MASTER_ADDR="ib-gpu-07", R1VFREE_MASTER_PORT="31000",
                    NPROC_PER_NODE="4", SLURM_GPUS_ON_NODE="8(x4)")
    plan = derive_plan(env, hostnames=expand_hostlist)
    assert (plan.master_addr, plan.master_port, plan.nproc_per_node) == ("ib-gpu-07", 31000, 4)
    plan = derive_plan(env, nproc_per_node=2, master_addr="h", master_port=4000,
                       hostnames=expand_hostlist)
    assert (plan.master_addr, plan.master_port, plan.nproc_per_node) == ("h", 4000, 2)


def test_slurm_counts_with_repeat_suffix_and_nnodes_fallback():
    env = slurm_env(SLURM_GPUS_ON_NODE="8(x4)")
    del env["SLURM_JOB_NUM_NODES"]
    plan = derive_plan(env, hostnames=expand_hostlist)
    assert (plan.nnodes, plan.nproc_per_node) == (4, 8)  # from the node list


def test_plain_environment_defaults_and_torchrun_style_vars():
    plan = derive_plan({"NPROC_PER_NODE": "2"})
    assert plan == LaunchPlan(1, 0, 2, "127.0.0.1", 29500)
    plan = derive_plan({"NNODES": "3", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5",
                        "MASTER_PORT": "29600", "NPROC_PER_NODE": "4"})
    assert plan == LaunchPlan(3, 1, 4, "10.0.0.5", 29600)


def test_default_nproc_is_one_without_gpus():
    import torch

    if torch.cuda.is_available():
        pytest.skip("GPUs visible")
    assert derive_plan({}).nproc_per_node == 1


def test_reward_nodes_map_to_the_last_ranks():
    plan = derive_plan(slurm_env(REWARD_NODES="1"), hostnames=expand_hostlist)
    assert plan.reward_ranks == 8  # node 3 holds global ranks 24..31 = the last 8
    argv = torchrun_argv(plan, "py", ["--config", "c.yaml", "reward.num_ranks=2"])
    assert argv[-1] == "reward.num_ranks=8"  # appended last, so it wins over the recipe's value
    assert derive_plan(slurm_env(REWARD_NODES="1"), reward_nodes=0,
                       hostnames=expand_hostlist).reward_ranks is None


@pytest.mark.parametrize(
    "env, match",
    [
        (slurm_env(REWARD_NODES="4"), "reward_nodes=4 must leave at least one policy node"),
        (slurm_env(SLURM_NODEID="4"), "node_rank 4 is outside"),
        (slurm_env(SLURM_NODEID="x"), "SLURM_NODEID='x' is not an integer"),
        ({"MASTER_PORT": "70000", "NPROC_PER_NODE": "1"}, "master_port 70000"),
        ({"NPROC_PER_NODE": "-1"}, "nproc_per_node must be >= 1"),
    ],
)
def test_inconsistent_environment_is_rejected(env, match):
    with pytest.raises(LaunchError, match=match):
        derive_plan(env, hostnames=expand_hostlist)


def test_torchrun_argv_module_and_script():
    plan = LaunchPlan(2, 1, 4, "n1", 20001)
    argv = torchrun_argv(plan, "/py", ["--config", "c.yaml", "--run-dir", "r"])
    assert argv == ["/py", "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1",
                    "--nproc-per-node=4", "--master-addr=n1", "--master-port=20001",
                    "-m", "r1vfree_mcore.train.cli", "--config", "c.yaml", "--run-dir", "r"]
    argv = torchrun_argv(plan, "/py", [], module=None, script="w.py")
    assert argv[-1] == "w.py" and "-m" not in argv[3:]
    with pytest.raises(LaunchError, match="exactly one"):
        torchrun_argv(plan, "/py", [], module="m", script="w.py")


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("MASTER_ADDR", "MASTER_PORT", "NNODES",
                                                       "NODE_RANK", "REWARD_NODES")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_launcher_runs_torchrun_on_cpu(tmp_path):
    """launch/train.sh -> torchrun --nproc-per-node 2 -> a gloo all_reduce in both workers."""
    port = free_port()
    proc = subprocess.run(
        [str(REPO / "launch" / "train.sh"), "--nproc-per-node", "2", "--master-port", str(port),
         "--script", str(REPO / "tests" / "slurm" / "allreduce_check.py"),
         "--config", "unused.yaml", "--run-dir", str(tmp_path), "--max-steps", "1"],
        capture_output=True, text=True, timeout=180, cwd=REPO,
        env=_clean_env(PYTHON=sys.executable),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    seen = [json.loads(p.read_text()) for p in sorted((tmp_path / "allreduce").glob("*.json"))]
    assert [(s["rank"], s["world"], s["sum"], s["master_port"]) for s in seen] == [
        (0, 2, 3.0, port), (1, 2, 3.0, port)]
    assert seen[0]["argv"] == ["--config", "unused.yaml", "--run-dir", str(tmp_path),
                               "--max-steps", "1"]


def test_launcher_reports_bad_layout_without_starting_anything():
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "launch.py"), "--reward-nodes", "1",
         "--nproc-per-node", "1", "--config", "c.yaml"],
        capture_output=True, text=True, timeout=60, env=_clean_env(),
    )
    assert proc.returncode == 2
    assert "r1vfree-launch: error: reward_nodes=1 must leave at least one policy node" in proc.stderr
