"""HF -> Megatron: every TP x PP rank fills its stage from the HF safetensors and they save together.

Each rank builds its stage on the meta device, checks every HF tensor it needs against its
parameter shapes (headers only), gives the parameters storage, copies its shards in tensor by
tensor from a lazy safetensors reader, and joins ``dist_checkpointing.save``. Peak memory per
rank is about its shard plus the largest HF tensor.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from pathlib import Path
from typing import Sequence

import torch

from r1vfree_mcore.conversion import metadata as md
from r1vfree_mcore.conversion.errors import ConversionError, name_list
from r1vfree_mcore.conversion.hf_io import HFReader, copy_metadata_files
from r1vfree_mcore.conversion.outdir import atomic_output, check_output
from r1vfree_mcore.conversion.progress import Progress
from r1vfree_mcore.conversion.stage import DTYPES
from r1vfree_mcore.conversion.workers import RankFailure, run_ranks
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


def _load_checked(model, reader: HFReader, hf_config, skip) -> None:
    """Fill the stage; a shape error names the HF tensors read last (ConversionError)."""
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict

    try:
        load_hf_state_dict(model, reader, hf_config, skip=skip)
    except (ValueError, RuntimeError) as exc:
        shapes = ", ".join(f"{n} {list(reader.info(n).shape)}" for n in reader.recent)
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


def _convert_one(counters, hf_dir, dist_dir, parallel: ParallelConfig, dtype_name: str) -> dict:
    """This rank's part of one conversion: build, check, fill and save its stage."""
    from megatron.core import dist_checkpointing

    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.conversion.mapped_records import gate_up_plan, map_gate_up_records
    from r1vfree_mcore.conversion.stage import build_empty_stage

    t0 = time.perf_counter()
    hf_config = load_hf_config(hf_dir)

    def on_read(nbytes):
        with counters.get_lock():
            counters[0] += nbytes
            counters[1] += 1

    # Plain tensors become views of the HF files: saved from the page cache, never copied in.
    reader = HFReader(hf_dir, on_read=on_read, map_rows=True)
    # Parameters get storage without being touched (no memory used until written); the load
    # checks every shape (a meta-device dry run would import TorchDynamo for its meta ops).
    model = build_empty_stage(hf_config, parallel, DTYPES[dtype_name])
    t1 = time.perf_counter()
    gate_up = gate_up_plan(model, reader)  # saved from mapped HF rows, never filled
    _load_checked(model, reader, hf_config, gate_up)
    sharded = model.sharded_state_dict()
    map_gate_up_records(sharded, model, reader, gate_up)
    reader.close()
    t2 = time.perf_counter()
    _fast_write_results_queue()
    crc32 = torch.serialization.get_crc32_options()
    # torch_dist stores each tensor as a torch.save zip record; its CRC32 costs ~0.5 s of CPU
    # per GB and no reader checks it (torch.load does not), so skip computing it for this save.
    torch.serialization.set_crc32_options(False)
    _count_saving(counters, +1)  # the bytes are in; the progress bar says the save runs
    try:
        dist_checkpointing.save({"model": sharded}, str(dist_dir))
    finally:
        torch.serialization.set_crc32_options(crc32)
        _count_saving(counters, -1)
    return {
        "seconds": {"build": t1 - t0, "load": t2 - t1, "save": time.perf_counter() - t2},
        "padded_vocab_size": model.padded_vocab_size,
    }


def _count_saving(counters, delta: int) -> None:
    with counters.get_lock():
        counters[2] += delta


def _rank_main(rank, world, counters, jobs, tp, pp, split):
    """One TP x PP rank: every job in turn (one process start-up for many checkpoints).

    Leaves megatron's parallel state as it found it (none), also when run in the caller's process.
    """
    from r1vfree_mcore.parallel.state import destroy_parallel, initialize_parallel

    parallel = ParallelConfig(tp, pp, split)
    initialize_parallel(parallel)
    try:
        stats = [_convert_one(counters, hf_dir, dist_dir, parallel, dtype) for hf_dir, dist_dir, dtype in jobs]
    finally:
        destroy_parallel()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [dict(s, peak_rss_bytes=peak) for s in stats]


def _prepare(hf_dir: Path, parallel: ParallelConfig, dtype: str):
    """Checks that need no worker: config, layout, tensor names, truncation; resolves dtype."""
    from r1vfree_mcore.conversion.dist_io import load_hf_config
    from r1vfree_mcore.models.common.vlm import validate

    hf_config = load_hf_config(hf_dir)
    try:
        validate(hf_config, parallel)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    reader = HFReader(hf_dir)
    check_tensor_names(hf_config, reader)
    dtype = source_dtype(hf_config, reader) if dtype == "auto" else dtype
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    return hf_config, reader, dtype


def _finish(tmp: Path, hf_dir: Path, hf_config, reader: HFReader, parallel: ParallelConfig, dtype: str,
            padded_vocab: int) -> None:
    from r1vfree_mcore.models.common.hf_config import family_of, text_config, tied_embeddings

    copy_metadata_files(hf_dir, tmp / md.HF_META)
    md.ConversionInfo(
        family=family_of(hf_config), tp=parallel.tp, pp=parallel.pp, dtype=dtype,
        vocab_size=text_config(hf_config).vocab_size, padded_vocab_size=padded_vocab,
        tied_embeddings=tied_embeddings(hf_config), num_tensors=len(reader.names()), source=str(hf_dir.absolute()),
    ).write(tmp)
    (tmp / md.TRAIN_STATE).write_text(json.dumps(md.initial_train_state(str(hf_dir.absolute())), indent=1))


def hf_to_mcore_many(jobs: Sequence[tuple[str | Path, str | Path]], *, tp: int = 1, pp: int = 1,
                     pp_layer_split: tuple[int, ...] | None = None, dtype: str = "auto",
                     verify: bool = False, force: bool = False, progress: bool = True,
                     in_process: bool | None = None) -> list[dict]:
    """Convert several HF checkpoints ``(hf_dir, out)`` with one set of ``tp * pp`` rank processes.

    Every input is checked before any rank starts; outputs appear together at the end (each
    atomically). Returns one summary per job, as :func:`hf_to_mcore`. ``in_process``: run a
    TP=1/PP=1 conversion in this process (None: when no torch.distributed group exists here;
    see :func:`~r1vfree_mcore.conversion.workers.run_ranks`).
    """
    parallel = ParallelConfig(tp, pp, tuple(pp_layer_split) if pp_layer_split else None)
    jobs = [(Path(h), Path(o)) for h, o in jobs]
    for _, out in jobs:
        check_output(out.absolute(), force)
    prepared = [_prepare(hf_dir, parallel, dtype) for hf_dir, _ in jobs]
    total = sum(r.total_bytes() for _, r, _ in prepared)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_output(out, force)) for _, out in jobs]
        for tmp in tmps:
            (tmp / md.DIST).mkdir()
        # Every TP rank of a stage reads the full HF tensors of that stage: tp x the checkpoints.
        bar = Progress("hf-to-mcore", total * tp, sum(len(r.names()) for _, r, _ in prepared) * tp, enabled=progress)
        rank_jobs = [(str(h), str(t / md.DIST), d) for (h, _), t, (_, _, d) in zip(jobs, tmps, prepared)]
        try:
            stats = run_ranks(_rank_main, tp * pp, rank_jobs, tp, pp, parallel.pp_layer_split,
                              in_process=in_process, on_poll=bar.update_from)
        except RankFailure as exc:
            if "ConversionError" in exc.first_line or "ValueError" in exc.first_line:
                raise ConversionError(exc.first_line.split(": ", 2)[-1]) from None
            raise
        finally:
            bar.close()
        for k, ((hf_dir, _), tmp, (hf_config, reader, dt)) in enumerate(zip(jobs, tmps, prepared)):
            _finish(tmp, hf_dir, hf_config, reader, parallel, dt, stats[0][k]["padded_vocab_size"])
    seconds = time.perf_counter() - t0
    summaries = []
    for k, ((hf_dir, out), (_, reader, dt)) in enumerate(zip(jobs, prepared)):
        summary = {"seconds": seconds, "bytes": reader.total_bytes(),
                   "peak_rss_bytes_per_rank": [s[k]["peak_rss_bytes"] for s in stats],
                   "rank0_seconds": {n: round(v, 3) for n, v in stats[0][k]["seconds"].items()}}
        if verify:
            from r1vfree_mcore.conversion.verify import verify_pair

            summary["max_abs_logit_diff"] = verify_pair(hf_dir, out, dt)
        summaries.append(summary)
    return summaries


def hf_to_mcore(hf_dir: str | Path, out: str | Path, *, tp: int = 1, pp: int = 1,
                pp_layer_split: tuple[int, ...] | None = None, dtype: str = "auto",
                verify: bool = False, force: bool = False, progress: bool = True,
                in_process: bool | None = None) -> dict:
    """Convert an HF Qwen2-VL / Qwen2.5-VL checkpoint to a Megatron dist checkpoint at ``out``.

    Spawns ``tp * pp`` gloo CPU processes (TP=1/PP=1: runs in this process unless it already
    has a torch.distributed group, or ``in_process=False``). ``dtype``: 'auto' (the HF checkpoint's), 'fp32',
    'bf16' or 'fp16'. Returns a summary dict (seconds, bytes, peak RSS per rank, rank-0 phase
    times, and ``max_abs_logit_diff`` when ``verify``). Raises :class:`ConversionError` on bad
    input (output left untouched).
    """
    return hf_to_mcore_many([(hf_dir, out)], tp=tp, pp=pp, pp_layer_split=pp_layer_split, dtype=dtype,
                            verify=verify, force=force, progress=progress, in_process=in_process)[0]
