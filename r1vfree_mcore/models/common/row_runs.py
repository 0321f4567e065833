"""Which HF rows each row of a parameter shard comes from, for transforms that only move rows.

'copy', 'qkv', 'vision_qkv' and 'gate_up' (and the 'replicated' / 'dim0' / 'gate_up' TP splits)
reorder whole rows and change nothing else. Running the transform on *row indices* instead of
weights gives each destination row's (source tensor, source row); consecutive rows of one source
form a run, and a loader can read each run from disk straight into its place in the parameter:
no temporaries, no concatenation, no copy. The transforms stay the one definition of the layout.
"""

from __future__ import annotations

import torch

from r1vfree_mcore.models.common.weight_transforms import ConvertCtx, hf_to_megatron, split_tp

ROW_MOVING_CONVERTS = frozenset({"copy", "qkv", "vision_qkv", "gate_up"})
ROW_MOVING_SPLITS = frozenset({"replicated", "dim0", "gate_up"})


def moves_rows_only(convert: str, split: str, tp: int) -> bool:
    """True when this rule's convert + TP split only reorder rows (so :func:`row_runs` applies)."""
    return convert in ROW_MOVING_CONVERTS and (tp == 1 or split in ROW_MOVING_SPLITS)


def row_runs(convert: str, split: str, hf_rows: list[int], ctx: ConvertCtx, tp: int,
             rank: int) -> list[tuple[int, int, int, int]]:
    """``(source index, first source row, row count, first destination row)`` runs covering this
    rank's shard, in destination order. ``hf_rows``: row count of each HF source tensor."""
    index = [torch.stack([torch.full((n,), i), torch.arange(n)], dim=1) for i, n in enumerate(hf_rows)]
    shard = split_tp(split, hf_to_megatron(convert, index, ctx), tp, rank)
    src, row = shard[:, 0], shard[:, 1]
    starts = [0] + ((src[1:] != src[:-1]) | (row[1:] != row[:-1] + 1)).nonzero().flatten().add(1).tolist()
    ends = starts[1:] + [len(src)]
    return [(int(src[a]), int(row[a]), b - a, a) for a, b in zip(starts, ends)]
