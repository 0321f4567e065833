"""Tiny HF checkpoints and comparisons shared by the conversion tests (2 decoder layers, 2 vision blocks).

4 query / 4 KV heads and 4 vision heads so TP=4 is a valid layout; vocab 300 so Megatron pads
it differently at TP=1 (384 rows) and TP=2/4 (512 rows). A plain module (not conftest) so test
files import it by a unique name.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPEC = dict(num_layers=2, num_kv_heads=4, vision_depth=2, vision_heads=4, fullatt_block_indexes=[1], vocab_size=300)


def write_tiny(root: Path, family: str, tied: bool, **overrides) -> Path:
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    name = f"{family}_{'tied' if tied else 'untied'}"
    return write_tiny_checkpoint(Path(root) / name, family=family, tied=tied, **{**SPEC, **overrides})


def hf_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_bit_exact(src: Path, dst: Path) -> None:
    a, b = hf_tensors(src), hf_tensors(dst)
    assert set(a) == set(b), (sorted(set(a) - set(b)), sorted(set(b) - set(a)))
    bad = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ: {bad[:5]}"


TP2PP2_CASES = [("qwen2_vl", False), ("qwen2_vl", True), ("qwen2_5_vl", False), ("qwen2_5_vl", True)]
