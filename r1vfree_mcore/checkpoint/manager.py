"""Crash-safe, resharding checkpoints under RUN_DIR/checkpoints/.

Layout of one checkpoint ``step_000012/``:
- ``dist/``: megatron-core dist_checkpointing (torch_dist) of the model and optimizer, so it
  loads at another TP/PP;
- ``train_state.json``: step, LR scheduler, data sampler position of every DP rank, extra state;
- ``rng/rank_<r>.pt``: each rank's RNG states (restored when the world size is unchanged);
- ``config.yaml``: the resolved run config.

A checkpoint is written to ``.tmp_step_000012`` and renamed when complete; ``latest`` (a text
file naming the directory) is replaced last, atomically. A crash mid-save leaves the previous
checkpoint and ``latest`` untouched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def _barrier(group=None):
    if dist.is_initialized():
        dist.barrier(group=group)


def _rank(group=None) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def rng_state() -> dict:
    """Every RNG a step may draw from."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    try:
        from megatron.core import tensor_parallel

        state["megatron_tracker"] = tensor_parallel.get_cuda_rng_tracker().get_states()
    except Exception as exc:  # no tracker initialised yet: nothing of it to save
        state["megatron_tracker_error"] = repr(exc)
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if "megatron_tracker" in state:
        from megatron.core import tensor_parallel

        tensor_parallel.get_cuda_rng_tracker().set_states(state["megatron_tracker"])


def find_latest(ckpt_root: str | Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when there is none yet."""
    root = Path(ckpt_root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    if not (target / "train_state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {target.name}, which is incomplete or missing")
    return target


OPTIM_SHARDINGS = ("dp_reshardable", "fully_reshardable")


class CheckpointManager:
    """Saves and loads (model, optimizer, scheduler, sampler, RNG, train state) on policy ranks."""

    def __init__(self, ckpt_root: str | Path, keep_last: int = 2, optim_sharding: str = "dp_reshardable"):
        """``optim_sharding``: megatron's ``distrib_optim_sharding_type`` for the distributed
        optimizer (GPU runs): ``dp_reshardable`` (Megatron-LM's default: cheap, resumes at any DP
        size) or ``fully_reshardable`` (gathers on DP rank 0; resumes at any TP/PP/DP). Plain
        optimizers (CPU) ignore it. Its legacy default, ``fully_sharded_model_space``, is
        rejected by megatron-core 0.16's own ShardedTensor validation."""
        if optim_sharding not in OPTIM_SHARDINGS:
            raise ValueError(f"optim_sharding must be one of {OPTIM_SHARDINGS}, got {optim_sharding!r}")
        self.root = Path(ckpt_root)
        self.keep_last = keep_last
        self.optim_sharding = optim_sharding

    # -- save -------------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, scheduler, *, sampler_state: dict,
             extra: dict | None = None, config_yaml: str | None = None,
             dp_group=None) -> Path:
        """Collective over all policy ranks. Returns the final checkpoint directory."""
        from megatron.core import dist_checkpointing

        name = step_dir_name(step)
        tmp, final = self.root / f".tmp_{name}", self.root / name
        if _rank() == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # debris of an earlier crashed save
            (tmp / "dist").mkdir(parents=True)
            (tmp / "rng").mkdir()
        _barrier()
        model = getattr(model, "module", model)  # DDP keys carry a "module." prefix
        model_sd = model.sharded_state_dict()
        meta = {"distrib_optim_sharding_type": self.optim_sharding}
        state = {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=meta)}
        dist_checkpointing.save(state, str(tmp / "dist"))
        torch.save(rng_state(), tmp / "rng" / f"rank_{_rank()}.pt")
        samplers = [None] * (dist.get_world_size() if dist.is_initialized() else 1)
        if dist.is_initialized():
            dist.all_gather_object(samplers, sampler_state)
        else:
            samplers = [sampler_state]
        _barrier()
        if _rank() == 0:
            train_state = {
                "step": step,
                "scheduler": scheduler.state_dict(),
                "samplers": samplers,
                "world_size": len(samplers),
                "optim_sharding": self.optim_sharding,
                "extra": extra or {},
            }
            (tmp / "train_state.json").write_text(json.dumps(train_state, indent=1))
            if config_yaml is not None:
                (tmp / "config.yaml").write_text(config_yaml)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            pointer_tmp = self.root / f".{LATEST}.tmp"
            pointer_tmp.write_text(name + "\n")
            os.replace(pointer_tmp, self.root / LATEST)  # the commit point
            self._prune(keep=name)
        _barrier()
        return final

    def _prune(self, keep: str) -> None:
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in done[: max(0, len(done) - self.keep_last)]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)

    # -- load -------------------------------------------------------------------------------
    def load(self, path: str | Path, model, optimizer=None, scheduler=None, *,
             sampler_loader: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Load a checkpoint (possibly written at another TP/PP) into this rank's objects."""
        from megatron.core import dist_checkpointing

        path = Path(path)
        train_state = json.loads((path / "train_state.json").read_text())
        model = getattr(model, "module", model)
        model_sd = model.sharded_state_dict()
        template = {"model": model_sd}
        if optimizer is not None:
            _seed_distributed_optimizer_state(optimizer)
            # The template must use the format the checkpoint was written in.
            meta = {"distrib_optim_sharding_type": train_state.get("optim_sharding", self.optim_sharding)}
            template["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=meta)
        loaded = dist_checkpointing.load(template, str(path / "dist"))
        model.load_state_dict(loaded["model"], strict=True)
        if optimizer is not None:
            with torch.no_grad():  # the distributed optimizer copies into its leaf main params in place
                optimizer.load_state_dict(loaded["optimizer"])
            _unshare_step_tensors(optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(train_state["scheduler"])
        world = dist.get_world_size() if dist.is_initialized() else 1
        same_world = train_state["world_size"] == world
        if sampler_loader is not None:
            samplers = train_state["samplers"]
            sampler_loader(samplers[_rank()] if same_world else samplers[0])
        rng_file = path / "rng" / f"rank_{_rank()}.pt"
        if same_world and rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return train_state


def _seed_distributed_optimizer_state(optimizer) -> None:
    """Give a fresh DistributedOptimizer's inner Adam a zero state (``step`` included).

    Its ``sharded_state_dict(is_loading=True)`` first calls ``state_dict()``, which without
    Apex/TE reads one common ``step`` from the inner optimizer's per-parameter state and asserts
    there is exactly one; a freshly built optimizer has no state at all (megatron's
    ``init_state_fn`` adds the moments but no ``step``). The zeros are placeholders: the load
    overwrites every one of them.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer):
            continue
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                st = opt.optimizer.state[p]
                if not st:
                    st.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                st.setdefault("step", torch.tensor(0.0))


def _unshare_step_tensors(optimizer) -> None:
    """dist_checkpointing hands back one shared Adam ``step`` tensor; give each param its own."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for st in inner.state.values():
            if "step" in st and torch.is_tensor(st["step"]):
                st["step"] = st["step"].clone()
