"""Shared helpers for the model tests: tiny checkpoints, processor inputs, HF reference, gathering."""

from __future__ import annotations

import os
from pathlib import Path

import torch

IMAGE_SIZES = ((56, 84), (112, 56))  # (height, width): images of different sizes


def make_checkpoint(root: Path, family: str, tied: bool) -> Path:
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(Path(root) / f"{family}_{'tied' if tied else 'untied'}", family=family, tied=tied)


def _image(h: int, w: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def build_inputs(ckpt: Path, padding_side: str = "left") -> dict:
    """Two samples: 2 images (56x84, 112x56) + text; 1 image + shorter text (padded)."""
    from transformers import AutoProcessor

    os.environ["HF_HUB_OFFLINE"] = "1"
    proc = AutoProcessor.from_pretrained(ckpt)
    proc.tokenizer.padding_side = padding_side
    imgs = [_image(*IMAGE_SIZES[0], 0), _image(*IMAGE_SIZES[1], 1), _image(*IMAGE_SIZES[1], 2)]
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"},
                                      {"type": "image"}, {"type": "text", "text": "Count the objects. The count is 3."}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
    ]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    batch = proc(text=texts, images=[imgs[:2], imgs[2:]], return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    return dict(batch)


def build_text_inputs(ckpt: Path) -> dict:
    """A text-only batch of two prompts of different lengths, right-padded."""
    from transformers import AutoProcessor

    os.environ["HF_HUB_OFFLINE"] = "1"
    proc = AutoProcessor.from_pretrained(ckpt)
    proc.tokenizer.padding_side = "right"
    texts = ["What is shown in the image? Describe the colors.", "The count is 3."]
    return dict(proc(text=texts, return_tensors="pt", padding=True))


def hf_model(ckpt: Path):
    from transformers import AutoModelForImageTextToText

    os.environ["HF_HUB_OFFLINE"] = "1"
    return AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()


def hf_logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


def hf_tensors(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def gather_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """All-gather vocab-parallel logits over TP and drop the padded columns."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(logits) for _ in range(tp)]
        torch.distributed.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)
    return logits[..., :vocab]


def init_single_process():
    """torch.distributed (gloo, 1 rank, free port) + megatron TP=1/PP=1 in this process."""
    import torch.distributed as dist

    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.testing.distributed import free_port

    if not dist.is_initialized():
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo", rank=0, world_size=1)
    initialize_parallel(ParallelConfig())


def model_inputs(inputs: dict) -> dict:
    """The keyword arguments QwenVLModel.forward takes, from processor output."""
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    return {k: inputs[k] for k in keys}


def train_step(model, inputs: dict, vocab: int):
    """One forward/backward through megatron's schedule (1 micro-batch).

    Loss = mean cross-entropy of next tokens over non-padding positions, on the gathered real
    vocab. Returns (logits [b, s, vocab] on the last stage else None, loss or None).
    """
    import torch.nn.functional as F
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    kwargs = model_inputs(inputs)
    ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
    labels = torch.roll(ids, -1, 1)
    valid = (mask.bool() & torch.roll(mask.bool(), -1, 1)).clone()
    valid[:, -1] = False
    captured = {}

    def forward_step(_it, m):
        out = m(**kwargs)

        def loss_fn(logits):
            from r1vfree_mcore.models import mask_padded_vocab

            raw = gather_from_tensor_model_parallel_region(logits).detach()
            masked = gather_from_tensor_model_parallel_region(mask_padded_vocab(logits.detach(), vocab))
            captured["padded_masked"] = bool(torch.isneginf(masked[..., vocab:]).all()) and torch.equal(
                masked[..., :vocab], raw[..., :vocab]
            )
            full = gather_from_tensor_model_parallel_region(logits)[..., :vocab]
            captured["logits"] = full.detach().clone()
            loss = F.cross_entropy(full[valid], labels[valid])
            return loss, {"loss": loss.detach()}

        return out, loss_fn

    b, s = ids.shape
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=s,
        micro_batch_size=b,
        forward_only=False,
    )
    if ps.is_pipeline_last_stage():
        assert captured["padded_masked"], "mask_padded_vocab did not mask exactly the padded columns"
    return captured.get("logits"), ps.is_pipeline_last_stage()


def full_grads(model) -> dict:
    """TP-merged grads of this stage under global names; tied output-layer copies folded in."""
    from megatron.core import parallel_state as ps

    from r1vfree_mcore.models.common.weight_loading import gather_full_tensors

    named = dict(model.named_parameters())
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in named.items()}
    full = gather_full_tensors(model, grads)
    emb, out = "language_model.embedding.word_embeddings.weight", "language_model.output_layer.weight"
    if model.language_model.share_embeddings_and_output_weights and ps.get_pipeline_model_parallel_world_size() > 1:
        # What megatron's finalize_model_grads does: sum the two copies over the embedding group.
        key = emb if emb in full else out
        t = full[key].clone()
        torch.distributed.all_reduce(t, group=ps.get_embedding_group())
        full.pop(key)
        full[emb] = t
    return full


def run_layout(hf_config, ckpt: Path, inputs: dict, parallel, spec: str = "local", **build_kw):
    """Build, load and train-step one layout; returns (model, logits or None, grads by global name)."""
    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import initialize_parallel

    initialize_parallel(parallel)
    model = build_model(hf_config, parallel, spec, **build_kw)
    load_hf_state_dict(model, hf_tensors(ckpt))
    logits, _ = train_step(model, inputs, hf_config.text_config.vocab_size)
    return model, logits, full_grads(model)


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
    return float(d.max())


def compare_layouts(rank, world, ckpts, layouts, padding_sides):
    """Worker: for each checkpoint, TP=1/PP=1 reference grads, then every layout vs HF and vs it.

    Returns per checkpoint and layout: max |logit - HF| (last stage) and max |grad - grad_TP1|.
    """
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel

    results = {}
    for ckpt, side in zip(ckpts, padding_sides):
        ckpt = Path(ckpt)
        inputs = build_inputs(ckpt, side)
        hf = hf_model(ckpt)
        ref_logits = hf_logits(hf, inputs)
        _, _, ref_grads = run_layout(hf.config, ckpt, inputs, ParallelConfig())
        destroy_parallel()
        for layout in layouts:
            cfg = ParallelConfig(**layout)
            _, logits, grads = run_layout(hf.config, ckpt, inputs, cfg)
            logit_diff = None if logits is None else max_diff(logits, ref_logits, inputs["attention_mask"])
            grad_diff = max(
                float((g - ref_grads[n]).abs().max() / (ref_grads[n].abs().max() + 1e-6)) for n, g in grads.items()
            )
            results[(ckpt.name, str(layout))] = (logit_diff, grad_diff, len(grads))
            destroy_parallel()
    return results


def dist_ckpt_reshard(ckpt: Path, save_dir: str, layout: dict) -> tuple[float, dict]:
    """Save a dist checkpoint at ``layout`` and load it at TP=1/PP=1.

    Returns (max |param - HF-loaded param|, {HF name: max |diff|} of this stage's HF export at
    ``layout``, via gather_full_tensors + export_hf_state_dict).
    """
    from megatron.core import dist_checkpointing
    from transformers import AutoConfig

    from r1vfree_mcore.models import build_model, export_hf_state_dict, load_hf_state_dict
    from r1vfree_mcore.models.common.weight_loading import gather_full_tensors
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    hf_config = AutoConfig.from_pretrained(ckpt)
    cfg = ParallelConfig(**layout)
    initialize_parallel(cfg)
    model = build_model(hf_config, cfg)
    disk = hf_tensors(ckpt)
    load_hf_state_dict(model, disk)
    partial = export_hf_state_dict(gather_full_tensors(model), hf_config, model.padded_vocab_size)
    exported = {k: float((v - disk[k]).abs().max()) if v.shape == disk[k].shape else float("inf")
                for k, v in partial.items()}
    if torch.distributed.get_rank() == 0:
        os.makedirs(save_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), save_dir)
    destroy_parallel()
    initialize_parallel(ParallelConfig())
    ref = build_model(hf_config, ParallelConfig())
    load_hf_state_dict(ref, hf_tensors(ckpt))
    loaded = build_model(hf_config, ParallelConfig())
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    loaded.load_state_dict(dist_checkpointing.load(loaded.sharded_state_dict(), save_dir), strict=False)
    ref_params = dict(ref.named_parameters())
    diff = max(float((p - ref_params[n]).abs().max()) for n, p in loaded.named_parameters())
    destroy_parallel()
    return diff, exported


def parallel_suite(rank, world, ckpts, layouts, sides, save_root):
    """Worker: :func:`compare_layouts`, then TP2xPP2 HF export and dist-checkpoint reshard to TP1."""
    out = {"layouts": compare_layouts(rank, world, ckpts, layouts, sides), "reshard": {}}
    for ckpt in ckpts:
        name = Path(ckpt).name
        out["reshard"][name] = dist_ckpt_reshard(Path(ckpt), f"{save_root}/{name}", dict(tp=2, pp=2))
    return out
