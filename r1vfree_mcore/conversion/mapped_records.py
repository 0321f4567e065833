"""Save the gated MLP's ``linear_fc1`` records of a converted stage straight from the HF files.

megatron saves a gated (SwiGLU) ``linear_fc1`` as two records per rank, its gate half and its up
half: a ``ShardedTensorFactory`` chunks the fused parameter at save time, and the torch_dist
writer then clones both halves (views of one storage). Each half is a contiguous row range of
HF's ``gate_proj`` / ``up_proj`` (rank r's r-th chunk), so the converter builds those two records
over mapped HF rows instead (:meth:`~r1vfree_mcore.conversion.hf_io.HFReader.map_rows`): the
fused parameter is never filled, and nothing is read into memory, fused or cloned. For a 7B
Qwen2.5-VL that is 7.6 GB of its 16.6 GB, copied three times before.
"""

from __future__ import annotations

from r1vfree_mcore.conversion.errors import ConversionError
from r1vfree_mcore.models.common.row_runs import row_runs
from r1vfree_mcore.models.common.weight_loading import convert_ctx, fetch_info, hf_sources, tp_layout


def gate_up_plan(model, reader) -> dict[str, tuple[str, str]]:
    """Local fc1 parameter -> the (gate, up) HF tensor names its two records can be mapped from
    (gate/up rule, both HF tensors in the parameter's dtype)."""
    plan = {}
    for local, param in model.named_parameters():
        rule, names = hf_sources(model, local)
        if rule.convert != "gate_up" or rule.split != "gate_up" or len(names) != 2:
            continue
        found = [fetch_info(reader, n) for n in names]
        if all(info.dtype == param.dtype for _, info in found):
            plan[local] = (found[0][0], found[1][0])
    return plan


def map_gate_up_records(sharded_state_dict: dict, model, reader, plan: dict[str, tuple[str, str]]) -> None:
    """Replace (in place) the fc1 factories of ``plan``'s parameters in ``sharded_state_dict`` by
    their two ShardedTensors over mapped HF rows. Every planned parameter must be found: one
    that is not would be saved unfilled, so that raises."""
    from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    tp, rank, _ = tp_layout()
    ctx = convert_ctx(model.hf_config, model.padded_vocab_size)
    params = dict(model.named_parameters())
    by_storage = {params[local].data_ptr(): local for local in plan}
    done: set[str] = set()

    def swap(x):
        if not isinstance(x, ShardedTensorFactory) or x.data.data_ptr() not in by_storage:
            return x
        local = by_storage[x.data.data_ptr()]
        names = plan[local]
        pieces = x.build()
        # This rank's rows of gate and up, as the weight transforms lay out its fused shard.
        runs = row_runs("gate_up", "gate_up", [reader.info(n).shape[0] for n in names], ctx, tp, rank)
        if len(pieces) != 2 or [src for src, _, _, _ in runs] != [0, 1]:
            raise RuntimeError(f"{local}: expected megatron's gate/up pair of records, got {len(pieces)} "
                               f"records for {len(runs)} row runs")
        for piece, (src, row, count, _) in zip(pieces, runs):
            mapped = reader.map_rows(names[src], row, count)
            if tuple(mapped.shape) != tuple(piece.local_shape) or mapped.dtype != piece.data.dtype:
                raise ConversionError(f"{names[src]}: rows {row}..{row + count} are {list(mapped.shape)} "
                                      f"{mapped.dtype}; {local} needs {list(piece.local_shape)} {piece.data.dtype}")
            piece.data = mapped
        done.add(local)
        return pieces

    dict_list_map_inplace(swap, sharded_state_dict)
    missing = sorted(set(plan) - done)
    if missing:
        raise RuntimeError(f"no gate/up save factory found for {missing}; they would be saved unfilled")
