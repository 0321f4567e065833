"""Tensors over private (copy-on-write) mappings of byte ranges of a file.

Conversion moves bytes from one checkpoint format to another; most tensors need no change.
Mapping them instead of reading them means no read and no copy into fresh memory: the pages are
the file's page cache, filled on first touch (read-ahead requested up front), and the writer of
the other format copies them straight to its file. Private mappings: writes to such a tensor
would never reach the source file.
"""

from __future__ import annotations

import mmap
import os
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
    return torch.frombuffer(view, dtype=torch.uint8, count=nbytes, offset=offset - aligned).view(dtype).view(shape)
