"""The TransformerEngine spec on a GPU gives HF's logits (skipped without CUDA + TE).

Not run on the CPU machines this project is developed on; it is the first check to run when a
GPU is available.
"""

import pytest
import torch

from _vlm_harness import build_inputs, hf_logits, hf_model, hf_tensors, make_checkpoint, max_diff, model_inputs
from r1vfree_mcore.testing.distributed import run_distributed


def _te_worker(rank, world, ckpt, family):
    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    inputs = build_inputs(ckpt, "left")
    hf = hf_model(ckpt).cuda()
    cuda_inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
    ref = hf_logits(hf, cuda_inputs)
    initialize_parallel(ParallelConfig())
    model = build_model(hf.config, ParallelConfig(), "transformer_engine")
    assert model.backend.name == "transformer_engine"
    load_hf_state_dict(model, hf_tensors(ckpt))
    with torch.no_grad():
        out = model(**model_inputs(cuda_inputs))[..., : ref.shape[-1]]
    return max_diff(out.float(), ref, cuda_inputs["attention_mask"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_te_spec_logits_equal_hf(tmp_path, family):
    from r1vfree_mcore.models.backends.transformer_engine import te_available

    if not te_available():
        pytest.skip("transformer_engine is not importable")
    ckpt = make_checkpoint(tmp_path, family, tied=False)
    (diff,) = run_distributed(_te_worker, 1, str(ckpt), family, timeout=300)
    assert diff <= 2e-3, diff
