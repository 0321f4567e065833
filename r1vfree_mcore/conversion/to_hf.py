"""Megatron -> HF, streaming: one decoder layer / vision block / large tensor in memory at a time.

1. Find the checkpoint's ``dist/`` and HF files (converter output or a trainer checkpoint).
2. Plan on the meta device: every streaming unit is exported once with meta tensors, which
   gives each HF name, shape and dtype; the plan is checked against the tensors transformers
   expects for the config (missing / extra / shape), then cut into shard files.
3. Stream: load a unit's global tensors from the dist checkpoint (any TP/PP), convert with the
   family weight map, hand tensors to the shard writer (which flushes each file once complete).
4. Write config (dtype updated), generation config, tokenizer and processor files; rename.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import torch

from r1vfree_mcore.conversion import metadata as md
from r1vfree_mcore.conversion.errors import ConversionError, name_list
from r1vfree_mcore.conversion.hf_io import ShardedWriter, copy_metadata_files, disk_name
from r1vfree_mcore.conversion.outdir import atomic_output, check_output
from r1vfree_mcore.conversion.progress import Progress

DEFAULT_MAX_SHARD = "2GB"
_TORCH_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def parse_size(text: str | int) -> int:
    """'2GB', '500MB', '1.5GiB' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not m:
        raise ConversionError(f"--max-shard-size: cannot parse {text!r} (e.g. 2GB, 500MB)")
    base = 1024 if m.group(3) == "IB" else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2) or " "))


def _hf_reference_shapes(hf_config) -> dict[str, tuple[int, ...]]:
    """On-disk name -> shape of every tensor transformers builds for the config (meta device)."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config)
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return {disk_name(n): tuple(t.shape) for n, t in model.state_dict().items()
            if not (tied and n == "lm_head.weight")}


def _export(hf_config, tensors: dict, padded_vocab: int) -> dict[str, torch.Tensor]:
    from r1vfree_mcore.models.common.weight_loading import export_hf_state_dict

    return export_hf_state_dict(tensors, hf_config, padded_vocab)


def plan_export(hf_config, slots: dict, padded_vocab: int, units: list[list[str]], dtype):
    """(name, shape, dtype) of every HF tensor, unit by unit (checked by :func:`check_plan`)."""
    plan = []
    for unit in units:
        meta = {n: torch.empty(slots[n].shape, dtype=slots[n].dtype, device="meta") for n in unit}
        for name, t in _export(hf_config, meta, padded_vocab).items():
            plan.append((name, tuple(t.shape), dtype or t.dtype))
    return plan


def check_plan(plan, reference: dict[str, tuple[int, ...]]) -> None:
    """ConversionError unless the plan writes exactly the tensors and shapes transformers builds."""
    got = {n: s for n, s, _ in plan}
    problems = []
    if set(reference) - set(got):
        problems.append(f"would not write {name_list(set(reference) - set(got))}")
    if set(got) - set(reference):
        problems.append(f"would write unexpected {name_list(set(got) - set(reference))}")
    bad = [f"{n} {list(got[n])} (transformers expects {list(reference[n])})" for n in sorted(set(got) & set(reference))
           if got[n] != reference[n]]
    if bad:
        problems.append(f"shape mismatch: {name_list(bad, 4)}")
    if problems:
        raise ConversionError("checkpoint does not match its HF config: " + "; ".join(problems))


def _check_unknown_keys(metadata: dict, slots: dict) -> None:
    """Model tensors in the checkpoint that no weight-map rule covers are an error (not dropped)."""
    known = {s.key for s in slots.values()}
    unknown = [k for k in metadata if k not in known and not k.startswith("optimizer.")]
    if unknown:
        raise ConversionError(f"checkpoint holds {len(unknown)} tensors the weight map does not cover: "
                              f"{name_list(unknown)}")


def _write_hf_files(src: Path, out: Path, dtype: torch.dtype) -> None:
    copy_metadata_files(src, out)
    for stale in ("tiny_spec.json",):  # test-fixture description, not part of an HF checkpoint
        (out / stale).unlink(missing_ok=True)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = _TORCH_NAMES.get(dtype, "float32")
    cfg.pop("torch_dtype", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _stream(ckpt: Path, hf_config, out: Path, max_shard: int, dtype, progress: bool) -> dict:
    from r1vfree_mcore.conversion.dist_io import load_full, read_metadata, slots as slots_of, tensors_metadata
    from r1vfree_mcore.conversion.layout import groups, megatron_names

    dist_dir = ckpt / md.DIST
    dcp_metadata = read_metadata(dist_dir)
    metadata = tensors_metadata(dcp_metadata)
    slots = slots_of(megatron_names(hf_config), metadata)
    _check_unknown_keys(metadata, slots)
    padded = slots["language_model.embedding.word_embeddings.weight"].shape[0]
    units = groups(hf_config)
    plan = plan_export(hf_config, slots, padded, units, dtype)
    check_plan(plan, _hf_reference_shapes(hf_config))  # before a byte is written
    writer = ShardedWriter(out, plan, max_shard)
    bar = Progress("mcore-to-hf", writer.total_size, len(plan), enabled=progress)
    written = 0
    try:
        for unit in units:
            full = load_full(dist_dir, {n: slots[n] for n in unit}, dcp_metadata)
            hf = _export(hf_config, full, padded)
            del full
            for name, t in hf.items():
                if dtype is not None:
                    t = t.to(dtype)
                writer.add(name, t)
                written += t.numel() * t.element_size()
                bar.update(t.numel() * t.element_size())
            del hf
        writer.finish()
    finally:
        writer.close()
        bar.close()
    return {"bytes": written, "tensors": len(plan), "shards": len(writer.files),
            "largest_shard_bytes": writer.largest_shard_bytes, "dtype": plan[0][2]}


def mcore_to_hf(mcore_dir: str | Path, out: str | Path, *, hf_dir: str | Path | None = None,
                max_shard_size: str | int = DEFAULT_MAX_SHARD, dtype: str | None = None,
                verify: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Export a Megatron dist checkpoint (converter output or trainer checkpoint) to HF format.

    ``mcore_dir``: a directory with ``dist/`` (or a checkpoints root with ``latest``).
    ``hf_dir``: where config/tokenizer/processor files are (default: ``mcore_dir/hf`` or the
    trainer's ``config.yaml`` ``model.hf_dir``). ``dtype``: None (as stored), 'fp32', 'bf16'.
    Returns a summary dict; raises :class:`ConversionError` on bad input.
    """
    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.stage import DTYPES

    out = Path(out)
    check_output(out.absolute(), force)
    ckpt = md.resolve_checkpoint(mcore_dir)
    files_dir = md.hf_files_dir(ckpt, hf_dir)
    hf_config = load_hf_config(files_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    torch_dtype = DTYPES[dtype] if dtype else None
    t0 = time.perf_counter()
    with atomic_output(out, force) as tmp:
        summary = _stream(ckpt, hf_config, tmp, parse_size(max_shard_size), torch_dtype, progress)
        _write_hf_files(files_dir, tmp, summary["dtype"])
    summary["seconds"] = time.perf_counter() - t0
    if verify:
        from r1vfree_mcore.conversion.verify import verify_pair

        name = {v: k for k, v in DTYPES.items()}[summary["dtype"]]
        summary["max_abs_logit_diff"] = verify_pair(out, ckpt, name)
    return summary


def export_hf(checkpoint_dir: str | Path, out_dir: str | Path, **kwargs) -> dict:
    """The trainer's HF export: :func:`mcore_to_hf` in a fresh process when this one is part of a
    multi-rank torch.distributed job (dist_checkpointing.load is collective over the default
    group); call it from one rank. ``kwargs`` as for :func:`mcore_to_hf`."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        from r1vfree_mcore.conversion.workers import spawn_ranks

        kwargs.setdefault("progress", False)
        return spawn_ranks(_export_rank, 1, str(checkpoint_dir), str(out_dir), kwargs)[0]
    return mcore_to_hf(checkpoint_dir, out_dir, **kwargs)


def _export_rank(rank, world, counters, checkpoint_dir, out_dir, kwargs):
    return mcore_to_hf(checkpoint_dir, out_dir, **kwargs)
