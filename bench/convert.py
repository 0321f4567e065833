"""Benchmark: HF <-> Megatron conversion of a >= 1 GB synthetic Qwen2.5-VL checkpoint vs a plain copy.

Writes a random bf16 checkpoint with Qwen2.5-VL shapes (decoder hidden 1536, real 151,936
vocab, vision hidden 1280; by default the depths of the family's smallest model, 4.55 GiB) in
safetensors shards, then times, in each of ``--rounds`` rounds (median reported):

* ``copy``: copying the same safetensors files and flushing them to storage (``cp`` + ``sync``:
  read every byte from storage, write every byte to storage), the physical limit of a
  conversion, which also leaves its output on storage (megatron's writer and ours fsync);
* ``copy (page cache)``: the same copy from and into the page cache, no flush (reference only);
* ``hf-to-mcore`` and ``mcore-to-hf``: the ``r1vfree-convert`` CLI in a subprocess, wall time
  end to end (interpreter start and imports included) and the library's own time (excluded);
* ``start-up``: a process that only starts Python and imports what a conversion imports: the
  fixed cost inside every CLI wall time, shown for reference (not part of the targets).

Every step but the page-cache copy starts alike: dirty pages flushed (``sync``) and the
benchmark's checkpoint files dropped from the page cache (``posix_fadvise(DONTNEED)``), so each
reads its input from storage and no step pays for the previous one's writes.

Peak RSS is the largest sum of PSS (proportional set size: RSS with shared pages split between
the processes sharing them, so forked writers are not counted twice) over the CLI process and
all its children, polled every 100 ms with psutil (max over rounds). It is compared with the
unit each direction must hold by design: for hf-to-mcore the largest per-rank Megatron shard
(at TP=1 the whole model: dist_checkpointing saves a rank's tensors together), for mcore-to-hf
the largest safetensors file written.

    python bench/convert.py [--workdir DIR] [--layers 28] [--vision-depth 32] [--rounds 3] [--tp 1] [--pp 1] [--max-shard-size 2GB]

Last line: ``{"bench": "convert", "time_vs_copy": x, "peak_rss_vs_largest_shard": y}`` (worse of
the two directions; time on end-to-end wall against the copy to storage).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

GB = 1024**3


def write_synthetic(out: Path, layers: int, vision_depth: int, shard_bytes: int) -> Path:
    """Random bf16 Qwen2.5-VL checkpoint: tiny tokenizer/processor files, realistic tensor shapes."""
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

    from r1vfree_mcore.conversion.hf_io import ShardedWriter, disk_name
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    write_tiny_checkpoint(out, family="qwen2_5_vl", num_layers=1, vision_depth=1)
    small = json.loads((out / "config.json").read_text())
    small["text_config"].pop("layer_types", None)  # derived from the layer count
    text = dict(small["text_config"], vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                num_hidden_layers=layers, num_attention_heads=12, num_key_value_heads=2,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(small["vision_config"], depth=vision_depth, hidden_size=1280, intermediate_size=3420,
                  num_heads=16, out_hidden_size=1536, window_size=112, fullatt_block_indexes=[vision_depth - 1])
    keep = {k: small[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **keep)
    cfg.dtype = "bfloat16"
    for f in out.glob("*.safetensors"):
        f.unlink()
    cfg.save_pretrained(out)
    with torch.device("meta"):
        shapes = {disk_name(n): tuple(t.shape) for n, t in AutoModelForImageTextToText.from_config(cfg).state_dict().items()}
    plan = [(n, s, torch.bfloat16) for n, s in sorted(shapes.items())]
    writer = ShardedWriter(out, plan, shard_bytes)
    gen = torch.Generator().manual_seed(0)
    for name, shape, dtype in plan:
        writer.add(name, (torch.randn(shape, generator=gen) * 0.02).to(dtype))
    writer.finish()
    return out


def files_bytes(d: Path, pattern: str = "*") -> tuple[int, int]:
    """(total bytes, largest file bytes) of files matching ``pattern`` under ``d`` (recursive)."""
    sizes = [p.stat().st_size for p in d.rglob(pattern) if p.is_file()]
    return sum(sizes), max(sizes)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_measured(cmd: list[str]) -> tuple[float, int, str, float]:
    """(wall s, peak PSS of the process tree in bytes, stdout, CPU s of the tree) of a command."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            # PSS: forked writer processes share pages with their parent; RSS would count them twice.
            peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
        except psutil.Error:
            pass  # a child exited between listing and reading
        time.sleep(0.1)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-4000:]}")
    return wall, peak, out, _children_cpu() - cpu0


_STARTUP = ("from r1vfree_mcore.conversion.lean_imports import import_megatron_lean; import_megatron_lean(); "
            "from transformers import AutoConfig, AutoModelForImageTextToText")


def evict(root: Path) -> None:
    """Flush dirty pages, then drop the files under ``root`` from the page cache (no root needed)."""
    os.sync()
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def copy_files(src: Path, dst: Path, durable: bool) -> tuple[float, float]:
    """(wall s, CPU s) of copying the safetensors files; ``durable``: and flushing them to storage."""
    shutil.rmtree(dst, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    dst.mkdir()
    for f in sorted(src.glob("*.safetensors")):
        shutil.copyfile(f, dst / f.name)
        if durable:
            fd = os.open(dst / f.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None)
    # Default depths of the family's smallest model (Qwen2-VL-2B: 28 decoder layers, 32 vision
    # blocks, 4.4 GB): 4.55 GiB with these Qwen2.5-VL shapes and an untied output layer.
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--vision-depth", type=int, default=32)
    p.add_argument("--input-shard-size", type=int, default=512 * 1024**2)
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every step; medians are reported")
    a = p.parse_args(argv)
    root = Path(a.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    root.mkdir(parents=True, exist_ok=True)
    src, mc, back, cp = root / "hf", root / "mcore", root / "hf_back", root / "copy"
    for d in (mc, back, cp):
        shutil.rmtree(d, ignore_errors=True)
    if not (src / "model.safetensors.index.json").is_file():
        shutil.rmtree(src, ignore_errors=True)
        write_synthetic(src, a.layers, a.vision_depth, a.input_shard_size)
    size, largest_in = files_bytes(src, "*.safetensors")
    print(f"checkpoint: {size / GB:.2f} GiB in {len(list(src.glob('*.safetensors')))} shards "
          f"(largest {largest_in / GB:.2f} GiB); {a.rounds} rounds", flush=True)

    cli = [sys.executable, "-m", "r1vfree_mcore.conversion.cli"]
    runs: dict[str, list[tuple[float, float, float, int]]] = {}  # step -> [(wall, lib, cpu, peak pss)]
    phases, largest_out = [], 0
    for r in range(a.rounds):
        for d in (mc, back):
            shutil.rmtree(d, ignore_errors=True)
        evict(root)
        w, c = copy_files(src, cp, durable=True)
        runs.setdefault("copy", []).append((w, w, c, 0))
        w, c = copy_files(src, cp, durable=False)  # input and destination now in the page cache
        runs.setdefault("copy (page cache)", []).append((w, w, c, 0))
        shutil.rmtree(cp)
        evict(root)
        w, rss, out, c = run_measured(cli + ["hf-to-mcore", "--hf-dir", str(src), "--out", str(mc), "--tp", str(a.tp),
                                             "--pp", str(a.pp), "--quiet"])
        s1 = json.loads(out.strip().splitlines()[-1])
        phases.append(s1["rank0_seconds"])
        runs.setdefault("h2m", []).append((w, s1["seconds"], c, rss))
        evict(root)
        w, rss, out, c = run_measured(cli + ["mcore-to-hf", "--mcore-dir", str(mc), "--out", str(back),
                                             "--max-shard-size", a.max_shard_size, "--quiet"])
        s2 = json.loads(out.strip().splitlines()[-1])
        runs.setdefault("m2h", []).append((w, s2["seconds"], c, rss))
        largest_out = max(largest_out, files_bytes(back, "*.safetensors")[1])
        w, _, _, c = run_measured([sys.executable, "-c", _STARTUP])
        runs.setdefault("start-up (imports only)", []).append((w, w, c, 0))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in runs.items()), flush=True)

    def med(step, i):
        return statistics.median(x[i] for x in runs[step])

    rank_shard = size / (a.tp * a.pp)  # bf16 shard of a rank; at TP=1/PP=1 the whole model
    t_copy = med("copy", 0)
    rows = [("copy", "copy", None), ("copy (page cache)", "copy (page cache)", None),
            ("start-up (imports only)", "start-up (imports only)", None),
            (f"hf-to-mcore tp={a.tp} pp={a.pp}", "h2m", rank_shard), ("mcore-to-hf", "m2h", largest_out)]
    print(f"{'step':<24}{'wall s':>8}{'lib s':>8}{'CPU s':>8}{'GB/s wall':>11}{'GB/s lib':>10}{'x copy':>8}"
          f"{'peak PSS GiB':>14}{'unit GiB':>10}{'PSS/unit':>10}")
    for name, key, unit in rows:
        wall, lib, cpu = med(key, 0), med(key, 1), med(key, 2)
        rss = max(x[3] for x in runs[key])
        print(f"{name:<24}{wall:8.2f}{lib:8.2f}{cpu:8.2f}{size / 1e9 / wall:11.2f}{size / 1e9 / lib:10.2f}"
              f"{wall / t_copy:8.1f}" + (f"{rss / GB:14.2f}{unit / GB:10.2f}{rss / unit:10.2f}" if unit else ""))
    print(f"hf-to-mcore rank 0 phases (s) per round: {phases}; load average {os.getloadavg()[0]:.1f}")
    time_vs_copy = max(med("h2m", 0), med("m2h", 0)) / t_copy
    rss_ratio = max(max(x[3] for x in runs["h2m"]) / rank_shard, max(x[3] for x in runs["m2h"]) / largest_out)
    print(json.dumps({"bench": "convert", "time_vs_copy": round(time_vs_copy, 2),
                      "peak_rss_vs_largest_shard": round(rss_ratio, 2)}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
