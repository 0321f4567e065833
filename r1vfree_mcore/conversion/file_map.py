"""Tensors over private (copy-on-write) mappings of byte ranges of a file.

Conversion moves bytes from one checkpoint format to another; most tensors need no change.
Mapping them instead of reading them means no read and no copy into fresh memory: the pages are
the file's page cache, filled on first touch (read-ahead requested up front), and the writer of
the other format copies them straight to its file. Private mappings: writes to such a tensor
would never reach the source file.

:func:`file_range_of` tells a writer where a mapped tensor's bytes lie in their file, so it can
copy them file to file in the kernel (``os.copy_file_range``) without touching the pages.
"""

from __future__ import annotations

import mmap
import os
import weakref
from pathlib import Path

import torch

from r1vfree_mcore.conversion.errors import ConversionError


def map_bytes(path: str | Path, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A ``shape`` x ``dtype`` tensor over bytes ``offset .. offset + nbytes`` of ``path``.

    The tensor owns exactly those bytes as its storage (megatron's writer clones a tensor whose
    storage is larger than itself). A file shorter than the range is a ConversionError here
    (touching a mapped page past the end of a file would kill the process with SIGBUS).
    """
    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < offset + nbytes:
            raise ConversionError(f"truncated file {path}: needs bytes {offset}..{offset + nbytes}, has {size}")
        view = mmap.mmap(f.fileno(), nbytes + offset - aligned, offset=aligned, access=mmap.ACCESS_COPY)
    view.madvise(mmap.MADV_WILLNEED)  # start reading ahead now; the writer walks it in order
    t = torch.frombuffer(view, dtype=torch.uint8, count=nbytes, offset=offset - aligned)
    _register(t.data_ptr(), view, str(path), offset, nbytes)
    return t.view(dtype).view(shape)


# Storage address -> (the mapping, file, file offset, bytes). An entry lives exactly as long as
# its mapping (the tensor's storage holds it): the weakref callback drops it before the address
# can be reused, so a live entry always describes the memory at that address.
_MAPPED: dict[int, tuple[weakref.ref, str, int, int]] = {}


def _register(address: int, view: mmap.mmap, path: str, offset: int, nbytes: int) -> None:
    def drop(ref, address=address):
        if _MAPPED.get(address, (None,))[0] is ref:
            del _MAPPED[address]

    _MAPPED[address] = (weakref.ref(view, drop), path, offset, nbytes)


def file_range_of(t: torch.Tensor) -> tuple[str, int] | None:
    """(file, byte offset) of a contiguous tensor whose bytes are a mapping made by
    :func:`map_bytes` (or a view into one), else None."""
    if t.device.type != "cpu" or not t.is_contiguous() or not t.numel():
        return None
    base = t.untyped_storage().data_ptr()
    entry = _MAPPED.get(base)
    if entry is None or entry[0]() is None:
        return None
    _, path, offset, nbytes = entry
    start = t.data_ptr() - base
    if start < 0 or start + t.numel() * t.element_size() > nbytes:
        return None
    return path, offset + start
