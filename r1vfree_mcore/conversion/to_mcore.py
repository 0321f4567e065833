"""HF -> Megatron: every TP x PP rank fills its stage from the HF safetensors and they save together.

Each rank builds its stage on the meta device, checks every HF tensor it needs against its
parameter shapes (headers only), gives the parameters storage, copies its shards in tensor by
tensor from a lazy safetensors reader, and joins ``dist_checkpointing.save``. Peak memory per
rank is about its shard plus the largest HF tensor.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from r1vfree_mcore.conversion import metadata as md
from r1vfree_mcore.conversion.errors import ConversionError, name_list
from r1vfree_mcore.conversion.hf_io import HFReader, copy_metadata_files
from r1vfree_mcore.conversion.outdir import atomic_output, check_output
from r1vfree_mcore.conversion.progress import Progress
from r1vfree_mcore.conversion.stage import DTYPES
from r1vfree_mcore.conversion.workers import RankFailure, spawn_ranks
from r1vfree_mcore.parallel.state import ParallelConfig

_HF_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def source_dtype(hf_config, reader: HFReader) -> str:
    """The checkpoint's dtype name: config ``dtype``/``torch_dtype``, else the embedding's dtype."""
    name = str(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or "")
    name = name.replace("torch.", "")
    if name in _HF_DTYPES:
        return _HF_DTYPES[name]
    emb = reader.info("model.embed_tokens.weight").dtype
    return {v: k for k, v in DTYPES.items()}.get(emb, "fp32")


def check_tensor_names(hf_config, reader: HFReader) -> None:
    """Missing / unexpected HF tensors -> one ConversionError listing them."""
    from r1vfree_mcore.conversion.layout import expected_hf_names, optional_hf_names

    expected, have = expected_hf_names(hf_config), reader.names()
    missing = expected - have
    extra = have - expected - optional_hf_names(hf_config)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {name_list(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensors: {name_list(extra)}")
    if problems:
        raise ConversionError(f"{reader.dir}: " + "; ".join(problems))


def _check_shapes(model, reader: HFReader, hf_config) -> None:
    """Dry run of the load on the meta device: shape errors name the HF tensors involved."""
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict

    asked: list[str] = []

    def meta_get(name):
        info = reader.info(name)  # KeyError passes through (alias lookup)
        asked.append(name)
        return torch.empty(info.shape, dtype=info.dtype, device="meta")

    try:
        load_hf_state_dict(model, meta_get, hf_config)
    except (ValueError, RuntimeError) as exc:
        shapes = ", ".join(f"{n} {list(reader.info(n).shape)}" for n in asked[-3:])
        raise ConversionError(f"shape mismatch: HF tensors [{shapes}] do not fit the model config: "
                              f"{str(exc).splitlines()[0]}") from None


def _fast_write_results_queue() -> None:
    """Give megatron's torch_dist writer its results queue from a forked Manager.

    megatron-core creates it lazily from a *spawned* Manager, a fresh interpreter that re-imports
    torch (~5 s on this 2-core machine, per save); a forked one starts in milliseconds. Same queue
    type, so the writer behaves the same.
    """
    import multiprocessing as mp

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", "absent") is None:
        filesystem_async._results_queue = mp.get_context("fork").Manager().Queue()


def _rank_main(rank, world, counters, hf_dir, dist_dir, tp, pp, split, dtype_name):
    """One TP x PP rank: build, check, fill and save its stage. Returns stats for the parent."""
    from megatron.core import dist_checkpointing

    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.stage import _materialize, build_empty_stage, stage_sharded_state_dict
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict
    from r1vfree_mcore.parallel.state import initialize_parallel

    hf_config = load_hf_config(hf_dir)
    parallel = ParallelConfig(tp, pp, split)
    initialize_parallel(parallel)
    reader = HFReader(hf_dir)
    model = build_empty_stage(hf_config, parallel, DTYPES[dtype_name], materialize=False)
    _check_shapes(model, reader, hf_config)
    _materialize(model)

    def get(name):
        t = reader.get(name)
        with counters.get_lock():
            counters[0] += t.numel() * t.element_size()
            counters[1] += 1
        return t

    load_hf_state_dict(model, get, hf_config)
    reader.close()
    with counters.get_lock():
        counters[2] += 1  # loaded; now saving
    _fast_write_results_queue()
    dist_checkpointing.save({"model": stage_sharded_state_dict(model)}, str(dist_dir))
    return {
        "padded_vocab_size": model.padded_vocab_size,
        "num_params": sum(1 for _ in model.parameters()),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def hf_to_mcore(hf_dir: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1,
                pp_layer_split: tuple[int, ...] | None = None, dtype: str = "auto",
                verify: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Convert an HF Qwen2-VL / Qwen2.5-VL checkpoint to a Megatron dist checkpoint at ``out``.

    Spawns ``tp * pp`` gloo CPU processes. ``dtype``: 'auto' (the HF checkpoint's), 'fp32',
    'bf16' or 'fp16'. Returns a summary dict (times, bytes, peak RSS per rank, and
    ``max_abs_logit_diff`` when ``verify``). Raises :class:`ConversionError` on bad input.
    """
    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.models.common.hf_config import family_of, text_config, tied_embeddings
    from r1vfree_mcore.models.common.vlm import validate

    hf_dir, out = Path(hf_dir), Path(out)
    check_output(out.absolute(), force)
    hf_config = load_hf_config(hf_dir)
    try:
        parallel = ParallelConfig(tp, pp, tuple(pp_layer_split) if pp_layer_split else None)
        validate(hf_config, parallel)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    reader = HFReader(hf_dir)
    check_tensor_names(hf_config, reader)
    dtype = source_dtype(hf_config, reader) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    total = sum(reader.info(n).nbytes for n in reader.names())
    t0 = time.perf_counter()
    with atomic_output(out, force) as tmp:
        # Every TP rank of a stage reads the full HF tensors of that stage: tp x the checkpoint.
        bar = Progress("hf-to-mcore", total * tp, len(reader.names()) * tp, enabled=progress)
        (tmp / md.DIST).mkdir()
        try:
            stats = spawn_ranks(_rank_main, tp * pp, str(hf_dir), str(tmp / md.DIST), tp, pp,
                                parallel.pp_layer_split, dtype, on_poll=bar.update_from)
        except RankFailure as exc:
            bar.close()
            if "ConversionError" in exc.first_line or "ValueError" in exc.first_line:
                raise ConversionError(exc.first_line.split(": ", 2)[-1]) from None
            raise
        bar.close()
        copy_metadata_files(hf_dir, tmp / md.HF_META)
        tc = text_config(hf_config)
        md.ConversionInfo(
            family=family_of(hf_config), tp=tp, pp=pp, dtype=dtype, vocab_size=tc.vocab_size,
            padded_vocab_size=stats[0]["padded_vocab_size"], tied_embeddings=tied_embeddings(hf_config),
            num_tensors=len(reader.names()), source=str(hf_dir.absolute()),
        ).write(tmp)
        (tmp / md.TRAIN_STATE).write_text(json.dumps(md.initial_train_state(str(hf_dir.absolute())), indent=1))
    summary = {"seconds": time.perf_counter() - t0, "bytes": total,
               "peak_rss_bytes_per_rank": [s["peak_rss_bytes"] for s in stats]}
    if verify:
        from r1vfree_mcore.conversion.verify import verify_pair

        summary["max_abs_logit_diff"] = verify_pair(hf_dir, out, dtype)
    return summary
