"""Run micro-batches through the policy with megatron-core's pipeline schedules.

One entry point for every pass (generation steps, reference/old log-probs, training), so PP
is handled in one place. ``forward_fn(model, mb)`` runs the model on one micro-batch; on the last
pipeline stage ``loss_fn(mb, output)`` turns the output into ``(loss, info_dict)``. Losses are
*not* averaged over micro-batches here (megatron's schedule divides by their number; we undo it):
``loss_fn`` normalises with global counts itself, so the sum over micro-batches is the batch loss.

Micro-batches may live on the CPU (rollouts are kept in host memory): each one's tensors are
moved to the model's device right before its forward, so ``forward_fn`` and ``loss_fn`` see
device tensors. Returns the info dicts of the last stage (empty lists elsewhere); use :func:`broadcast_from_last_stage`
to share results with the other stages.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from r1vfree_mcore.parallel.cpu_compat import mode_suspended


def run_microbatches(
    model: torch.nn.Module,
    microbatches: Sequence[dict],
    forward_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    loss_fn: Callable[[dict, torch.Tensor], tuple[torch.Tensor, dict]],
    *,
    forward_only: bool,
) -> list[dict]:
    """Forward (and backward unless ``forward_only``) over ``microbatches``; see module doc."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    n = len(microbatches)
    if n == 0:
        return []
    it = iter(microbatches)
    unwrapped = getattr(model, "module", model)
    # Micro-batches differ in length: let p2p exchange shapes first.
    unwrapped.config.variable_seq_lengths = True

    device = next(unwrapped.parameters()).device

    def step(data_iterator, m):
        mb = to_device(next(data_iterator), device)
        with mode_suspended():  # the hot path: no per-op device rewriting on CPU
            out = forward_fn(m, mb)

        def _loss(output):
            with mode_suspended():
                loss, info = loss_fn(mb, output)
            return loss * n, info  # cancel the schedule's division by n

        return out, _loss

    first = microbatches[0]["input_ids"]
    ctx = torch.no_grad() if forward_only else torch.enable_grad()
    with ctx:
        return get_forward_backward_func()(
            forward_step_func=step,
            data_iterator=it,
            model=[model],
            num_microbatches=n,
            seq_length=first.shape[1],
            micro_batch_size=first.shape[0],
            forward_only=forward_only,
        )


def to_device(mb: dict, device: torch.device) -> dict:
    """A copy of micro-batch ``mb`` with its tensor values on ``device`` (others unchanged)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in mb.items()}


def broadcast_from_last_stage(obj: Any) -> Any:
    """Send a picklable object from the last pipeline stage to every stage of this PP group."""
    from megatron.core import parallel_state as ps

    if ps.get_pipeline_model_parallel_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(
        box, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return box[0]
