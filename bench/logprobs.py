"""Fused chunked log-probs vs the naive full-logits path, forward + backward, on the CPU.

naive: logits = hidden @ W.T ([B, T, V] materialised), torch.log_softmax(logits.float(), -1)
       .gather(target); fused: r1vfree_mcore.grpo.logprobs.fused_linear_logprobs (chunks of
       rows, logits never whole) with its default logits cache (the backward reuses the cached
       chunks' logits and recomputes the others); fused-0: the same with logits_cache_bytes=0
       (every chunk recomputed: least memory). The JSON ratios compare naive and fused.

Time is wall-clock (the JSON ratio) and process CPU time (all threads; less sensitive to other
jobs on a shared machine). Each path runs once, in its own fresh subprocess, after its inputs exist. Peak memory is the
kernel's resident-set high-water mark (VmHWM in /proc/self/status, reset through
/proc/self/clear_refs just before the timed step) minus the resident size at that moment: the
extra memory the forward + backward needed (torch CPU allocations go straight to the OS for
large blocks, so RSS tracks them). The last line printed is one JSON object.

    python bench/logprobs.py            # B=8, T=1024, V=151,936, H=2048, bf16
    python bench/logprobs.py --small    # a quick run
    python bench/logprobs.py --logits-cache-bytes N   # another cache bound for "fused"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from r1vfree_mcore.grpo.fused_linear import DEFAULT_LOGITS_CACHE_BYTES
from r1vfree_mcore.grpo.logprobs import fused_linear_logprobs

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PATHS = ("naive", "fused", "fused-0")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _naive(hidden, weight, targets):
    logits = hidden @ weight.t()
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _fused(hidden, weight, targets, chunk_size, cache_bytes):
    return fused_linear_logprobs(hidden, weight, targets, chunk_size=chunk_size,
                                 logits_cache_bytes=cache_bytes)[0]


def worker(args) -> None:
    """One path, one fwd+bwd; writes peak/time and small outputs to args.out."""
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    hidden = torch.randn(args.batch, args.seq, args.hidden, dtype=dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden) * args.hidden ** -0.5).to(dtype)
    weight.requires_grad_()
    targets = torch.randint(0, args.vocab, (args.batch, args.seq))
    upstream = torch.randn(args.batch, args.seq)
    fn = _naive if args.worker == "naive" else _fused
    # warm-up on a tiny slice so one-time kernel set-up is not timed
    kw = {} if args.worker == "naive" else {
        "chunk_size": args.chunk_size,
        "cache_bytes": 0 if args.worker == "fused-0" else args.logits_cache_bytes}
    fn(hidden[:1, :8].detach().requires_grad_(), weight[:256].detach().requires_grad_(),
       targets[:1, :8] % 256, **kw).sum().backward()
    _reset_peak()
    base = _rss_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    lp = fn(hidden, weight, targets, **kw)
    (lp * upstream).sum().backward()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_kib("VmHWM") - base
    torch.save({"peak_kib": peak, "seconds": seconds, "cpu_seconds": cpu_seconds, "logprobs": lp.detach(),
                "hidden_grad": hidden.grad, "weight_grad_row0": weight.grad[:64].clone()},
               args.out)


def _run(path: str, args, out: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", path, "--out", out, "--batch", str(args.batch),
           "--seq", str(args.seq), "--vocab", str(args.vocab), "--hidden", str(args.hidden),
           "--chunk-size", str(args.chunk_size), "--dtype", args.dtype,
           "--logits-cache-bytes", str(args.logits_cache_bytes)]
    subprocess.run(cmd, check=True)
    return torch.load(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="B=2, T=256, V=32,000, H=512")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--logits-cache-bytes", type=int, default=DEFAULT_LOGITS_CACHE_BYTES,
                   help="logits cache bound of the 'fused' run (default: the library default)")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.small:
        args.batch, args.seq, args.vocab, args.hidden = 2, 256, 32_000, 512
        args.chunk_size = min(args.chunk_size, 128)
    with tempfile.TemporaryDirectory() as tmp:
        res = {k: _run(k, args, os.path.join(tmp, k + ".pt")) for k in PATHS}
    n, f = res["naive"], res["fused"]
    diff = {k: (n[k].float() - f[k].float()).abs().max().item()
            for k in ("logprobs", "hidden_grad", "weight_grad_row0")}
    gib = 1024 ** 2
    print(f"B={args.batch} T={args.seq} V={args.vocab:,} H={args.hidden} dtype={args.dtype} "
          f"chunk={args.chunk_size} fused logits_cache_bytes={args.logits_cache_bytes:,} "
          f"torch threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    print("| path    | peak extra RSS (GiB) | fwd+bwd wall (s) | fwd+bwd CPU time (s) |")
    print("|---------|---------------------:|-----------------:|---------------------:|")
    for k in PATHS:
        r = res[k]
        print(f"| {k:<7} | {r['peak_kib'] / gib:20.2f} | {r['seconds']:16.1f} | "
              f"{r['cpu_seconds']:20.1f} |")
    print("max |naive - fused|: " + ", ".join(f"{k} {v:.3g}" for k, v in diff.items()))
    same = all(torch.equal(f[k], res["fused-0"][k]) for k in diff)
    print(f"fused and fused-0 results bitwise equal: {same}")
    print(f"fused / naive: wall {f['seconds'] / n['seconds']:.3f}, "
          f"CPU time {f['cpu_seconds'] / n['cpu_seconds']:.3f}")
    print(json.dumps({"bench": "logprobs",
                      "peak_mem_ratio": round(n["peak_kib"] / f["peak_kib"], 3),
                      "time_ratio": round(f["seconds"] / n["seconds"], 3)}))


if __name__ == "__main__":
    main()
