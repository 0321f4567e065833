"""hf-to-mcore saves gated fc1 records from mapped HF rows: the right rows per TP rank, and a
planned parameter the save would not cover is an error (it would be saved unfilled)."""

from __future__ import annotations

import pytest

from r1vfree_mcore.testing.distributed import run_distributed


def _records(rank, world, hf_dir, extra_plan_entry):
    import torch
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.conversion.mapped_records import gate_up_plan, map_gate_up_records
    from r1vfree_mcore.conversion.stage import build_empty_stage
    from r1vfree_mcore.models.common.weight_transforms import split_tp
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    cfg = ParallelConfig(tp=world)
    initialize_parallel(cfg)
    try:
        hf_config = load_hf_config(hf_dir)
        reader = HFReader(hf_dir, map_rows=True)
        model = build_empty_stage(hf_config, cfg, reader.info("model.embed_tokens.weight").dtype)
        plan = gate_up_plan(model, reader)
        gated = ("language_model.",) if hf_config.model_type == "qwen2_vl" else ("language_model.", "vision.blocks.")
        fc1 = {n for n, _ in model.named_parameters() if "linear_fc1" in n and n.startswith(gated)}
        sharded = model.sharded_state_dict()
        if extra_plan_entry:
            plan["language_model.decoder.final_layernorm.weight"] = next(iter(plan.values()))
        map_gate_up_records(sharded, model, reader, plan)
        left = [k for k, v in sharded.items() if isinstance(v, ShardedTensorFactory) and "linear_fc1" in k]
        checked = 0
        for key, value in sharded.items():
            if "linear_fc1" not in key or not isinstance(value, list):
                continue
            gate, up = (reader.get(n) for n in plan[key])  # keys are the local parameter names
            # The oracle: this rank's fused shard per the weight transforms, halved as megatron does.
            want = split_tp("gate_up", torch.cat([gate, up]), world, rank).chunk(2)
            for piece, w in zip(value, want):
                assert isinstance(piece, ShardedTensor) and torch.equal(piece.data, w), key
                checked += 1
        return sorted(plan), sorted(fc1), left, checked
    finally:
        destroy_parallel()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_fc1_records_are_the_hf_rows_of_each_rank(tiny, family):
    src = tiny(family, False)
    for rank, (plan, fc1, left, checked) in enumerate(run_distributed(_records, 2, str(src), False)):
        assert plan == fc1, f"rank {rank}: every gated fc1 parameter is mapped"
        assert not left and checked == 2 * len(fc1), f"rank {rank}"


def test_a_planned_parameter_without_a_gate_up_record_is_refused(tiny):
    with pytest.raises(Exception, match="would be saved unfilled"):
        run_distributed(_records, 1, str(tiny("qwen2_5_vl", False)), True)


def test_mcore_to_hf_maps_whole_records_instead_of_loading_them(tiny, tmp_path, monkeypatch):
    """A record that alone fills a requested tensor is mapped from the .distcp file: with
    torch.load unable to read data, the embedding (one record at TP=1) still arrives, exactly."""
    import torch

    from conversion_cases import hf_tensors
    from r1vfree_mcore.conversion.dist_io import load_full, load_hf_config, read_metadata, slots, tensors_metadata
    from r1vfree_mcore.conversion.to_mcore import hf_to_mcore

    src = tiny("qwen2_5_vl", False)
    hf_to_mcore(src, tmp_path / "mc", progress=False)
    dist = tmp_path / "mc" / "dist"
    name = "language_model.embedding.word_embeddings.weight"
    wanted = slots([name], tensors_metadata(read_metadata(dist)))
    real_load = torch.load

    def meta_only(*args, **kwargs):
        if kwargs.get("map_location") != "meta":
            raise AssertionError("record data was loaded, not mapped")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", meta_only)
    got = load_full(dist, wanted)[name]
    want = hf_tensors(src)["model.embed_tokens.weight"]
    vocab = load_hf_config(src).text_config.vocab_size
    assert got.shape[0] > vocab  # padded rows come along (stripped by the export)
    assert torch.equal(got[:vocab], want) and not got[vocab:].any()
