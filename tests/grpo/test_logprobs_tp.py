"""TP=2 (gloo): each rank holds its vocab shard of the same logits / output weight; results
must equal the dense float64 reference on every rank, and each rank's grad its shard of it."""

from __future__ import annotations

import pytest
import torch

from grpo_reference import dense_logprobs, grads_of, make_logits
from r1vfree_mcore.grpo.logprobs import fused_linear_logprobs, vocab_parallel_logprobs
from r1vfree_mcore.testing.distributed import run_distributed

B, T, HID = 2, 9, 8
# (padded vocab, real vocab): padding inside rank 1; rank 1 entirely padding.
VOCABS = [(24, 21), (24, 10)]


def _upstream(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(2)]


def _tp_worker(rank, world):
    import torch.distributed as dist

    out = []
    for case, (v_pad, real_v) in enumerate(VOCABS):
        local = v_pad // world
        cols = slice(rank * local, (rank + 1) * local)
        logits64, targets = make_logits(B, T, v_pad, real_v, seed=100 + case)
        up = _upstream(case)
        shard = logits64[..., cols].float().contiguous().requires_grad_()
        (g,), (lp, ent) = grads_of(
            lambda x: vocab_parallel_logprobs(
                x, targets, temperature=0.9, chunk_size=5, vocab_start=rank * local,
                real_vocab_size=real_v, group=dist.group.WORLD, compute_entropy=True),
            [shard], up)
        out.append(("logits", case, lp, ent, g))

        gen = torch.Generator().manual_seed(200 + case)
        hidden = torch.randn(T, B, HID, generator=gen)  # Megatron [S, B, H]
        weight = torch.randn(v_pad, HID, generator=gen)
        w_shard = weight[cols].clone().requires_grad_()
        # default group/vocab_start: megatron not initialised -> would be single rank, so pass them
        for cache_bytes in (0, 10**9):  # recompute every chunk / keep every chunk's logits
            gs, (lp2, ent2) = grads_of(
                lambda h, w: fused_linear_logprobs(
                    h, w, targets, sequence_first=True, chunk_size=4, vocab_start=rank * local,
                    real_vocab_size=real_v, group=dist.group.WORLD, compute_entropy=True,
                    logits_cache_bytes=cache_bytes),
                [hidden.clone().requires_grad_(), w_shard.detach().clone().requires_grad_()], up)
            out.append(("fused", case, lp2, ent2, gs))
    return out


@pytest.mark.slow
def test_tp2_matches_dense_reference():
    world = 2
    results = run_distributed(_tp_worker, world)
    for rank, res in enumerate(results):
        for kind, case, lp, ent, g in res:
            v_pad, real_v = VOCABS[case]
            local = v_pad // world
            cols = slice(rank * local, (rank + 1) * local)
            up = _upstream(case)
            if kind == "logits":
                logits64, targets = make_logits(B, T, v_pad, real_v, seed=100 + case)
                (g_ref,), (rlp, rent) = grads_of(
                    lambda x: dense_logprobs(x, targets, 0.9, real_v),
                    [logits64.clone().requires_grad_()], up)
                g_ref_shard = g_ref[..., cols]
                torch.testing.assert_close(g.double(), g_ref_shard, atol=1e-5, rtol=1e-5)
            else:
                _, targets = make_logits(B, T, v_pad, real_v, seed=100 + case)
                gen = torch.Generator().manual_seed(200 + case)
                hidden = torch.randn(T, B, HID, generator=gen).double().requires_grad_()
                weight = torch.randn(v_pad, HID, generator=gen).double().requires_grad_()
                (gh, gw), (rlp, rent) = grads_of(
                    lambda h, w: dense_logprobs((h @ w.t()).transpose(0, 1), targets, 1.0,
                                                real_v),
                    [hidden, weight], up)
                # full hidden grad on every rank (all-reduced), weight grad = this rank's rows
                torch.testing.assert_close(g[0].double(), gh, atol=5e-5, rtol=1e-4)
                torch.testing.assert_close(g[1].double(), gw[cols], atol=5e-5, rtol=1e-4)
            torch.testing.assert_close(lp.double(), rlp, atol=5e-5, rtol=1e-5)
            torch.testing.assert_close(ent.double(), rent, atol=5e-5, rtol=1e-5)


def _megatron_default_worker(rank, world):
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig(tp=world))
    try:
        v_pad, real_v = VOCABS[0]
        local = v_pad // world
        logits64, targets = make_logits(B, T, v_pad, real_v, seed=300)
        shard = logits64[..., rank * local:(rank + 1) * local].float()
        # no group / vocab_start: both come from megatron's parallel_state
        lp, ent = vocab_parallel_logprobs(shard, targets, real_vocab_size=real_v,
                                          compute_entropy=True)
        return lp, ent
    finally:
        destroy_parallel()


@pytest.mark.slow
def test_defaults_come_from_megatron_tp_group():
    v_pad, real_v = VOCABS[0]
    logits64, targets = make_logits(B, T, v_pad, real_v, seed=300)
    rlp, rent = dense_logprobs(logits64, targets, 1.0, real_v)
    for lp, ent in run_distributed(_megatron_default_worker, 2):
        torch.testing.assert_close(lp.double(), rlp, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(ent.double(), rent, atol=5e-5, rtol=1e-5)
