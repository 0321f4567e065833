"""Streaming HF safetensors I/O: a lazy per-tensor reader and a planned, sharded writer.

The reader only parses headers up front (names, shapes, dtypes, truncation check); tensor data is
read on demand with positioned reads, either into fresh memory or, for a row range, straight
into a caller's tensor (a parameter), so a process holds at most the tensors it asked for. A
reader made with ``map_rows=True`` also hands out row ranges as tensors over a private mapping of
the file (no read, no copy: the converter saves them straight from the page cache).
The writer is given the full list of (name, shape, dtype) first, plans the shard files (HF's
``model-0000k-of-0000n.safetensors`` names need the count) and every tensor's byte offset, writes
the headers, then writes each tensor to its place as it arrives (no shard is buffered).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from r1vfree_mcore.conversion.errors import ConversionError, name_list
from r1vfree_mcore.conversion.file_map import file_range_of, map_bytes
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


def _read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, offset of the data section) of a safetensors file, checked against its size."""
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
    return header, 8 + n


class HFReader:
    """Name -> tensor access over an HF checkpoint directory (either key layout on disk).

    ``infos`` maps on-disk (4.x) names to :class:`TensorInfo`; :meth:`get` accepts either
    spelling and raises KeyError when absent (the contract of ``load_hf_state_dict``'s getter);
    :meth:`info` and :meth:`read_rows_into` let that loader read straight into parameters, and
    with ``map_rows=True`` :meth:`map_rows` lets it make a parameter a view of the file instead
    (for a model that is only saved, as in conversion: its pages stay the file's page cache).
    ``on_read(nbytes)`` is called once per tensor consumed (progress).
    """

    def __init__(self, hf_dir: str | Path, on_read: Callable[[int], None] | None = None, map_rows: bool = False):
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
        self._span: dict[str, tuple[int, int]] = {}  # disk name -> byte range in its file
        for fname in files:
            path = self.dir / fname
            if not path.is_file():
                raise ConversionError(f"{index} names {fname}, which is missing")
            header, data_start = _read_header(path)
            for raw, meta in header.items():
                if meta["dtype"] not in _DTYPES:
                    raise ConversionError(f"{path}: tensor {raw} has unsupported dtype {meta['dtype']}")
                name = disk_name(raw)
                if name in self.infos:
                    raise ConversionError(f"tensor {raw} appears twice (in {self.infos[name].file.name} and {fname})")
                self.infos[name] = TensorInfo(path, tuple(meta["shape"]), _DTYPES[meta["dtype"]])
                begin, end = meta["data_offsets"]
                self._span[name] = (data_start + begin, data_start + end)
        self._handles: dict[Path, object] = {}
        self.bytes_read = 0
        self.tensors_read = 0
        self._on_read = on_read  # called with each tensor's full byte size once it is consumed
        self.maps_rows = map_rows
        self.recent: deque[str] = deque(maxlen=3)  # last tensors asked for (error messages)

    def names(self) -> set[str]:
        """On-disk (4.x) names of every tensor."""
        return set(self.infos)

    def info(self, name: str) -> TensorInfo:
        for alias in (disk_name(name), *hf_aliases(name)):
            if alias in self.infos:
                return self.infos[alias]
        raise KeyError(name)

    def _key(self, name: str) -> str:
        key = disk_name(name)
        if key not in self.infos:
            raise KeyError(name)
        self.recent.append(key)
        return key

    def _read(self, key: str, begin: int, out: torch.Tensor) -> None:
        """Read bytes ``begin..`` of tensor ``key`` into contiguous CPU ``out`` (its full size)."""
        info = self.infos[key]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = open(info.file, "rb", buffering=0)
        view = memoryview(out.detach().view(torch.uint8).reshape(-1).numpy())
        handle.seek(self._span[key][0] + begin)
        while view:  # raw reads may return short counts
            n = handle.readinto(view)
            if not n:
                raise ConversionError(f"short read of {key} from {info.file}")
            view = view[n:]
        self.bytes_read += out.numel() * out.element_size()

    def _consumed(self, key: str) -> None:
        self.tensors_read += 1
        if self._on_read is not None:
            self._on_read(self.infos[key].nbytes)

    def get(self, name: str) -> torch.Tensor:
        """The tensor, read into fresh memory; KeyError when the checkpoint has no such tensor.

        Plain positioned reads, no mmap: a mapped file's touched pages would stay in this
        process's RSS until unmapped, doubling the apparent footprint of a conversion rank.
        """
        key = self._key(name)
        info = self.infos[key]
        t = torch.empty(info.shape, dtype=info.dtype)  # no zero fill: every byte is read over
        if t.numel():
            self._read(key, 0, t)
        self._consumed(key)
        return t

    def read_rows_into(self, name: str, row: int, out: torch.Tensor, consumed: bool = True) -> None:
        """Read rows ``row .. row + len(out)`` (along dim 0) of a tensor straight into ``out``.

        ``out``: contiguous CPU tensor of the tensor's dtype and trailing shape (e.g. a
        parameter, or its first rows). A dim-0 range is one contiguous byte range on disk, so
        nothing else is allocated. Counts as consuming the whole tensor for progress unless
        ``consumed`` is False (a caller reading one tensor in several runs).
        """
        key = self._key(name)
        info = self.infos[key]
        rest = tuple(info.shape[1:])
        if (out.dtype != info.dtype or tuple(out.shape[1:]) != rest or not out.is_contiguous()
                or out.device.type != "cpu" or not info.shape or row < 0 or row + out.shape[0] > info.shape[0]):
            raise ValueError(f"{key}: cannot read rows {row}..{row + (out.shape[0] if out.dim() else 0)} of "
                             f"{list(info.shape)} {info.dtype} into {list(out.shape)} {out.dtype}")
        if out.numel():
            self._read(key, row * (out.numel() // out.shape[0]) * out.element_size(), out)
        if consumed:
            self._consumed(key)

    def map_rows(self, name: str, row: int, count: int) -> torch.Tensor:
        """Rows ``row .. row + count`` (dim 0) of a tensor over a private copy-on-write mapping
        of its bytes in the file: nothing is read or copied until the pages are touched, and
        writes to it would not reach the file. Only for a reader made with ``map_rows=True``.
        Counts as consuming the whole tensor for progress.
        """
        if not self.maps_rows:
            raise RuntimeError("HFReader.map_rows needs a reader made with map_rows=True")
        key = self._key(name)
        info = self.infos[key]
        if not info.shape or row < 0 or count < 1 or row + count > info.shape[0]:
            raise ValueError(f"{key}: cannot map rows {row}..{row + count} of {list(info.shape)}")
        row_bytes = info.nbytes // info.shape[0]
        t = map_bytes(info.file, self._span[key][0] + row * row_bytes, count * row_bytes, info.dtype,
                      (count, *info.shape[1:]))
        self.bytes_read += count * row_bytes
        self._consumed(key)
        return t

    __call__ = get

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def largest_file_bytes(self) -> int:
        return max(p.stat().st_size for p in {i.file for i in self.infos.values()})

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
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


_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def _copy_range(source: tuple[str, int], fd: int, offset: int, nbytes: int) -> None:
    """Copy ``nbytes`` from ``source`` (file, offset) to ``fd`` at ``offset`` without user-space copies."""
    path, src_offset = source
    src = os.open(path, os.O_RDONLY)
    try:
        while nbytes:
            n = os.copy_file_range(src, fd, nbytes, src_offset, offset)
            if not n:
                raise ConversionError(f"short copy from {path} at byte {src_offset}: file ended")
            src_offset, offset, nbytes = src_offset + n, offset + n, nbytes - n
    finally:
        os.close(src)


class ShardedWriter:
    """Writes planned tensors straight into ``model-0000k-of-0000n.safetensors`` files + the index.

    ``plan``: ``(name, shape, dtype)`` of every tensor. Shard files (cut at ``max_shard_bytes``;
    a single larger tensor gets a file of its own) and every tensor's byte offset are fixed up
    front, so headers are written first and each tensor goes to its place on disk the moment
    it arrives, in any order: nothing is buffered beyond the tensor being written.
    """

    def __init__(self, out_dir: Path, plan: Iterable[tuple[str, tuple, torch.dtype]], max_shard_bytes: int):
        self.out = Path(out_dir)
        shards: list[list[tuple[str, tuple, torch.dtype]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            n = _nbytes(shape, dtype)
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), dtype))
            size += n
        count = len(shards)
        self.files = [SINGLE] if count == 1 else [f"model-{k + 1:05d}-of-{count:05d}.safetensors" for k in range(count)]
        self.slots: dict[str, tuple[Path, int, tuple, torch.dtype]] = {}  # name -> file, offset, shape, dtype
        self.file_of: dict[str, str] = {}
        self.shard_bytes = []
        for fname, entries in zip(self.files, shards):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name, shape, dtype in entries:
                if name in header:
                    raise ConversionError(f"HF tensor {name} would be written twice")
                n = _nbytes(shape, dtype)
                header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
                self.file_of[name] = fname
                self.slots[name] = (self.out / fname, offset, shape, dtype)
                offset += n
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
            with open(self.out / fname, "wb") as f:
                f.write(struct.pack("<Q", len(raw)) + raw)
                f.truncate(8 + len(raw) + offset)
            base = 8 + len(raw)
            for name, _, _ in entries:
                path, off, shape, dtype = self.slots[name]
                self.slots[name] = (path, base + off, shape, dtype)
            self.shard_bytes.append(offset)
        self.total_size = sum(self.shard_bytes)
        self.largest_shard_bytes = max(self.shard_bytes)
        self._done: set[str] = set()
        self._fds: dict[Path, int] = {}
        self.kernel_copy = hasattr(os, "copy_file_range")  # off after the first failure

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor at its planned place."""
        if name not in self.slots:
            raise ConversionError(f"unplanned HF tensor {name}")
        path, offset, shape, dtype = self.slots[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ConversionError(f"{name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}")
        if name in self._done:
            raise ConversionError(f"HF tensor {name} produced twice")
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_WRONLY)
        if not self._copy_mapped(tensor, fd, offset, _nbytes(shape, dtype)):
            data = memoryview(tensor.detach().contiguous().view(torch.uint8).reshape(-1).numpy())
            while data:
                written = os.pwrite(fd, data, offset)
                data, offset = data[written:], offset + written
        self._done.add(name)

    def _copy_mapped(self, tensor: torch.Tensor, fd: int, offset: int, nbytes: int) -> bool:
        """Copy a mapped file range file to file in the kernel; False if the tensor is not one or
        the file system cannot (then said once, and later tensors go through memory at once)."""
        source = file_range_of(tensor) if self.kernel_copy else None
        if source is None:
            return False
        try:
            _copy_range(source, fd, offset, nbytes)
            return True
        except OSError as exc:
            self.kernel_copy = False
            warnings.warn(f"copy_file_range into {self.out} failed ({exc}); writing through memory instead")
            return False

    def close(self) -> None:
        """Close the shard files (idempotent; :meth:`finish` does it too)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def finish(self) -> None:
        """Check every planned tensor arrived; close files; write the index (sharded output only)."""
        self.close()
        missing = set(self.slots) - self._done
        if missing:
            raise ConversionError(f"{len(missing)} planned HF tensors were never produced: {name_list(missing)}")
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.file_of.items()))}
            (self.out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
