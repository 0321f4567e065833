"""The streaming safetensors reader: whole tensors, row ranges read straight into a tensor, errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from r1vfree_mcore.conversion.hf_io import HFReader


@pytest.fixture()
def ckpt(tmp_path):
    tensors = {
        "model.embed_tokens.weight": torch.randn(10, 4).to(torch.bfloat16),
        "model.norm.weight": torch.randn(4),
        "visual.blocks.0.attn.qkv.bias": torch.arange(6, dtype=torch.float16),
    }
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path, tensors


def test_get_returns_exact_tensors_and_reports_each_once(ckpt):
    d, tensors = ckpt
    seen = []
    reader = HFReader(d, on_read=seen.append)
    for name, want in tensors.items():
        got = reader.get(name)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(reader.get("model.visual.blocks.0.attn.qkv.bias"), tensors["visual.blocks.0.attn.qkv.bias"])
    assert seen == [t.numel() * t.element_size() for t in tensors.values()] + [12]
    with pytest.raises(KeyError):
        reader.get("lm_head.weight")


def test_read_rows_into_fills_only_the_rows_asked(ckpt):
    d, tensors = ckpt
    reader = HFReader(d)
    emb = tensors["model.embed_tokens.weight"]
    out = torch.full((7, 4), 5.0, dtype=torch.bfloat16)
    reader.read_rows_into("model.language_model.embed_tokens.weight", 3, out[:4])  # 5.x spelling
    assert torch.equal(out[:4], emb[3:7]) and (out[4:] == 5).all()
    bias = torch.empty(2, dtype=torch.float16)
    reader.read_rows_into("visual.blocks.0.attn.qkv.bias", 4, bias)
    assert bias.tolist() == [4.0, 5.0]


@pytest.mark.parametrize("out,row", [
    (torch.empty(4, 4, dtype=torch.float32), 0),  # wrong dtype
    (torch.empty(4, 3, dtype=torch.bfloat16), 0),  # wrong trailing shape
    (torch.empty(4, 4, dtype=torch.bfloat16), 7),  # past the last row
    (torch.empty(4, 8, dtype=torch.bfloat16)[:, :4], 0),  # not contiguous
])
def test_read_rows_into_rejects_what_does_not_fit(ckpt, out, row):
    with pytest.raises(ValueError, match="model.embed_tokens.weight: cannot read rows"):
        HFReader(ckpt[0]).read_rows_into("model.embed_tokens.weight", row, out)


def test_map_rows_views_the_file_without_changing_it(ckpt):
    d, tensors = ckpt
    emb = tensors["model.embed_tokens.weight"]
    with pytest.raises(RuntimeError, match="map_rows=True"):
        HFReader(d).map_rows("model.embed_tokens.weight", 0, 2)
    seen = []
    reader = HFReader(d, on_read=seen.append, map_rows=True)
    rows = reader.map_rows("model.language_model.embed_tokens.weight", 3, 5)  # 5.x spelling
    assert rows.dtype == torch.bfloat16 and torch.equal(rows, emb[3:8]) and seen == [emb.numel() * 2]
    # Its own storage (what megatron's writer checks before it would clone a view)...
    assert rows.untyped_storage().nbytes() == rows.numel() * rows.element_size()
    bias = reader.map_rows("visual.blocks.0.attn.qkv.bias", 1, 5)
    assert bias.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    rows.fill_(0)  # ...private: the file keeps its bytes
    assert torch.equal(HFReader(d).get("model.embed_tokens.weight"), emb)
    for row, count in ((8, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="cannot map rows"):
            reader.map_rows("model.embed_tokens.weight", row, count)


def test_map_bytes_refuses_a_range_past_the_end_of_the_file(tmp_path):
    from r1vfree_mcore.conversion.errors import ConversionError
    from r1vfree_mcore.conversion.file_map import map_bytes

    f = tmp_path / "x.bin"
    f.write_bytes(bytes(range(16)))
    assert map_bytes(f, 4, 8, torch.uint8, (2, 4)).flatten().tolist() == list(range(4, 12))
    with pytest.raises(ConversionError, match="truncated file .*x.bin"):
        map_bytes(f, 12, 8, torch.uint8, (8,))


def test_mapped_tensors_know_their_file_range_and_are_written_file_to_file(tmp_path):
    import gc

    from safetensors.torch import load_file

    from r1vfree_mcore.conversion import file_map
    from r1vfree_mcore.conversion.hf_io import ShardedWriter

    f = tmp_path / "x.bin"
    data = torch.arange(64, dtype=torch.int32)
    f.write_bytes(b"\0" * 8 + data.numpy().tobytes())
    t = file_map.map_bytes(f, 8, 256, torch.int32, (8, 8))
    assert file_map.file_range_of(t) == (str(f), 8)
    assert file_map.file_range_of(t[2:4]) == (str(f), 8 + 2 * 32)  # a row range: its own offset
    assert file_map.file_range_of(t[:, :4]) is None  # not contiguous
    assert file_map.file_range_of(t.clone()) is None  # plain memory
    out = tmp_path / "out"
    out.mkdir()
    writer = ShardedWriter(out, [("a", (2, 8), torch.int32), ("b", (8, 8), torch.int32)], 10**9)
    writer.add("a", t[2:4])  # through copy_file_range
    writer.add("b", t.clone())  # through pwrite
    writer.finish()
    got = load_file(out / "model.safetensors")
    assert torch.equal(got["a"], data.view(8, 8)[2:4]) and torch.equal(got["b"], data.view(8, 8))
    address = t.untyped_storage().data_ptr()
    assert address in file_map._MAPPED
    del t
    gc.collect()
    assert address not in file_map._MAPPED  # the entry goes with its mapping


def test_writer_falls_back_to_memory_when_the_kernel_copy_fails(tmp_path, monkeypatch):
    import errno
    import os

    from safetensors.torch import load_file

    from r1vfree_mcore.conversion import file_map, hf_io

    f = tmp_path / "x.bin"
    f.write_bytes(torch.arange(16, dtype=torch.int32).numpy().tobytes())
    t = file_map.map_bytes(f, 0, 64, torch.int32, (16,))

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    out = tmp_path / "out"
    out.mkdir()
    writer = hf_io.ShardedWriter(out, [("a", (16,), torch.int32), ("b", (8,), torch.int32)], 10**9)
    with pytest.warns(UserWarning, match="copy_file_range into .* failed"):
        writer.add("a", t)
    writer.add("b", t[8:])  # no second try
    writer.finish()
    got = load_file(out / "model.safetensors")
    assert got["a"].tolist() == list(range(16)) and got["b"].tolist() == list(range(8, 16))
    assert not writer.kernel_copy


def _fetched_whole(rank, world, hf_dir):
    import torch

    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.models.common.weight_loading import export_hf_state_dict, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    initialize_parallel(ParallelConfig())
    try:
        hf_config = load_hf_config(hf_dir)
        fetched = []
        get = HFReader.get

        def spy(self, name):  # a fresh rank process: patching the class is local to it
            fetched.append(name)
            return get(self, name)

        HFReader.get = HFReader.__call__ = spy
        reader = HFReader(hf_dir)
        model = build_model(hf_config, ParallelConfig())
        load_hf_state_dict(model, reader, hf_config)
        back = export_hf_state_dict(model)
        fetched_by_load = sorted(fetched)
        same = all(torch.equal(back[n], get(reader, n)) for n in back)
        return fetched_by_load, same
    finally:
        destroy_parallel()


def test_fused_parameters_are_read_run_by_run_not_through_temporaries(tiny):
    """Fused QKV and gate/up parameters are filled by row runs straight from disk; only the
    patch embedding (a reshape across dims) is fetched whole; the weights come back exact."""
    from r1vfree_mcore.testing.distributed import run_distributed

    fetched, same = run_distributed(_fetched_whole, 1, str(tiny("qwen2_5_vl", False)))[0]
    assert fetched == ["visual.patch_embed.proj.weight"] and same
