"""A checkpoint written by the trainer's CheckpointManager (model + megatron optimizer, PP=2)
exports to HF from the run's checkpoints root, with the HF files found through config.yaml."""

from __future__ import annotations

import pytest

from conversion_cases import assert_bit_exact

from r1vfree_mcore.testing.distributed import run_distributed


def _save_trainer_checkpoint(rank, world, hf_dir, ckpt_root):
    from r1vfree_mcore.checkpoint.manager import CheckpointManager
    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.train.config import OptimConfig
    from r1vfree_mcore.train.optimizer import build_optimizer, wrap_ddp

    cfg = ParallelConfig(pp=2)
    initialize_parallel(cfg)
    hf_config = load_hf_config(hf_dir)
    model = build_model(hf_config, cfg)
    load_hf_state_dict(model, HFReader(hf_dir), hf_config)
    ddp = wrap_ddp(model)
    opt, sched = build_optimizer(ddp, OptimConfig(lr=1e-3), bf16=False, max_steps=4)
    path = CheckpointManager(ckpt_root).save(3, ddp, opt, sched, sampler_state={},
                                             config_yaml=f"model:\n  hf_dir: {hf_dir}\n")
    return str(path)


@pytest.mark.slow
def test_trainer_checkpoint_exports_to_hf(tiny, tmp_path):
    from r1vfree_mcore.conversion import export_hf

    src = tiny("qwen2_vl", False)
    root = tmp_path / "run" / "checkpoints"
    paths = run_distributed(_save_trainer_checkpoint, 2, str(src), str(root))
    assert paths[0].endswith("step_000003")
    out = tmp_path / "hf_export"
    summary = export_hf(tmp_path / "run", out, progress=False)  # run dir -> checkpoints/latest
    assert summary["tensors"] > 0
    assert_bit_exact(src, out)
