"""megatron-core on CPU/gloo: TP=2 and PP=2 give the loss and grads of TP=1/PP=1."""

import pytest

from r1vfree_mcore.testing.distributed import run_distributed

SEQ, MBS, VOCAB, LAYERS, HIDDEN = 16, 2, 128, 4, 64


def _build_gpt(seed):
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    torch.manual_seed(seed)
    cfg = TransformerConfig(
        num_layers=LAYERS,
        hidden_size=HIDDEN,
        num_attention_heads=4,
        use_cpu_initialization=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
    )
    return GPTModel(
        cfg,
        get_gpt_layer_local_spec(),
        vocab_size=VOCAB,
        max_sequence_length=SEQ,
        position_embedding_type="rope",
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
    )


def _batch():
    import torch

    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (MBS, SEQ), generator=g)
    labels = torch.roll(tokens, -1, 1)
    pos = torch.arange(SEQ).unsqueeze(0).expand(MBS, SEQ)
    return tokens, labels, pos


def _train_step(model):
    """One forward/backward through megatron-core's schedule; returns (loss, {name: grad})."""
    import torch
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    tokens, labels, pos = _batch()

    def forward_step(data_iter, model):
        out = model(tokens, pos, None, labels=labels)

        def loss_fn(output):
            loss = output.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_fn

    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=False,
    )
    loss = torch.tensor(losses[0]["loss"].item()) if losses else torch.tensor(0.0)
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        # Only the last stage has the loss: share it with every rank.
        src = parallel_state.get_pipeline_model_parallel_last_rank()
        torch.distributed.broadcast(loss, src, group=parallel_state.get_pipeline_model_parallel_group())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _gather_tp(model, grads):
    """Concatenate TP shards along each parameter's partition dim."""
    import torch
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    group = parallel_state.get_tensor_model_parallel_group()
    full = {}
    for name, p in model.named_parameters():
        g = grads[name]
        if tp > 1 and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(g) for _ in range(tp)]
            torch.distributed.all_gather(parts, g.contiguous(), group=group)
            g = torch.cat(parts, dim=p.partition_dim)
        full[name] = g
    return full


def _tp_equality(rank, world):
    import torch

    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig(tp=1, pp=1))
    ref = _build_gpt(seed=3)
    ref_loss, ref_grads = _train_step(ref)
    destroy_parallel()

    initialize_parallel(ParallelConfig(tp=2, pp=1))
    model = _build_gpt(seed=3)  # CPU init cuts the same master weights into shards
    loss, grads = _train_step(model)
    full = _gather_tp(model, grads)
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    assert full.keys() == ref_grads.keys()
    for name, g in full.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    return loss


def _pp_equality(rank, world):
    import re

    import torch
    from megatron.core import parallel_state

    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig(tp=1, pp=1))
    ref = _build_gpt(seed=5)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items() if not k.endswith("_extra_state")}
    ref_loss, ref_grads = _train_step(ref)
    destroy_parallel()

    initialize_parallel(ParallelConfig(tp=1, pp=2))
    model = _build_gpt(seed=99)  # different init, then load the reference weights by layer
    stage = parallel_state.get_pipeline_model_parallel_rank()
    offset = stage * (LAYERS // 2)

    def global_name(name):
        return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m[1]) + offset}.", name)

    own = {k for k in model.state_dict() if not k.endswith("_extra_state")}
    model.load_state_dict({k: ref_state[global_name(k)] for k in own}, strict=False)
    loss, grads = _train_step(model)
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    for name, g in grads.items():
        ref_name = global_name(name)
        if stage == 1 and ref_name.startswith("embedding."):
            continue  # a tied-embedding copy on the last stage; its grad is all-reduced later
        torch.testing.assert_close(g, ref_grads[ref_name], atol=1e-5, rtol=1e-4, msg=name)
    return loss


@pytest.mark.slow
def test_tp2_equals_tp1():
    losses = run_distributed(_tp_equality, 2)
    assert losses[0] == pytest.approx(losses[1])


@pytest.mark.slow
def test_pp2_equals_pp1():
    losses = run_distributed(_pp_equality, 2)
    assert losses[0] == pytest.approx(losses[1])
