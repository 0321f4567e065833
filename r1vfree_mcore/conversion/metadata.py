"""Layout of a converted Megatron checkpoint and how to find the HF files of any checkpoint.

A converter output directory (loadable by ``CheckpointManager.load(path, model)``)::

    OUT/dist/               megatron-core dist_checkpointing (torch_dist), {"model": ...} only
    OUT/train_state.json    {"step": 0, ..., "extra": {"converted_from": ...}}, no optimizer
    OUT/hf/                 HF config.json, generation config, tokenizer and processor files
    OUT/conversion.json     family, saved TP/PP, dtype, vocab sizes, tensor count

A trainer checkpoint (``RUN_DIR/checkpoints/step_XXXXXX``) has ``dist/`` and ``config.yaml``
whose ``model.hf_dir`` names the HF directory with the same non-weight files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from r1vfree_mcore.conversion.errors import ConversionError

DIST, HF_META, INFO, TRAIN_STATE = "dist", "hf", "conversion.json", "train_state.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ConversionInfo:
    family: str
    tp: int
    pp: int
    dtype: str  # 'fp32' | 'bf16' | 'fp16'
    vocab_size: int
    padded_vocab_size: int  # rows of the embedding / output layer in dist/
    tied_embeddings: bool
    num_tensors: int
    source: str
    format_version: int = FORMAT_VERSION

    def write(self, out: Path) -> None:
        (out / INFO).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, ckpt: Path) -> "ConversionInfo | None":
        path = ckpt / INFO
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ConversionError(f"{path}: format_version {data.get('format_version')} is not {FORMAT_VERSION}")
        return cls(**data)


def initial_train_state(source: str) -> dict:
    """A step-0 train_state.json: ``CheckpointManager.load(path, model)`` accepts it (no optimizer,
    scheduler or sampler state; a different world size, so no RNG restore)."""
    return {"step": 0, "scheduler": None, "samplers": [], "world_size": 0,
            "extra": {"converted_from": source, "optimizer": None}}


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory holding ``dist/``: the path itself, or the one ``latest`` names."""
    p = Path(path)
    if (p / DIST).is_dir():
        return p
    if (p / "latest").is_file():
        from r1vfree_mcore.checkpoint.manager import find_latest

        return resolve_checkpoint(find_latest(p))
    if (p / "checkpoints").is_dir():
        return resolve_checkpoint(p / "checkpoints")
    raise ConversionError(f"{p} is not a Megatron checkpoint: no {DIST}/ directory (nor a 'latest' pointer)")


def hf_files_dir(ckpt: Path, override: str | Path | None = None) -> Path:
    """Where config.json / tokenizer / processor files for ``ckpt`` live."""
    if override is not None:
        d = Path(override)
    elif (ckpt / HF_META / "config.json").is_file():
        d = ckpt / HF_META
    elif (ckpt / "config.yaml").is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(ckpt / "config.yaml")
        hf_dir = OmegaConf.select(cfg, "model.hf_dir")
        if not hf_dir or hf_dir == "???":
            raise ConversionError(f"{ckpt / 'config.yaml'} has no model.hf_dir; pass --hf-dir")
        d = Path(hf_dir)
        if not d.is_absolute() and not d.exists():
            d = ckpt / d
    else:
        raise ConversionError(f"{ckpt}: no {HF_META}/config.json and no config.yaml; pass --hf-dir")
    if not (d / "config.json").is_file():
        raise ConversionError(f"{d}: no config.json (HF config needed to export {ckpt})")
    return d
