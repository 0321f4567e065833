"""A checkpoint converted at TP=2/PP=2 loads at TP=1/PP=2 through the trainer's
CheckpointManager.load and gives HF's logits; the exported HF model's logits equal the original's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from r1vfree_mcore.testing.distributed import run_distributed


def _pp_logits(rank, world, hf_dir, mcore_dir):
    """TP=1/PP=2 stage loaded with CheckpointManager.load; last stage returns logits [b, s, vocab]."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from transformers import AutoProcessor

    from r1vfree_mcore.checkpoint.manager import CheckpointManager
    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.verify import probe_inputs
    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel

    cfg = ParallelConfig(pp=2)
    initialize_parallel(cfg)
    hf_config = load_hf_config(hf_dir)
    model = build_model(hf_config, cfg)
    state = CheckpointManager(Path(mcore_dir).parent).load(mcore_dir, model)
    assert state["step"] == 0
    model.eval()
    inputs = probe_inputs(AutoProcessor.from_pretrained(hf_dir))
    kwargs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    out = {}

    def step(_it, m):
        def keep(logits):
            out["logits"] = logits[..., : hf_config.text_config.vocab_size].float().clone()
            return logits.sum() * 0, {}

        return m(**kwargs), keep

    b, s = kwargs["input_ids"].shape
    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=step, data_iterator=iter([None]), model=[model],
                                    num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True)
    return out.get("logits") if ps.is_pipeline_last_stage() else None


def _hf_logits(hf_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from r1vfree_mcore.conversion.verify import probe_inputs

    inputs = probe_inputs(AutoProcessor.from_pretrained(hf_dir))
    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**inputs).logits.float()


@pytest.mark.slow
def test_tp2_checkpoint_loads_at_tp1_pp2_with_hf_logits(tp2pp2, tmp_path):
    from r1vfree_mcore.conversion import mcore_to_hf

    src, mc, _ = tp2pp2[("qwen2_5_vl", False)]  # saved at TP=2/PP=2: vocab padded to 512 rows, TP=1 wants 384
    logits = run_distributed(_pp_logits, 2, str(src), str(mc))[1]
    ref = _hf_logits(str(src))
    assert logits.shape == ref.shape
    assert float((logits - ref).abs().max()) < 1e-4

    back = tmp_path / "hf"
    mcore_to_hf(mc, back, progress=False)
    assert torch.equal(_hf_logits(str(back)), ref)  # exported weights are the original bits
