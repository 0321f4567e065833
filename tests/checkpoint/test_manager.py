"""Checkpoints: exact resume (model, optimizer, scheduler, RNG, sampler), reshard on load, crash-safe."""

import json

import pytest

from r1vfree_mcore.testing.distributed import run_distributed


def _gpt(seed):
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    torch.manual_seed(seed)
    cfg = TransformerConfig(
        num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
    )
    return GPTModel(cfg, get_gpt_layer_local_spec(), vocab_size=64, max_sequence_length=8,
                    pre_process=True, post_process=True)


def _step(ddp, opt, sched):
    import torch

    tokens = torch.randint(0, 64, (2, 8))  # drawn from the RNG: resume must restore it
    pos = torch.arange(8).expand(2, 8)
    ddp.zero_grad_buffer()
    opt.zero_grad()
    loss = ddp(tokens, pos, None, labels=tokens).float().mean()
    loss.backward()
    ddp.finish_grad_sync()
    opt.step()
    sched.step(1)
    return loss.item()


def _setup(tp, seed):
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.train.config import OptimConfig
    from r1vfree_mcore.train.optimizer import build_optimizer, wrap_ddp

    initialize_parallel(ParallelConfig(tp=tp))
    ddp = wrap_ddp(_gpt(seed))
    opt, sched = build_optimizer(ddp, OptimConfig(lr=1e-2, warmup_steps=2, schedule="cosine"), bf16=False, max_steps=10)
    return ddp, opt, sched


def _resume_exact(rank, world, root):
    import torch

    from r1vfree_mcore.checkpoint.manager import CheckpointManager, find_latest
    from r1vfree_mcore.data.sampler import ResumableSampler

    ddp, opt, sched = _setup(tp=2, seed=1)
    sampler = ResumableSampler(20, seed=3)
    _step(ddp, opt, sched)
    sampler.next_index()
    mgr = CheckpointManager(root, keep_last=2)
    mgr.save(1, ddp, opt, sched, sampler_state=sampler.state_dict(), extra={"note": "x"})
    expected_loss = _step(ddp, opt, sched)
    expected_idx = sampler.next_index()
    expected_w = {k: v.clone() for k, v in ddp.module.state_dict().items() if torch.is_tensor(v)}

    ddp2, opt2, sched2 = _setup(tp=2, seed=99)  # different init: everything must come from disk
    sampler2 = ResumableSampler(20, seed=3)
    state = mgr.load(find_latest(root), ddp2, opt2, sched2, sampler_loader=sampler2.load_state_dict)
    assert state["step"] == 1 and state["extra"] == {"note": "x"}
    loss = _step(ddp2, opt2, sched2)
    assert loss == expected_loss, (loss, expected_loss)  # bit-exact
    assert sampler2.next_index() == expected_idx
    for k, v in ddp2.module.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, expected_w[k]), k
    return loss


def _reshard_tp2_to_tp1(rank, world, root):
    import torch
    from megatron.core import parallel_state as ps

    from r1vfree_mcore.checkpoint.manager import CheckpointManager, find_latest

    ddp, opt, sched = _setup(tp=1, seed=7)
    CheckpointManager(root).load(find_latest(root), ddp, opt, sched)
    tokens = torch.arange(16).reshape(2, 8) % 64
    with torch.no_grad():
        logits = ddp(tokens, torch.arange(8).expand(2, 8), None)
    return logits


def _logits_tp2(rank, world, root):
    import torch
    from megatron.core import parallel_state as ps

    from r1vfree_mcore.checkpoint.manager import CheckpointManager, find_latest

    ddp, opt, sched = _setup(tp=2, seed=5)
    CheckpointManager(root).load(find_latest(root), ddp, opt, sched)
    tokens = torch.arange(16).reshape(2, 8) % 64
    with torch.no_grad():
        local = ddp(tokens, torch.arange(8).expand(2, 8), None)
    parts = [torch.empty_like(local) for _ in range(2)]
    torch.distributed.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, -1)


@pytest.mark.slow
def test_exact_resume_and_reshard(tmp_path):
    root = str(tmp_path / "ckpt")
    run_distributed(_resume_exact, 2, root)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_000001"
    st = json.loads((tmp_path / "ckpt" / "step_000001" / "train_state.json").read_text())
    assert st["world_size"] == 2 and len(st["samplers"]) == 2
    assert st["optim_sharding"] == "dp_reshardable"  # the format a load must ask for
    tp2 = run_distributed(_logits_tp2, 2, root)[0]
    tp1 = run_distributed(_reshard_tp2_to_tp1, 2, root)[0]
    import torch

    torch.testing.assert_close(tp1, tp2, atol=1e-5, rtol=1e-5)


def test_unknown_optimizer_sharding_is_refused(tmp_path):
    from r1vfree_mcore.checkpoint.manager import CheckpointManager

    with pytest.raises(ValueError, match="fully_sharded_model_space"):
        CheckpointManager(tmp_path, optim_sharding="fully_sharded_model_space")


def test_incomplete_checkpoint_is_not_latest(tmp_path):
    from r1vfree_mcore.checkpoint.manager import find_latest

    assert find_latest(tmp_path) is None
    (tmp_path / ".tmp_step_000002" / "dist").mkdir(parents=True)  # a crashed save
    assert find_latest(tmp_path) is None
    (tmp_path / "latest").write_text("step_000002\n")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        find_latest(tmp_path)
