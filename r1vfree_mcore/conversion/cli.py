"""``r1vfree-convert``: HF <-> Megatron checkpoint conversion for Qwen2-VL / Qwen2.5-VL.

    r1vfree-convert hf-to-mcore --hf-dir DIR --out DIR --tp N --pp M [--dtype auto|fp32|bf16]
                                [--pp-layer-split 3,1] [--verify] [--force] [--quiet]
    r1vfree-convert mcore-to-hf --mcore-dir DIR --out DIR [--hf-dir DIR] [--max-shard-size 2GB]
                                [--dtype fp32|bf16] [--verify] [--force] [--quiet]

Exit status: 0 on success, 2 on bad input or failed verification (one ``error:`` line on stderr),
1 on an unexpected failure (with tracebacks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _layer_split(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1vfree-convert", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> Megatron dist checkpoint (torch_dist)")
    a.add_argument("--hf-dir", required=True, help="HF checkpoint directory")
    a.add_argument("--out", required=True, help="output directory (written atomically)")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the saving ranks")
    a.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the saving ranks")
    a.add_argument("--pp-layer-split", type=_layer_split, default=None, help="decoder layers per stage, e.g. 3,1")
    a.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="parameter dtype (auto: the HF checkpoint's)")
    b = sub.add_parser("mcore-to-hf", help="Megatron dist checkpoint (converted or trainer) -> HF safetensors")
    b.add_argument("--mcore-dir", required=True, help="checkpoint dir with dist/ (or a checkpoints root with latest)")
    b.add_argument("--out", required=True, help="output HF directory (written atomically)")
    b.add_argument("--hf-dir", default=None, help="HF config/tokenizer/processor files (default: found from the checkpoint)")
    b.add_argument("--max-shard-size", default="2GB", help="max bytes per safetensors file (e.g. 2GB, 500MB)")
    b.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="cast (default: as stored)")
    for s in (a, b):
        s.add_argument("--verify", action="store_true",
                       help="run both models on a probe image+text; fail above a dtype-aware tolerance")
        s.add_argument("--force", action="store_true", help="replace an existing output directory")
        s.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None, lean_imports: bool | None = None) -> int:
    """Run the CLI; returns the exit status.

    ``lean_imports`` (default: when ``argv`` is None, i.e. this process is the converter program)
    imports megatron-core without its torch.compile / wandb parts (see
    :mod:`r1vfree_mcore.conversion.lean_imports`); pass False when embedding in a process that
    also runs models.
    """
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if lean_imports is None:
        lean_imports = argv is None
    if lean_imports and args.command == "hf-to-mcore":  # mcore-to-hf needs no megatron-core
        from r1vfree_mcore.conversion.lean_imports import import_megatron_lean

        import_megatron_lean()
    from r1vfree_mcore.conversion.errors import ConversionError

    try:
        if args.command == "hf-to-mcore":
            from r1vfree_mcore.conversion.to_mcore import hf_to_mcore

            summary = hf_to_mcore(args.hf_dir, args.out, tp=args.tp, pp=args.pp, pp_layer_split=args.pp_layer_split,
                                  dtype=args.dtype, verify=args.verify, force=args.force, progress=not args.quiet)
        else:
            from r1vfree_mcore.conversion.to_hf import mcore_to_hf

            summary = mcore_to_hf(args.mcore_dir, args.out, hf_dir=args.hf_dir, max_shard_size=args.max_shard_size,
                                  dtype=args.dtype, verify=args.verify, force=args.force, progress=not args.quiet)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
