"""Streaming HF safetensors I/O: a lazy per-tensor reader and a planned, sharded writer.

The reader only parses headers up front (names, shapes, dtypes, truncation check); tensor data is
read on demand through safetensors' mmap, so a process holds at most the tensors it asked for.
The writer is given the full list of (name, shape, dtype) first, plans the shard files (HF's
``model-0000k-of-0000n.safetensors`` names need the count), then takes tensors one at a time and
flushes each shard as soon as its last tensor arrives.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from r1vfree_mcore.conversion.errors import ConversionError
from r1vfree_mcore.models.common.weight_rules import hf_aliases

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}
# Files of an HF checkpoint that are weights (everything else is config / tokenizer / processor).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def disk_name(name: str) -> str:
    """The on-disk (transformers 4.x) spelling of an HF tensor name given in either layout."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.tensor([], dtype=self.dtype).element_size()


def _read_header(path: Path) -> dict:
    """Parse a safetensors header and check that the file holds every byte it declares."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError) as exc:
        raise ConversionError(f"corrupt safetensors file {path}: unreadable header ({exc})") from None
    header.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    size = path.stat().st_size
    if 8 + n + end > size:
        raise ConversionError(
            f"truncated safetensors file {path}: header declares {8 + n + end} bytes, file has {size}"
        )
    return header


class HFReader:
    """Name -> tensor access over an HF checkpoint directory (either key layout on disk).

    ``infos`` maps on-disk (4.x) names to :class:`TensorInfo`; :meth:`get` accepts either
    spelling and raises KeyError when absent (the contract of ``load_hf_state_dict``'s getter).
    """

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        index = self.dir / INDEX
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as exc:
                raise ConversionError(f"corrupt {index}: {exc}") from None
        elif (self.dir / SINGLE).is_file():
            files = [SINGLE]
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise ConversionError(f"no safetensors weights in {self.dir} (expected {INDEX} or {SINGLE})")
        self.infos: dict[str, TensorInfo] = {}
        self._raw: dict[str, str] = {}  # disk name -> name as stored in the file
        for fname in files:
            path = self.dir / fname
            if not path.is_file():
                raise ConversionError(f"{index} names {fname}, which is missing")
            for raw, meta in _read_header(path).items():
                if meta["dtype"] not in _DTYPES:
                    raise ConversionError(f"{path}: tensor {raw} has unsupported dtype {meta['dtype']}")
                name = disk_name(raw)
                if name in self.infos:
                    raise ConversionError(f"tensor {raw} appears twice (in {self.infos[name].file.name} and {fname})")
                self.infos[name] = TensorInfo(path, tuple(meta["shape"]), _DTYPES[meta["dtype"]])
                self._raw[name] = raw
        self._handles: dict[Path, object] = {}
        self.bytes_read = 0
        self.tensors_read = 0

    def names(self) -> set[str]:
        """On-disk (4.x) names of every tensor."""
        return set(self.infos)

    def info(self, name: str) -> TensorInfo:
        for alias in (disk_name(name), *hf_aliases(name)):
            if alias in self.infos:
                return self.infos[alias]
        raise KeyError(name)

    def get(self, name: str) -> torch.Tensor:
        """The tensor (a fresh CPU copy); KeyError when the checkpoint has no such tensor."""
        from safetensors import safe_open

        key = disk_name(name)
        if key not in self.infos:
            raise KeyError(name)
        info = self.infos[key]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = safe_open(str(info.file), "pt")
        t = handle.get_tensor(self._raw[key])
        self.bytes_read += t.numel() * t.element_size()
        self.tensors_read += 1
        return t

    __call__ = get

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def largest_file_bytes(self) -> int:
        return max(p.stat().st_size for p in {i.file for i in self.infos.values()})

    def close(self) -> None:
        self._handles.clear()


def copy_metadata_files(src: Path, dst: Path) -> list[str]:
    """Copy every top-level non-weight file (config, generation config, tokenizer, processor)."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in sorted(Path(src).iterdir()):
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES) and p.name != INDEX:
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


def _nbytes(shape, dtype) -> int:
    return TensorInfo(Path(), tuple(shape), dtype).nbytes


class ShardedWriter:
    """Writes planned tensors into ``model-0000k-of-0000n.safetensors`` files + the index.

    ``plan``: ``(name, shape, dtype)`` in the order :meth:`add` will receive them. A shard closes
    once it reaches ``max_shard_bytes`` (a single larger tensor gets a shard of its own).
    """

    def __init__(self, out_dir: Path, plan: Iterable[tuple[str, tuple, torch.dtype]], max_shard_bytes: int):
        self.out = Path(out_dir)
        self.shards: list[list[str]] = [[]]
        size = 0
        self.expected: dict[str, tuple[tuple, torch.dtype]] = {}
        for name, shape, dtype in plan:
            if name in self.expected:
                raise ConversionError(f"HF tensor {name} would be written twice")
            n = _nbytes(shape, dtype)
            if self.shards[-1] and size + n > max_shard_bytes:
                self.shards.append([])
                size = 0
            self.shards[-1].append(name)
            size += n
            self.expected[name] = (tuple(shape), dtype)
        count = len(self.shards)
        self.files = [SINGLE] if count == 1 else [
            f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)
        ]
        self.file_of = {n: self.files[k] for k, names in enumerate(self.shards) for n in names}
        self._pending: dict[int, dict[str, torch.Tensor]] = {}
        self.total_size = sum(_nbytes(*v) for v in self.expected.values())
        self.largest_shard_bytes = max(sum(_nbytes(*self.expected[n]) for n in s) for s in self.shards)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Buffer one tensor; writes its shard when complete."""
        from safetensors.torch import save_file

        if name not in self.expected:
            raise ConversionError(f"unplanned HF tensor {name}")
        shape, dtype = self.expected[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ConversionError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}")
        k = self.files.index(self.file_of[name])
        buf = self._pending.setdefault(k, {})
        buf[name] = tensor.contiguous()
        if len(buf) == len(self.shards[k]):
            save_file(buf, str(self.out / self.files[k]), metadata={"format": "pt"})
            self._pending.pop(k)

    def finish(self) -> None:
        """Check every planned tensor arrived; write the index (sharded output only)."""
        if self._pending:
            missing = [n for k in self._pending for n in self.shards[k] if n not in self._pending[k]]
            raise ConversionError(f"{len(missing)} planned HF tensors were never produced: {missing[:8]}")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.file_of.items()))}
            (self.out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
