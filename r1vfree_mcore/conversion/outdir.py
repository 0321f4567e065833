"""All-or-nothing output directories: build in ``OUT.tmp-XXXX``, rename to ``OUT`` at the end.

A failed or interrupted conversion leaves no ``OUT`` (an earlier ``OUT`` survives until the
new one is complete); the temporary directory is removed on failure. Every file is flushed to
storage before the rename, so after a crash of the machine too, an ``OUT`` that exists is
complete (the page cache alone would not promise that).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from r1vfree_mcore.conversion.errors import ConversionError


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing output unless ``force`` (checked before any work is done)."""
    if out.exists() and not force:
        raise ConversionError(f"output directory {out} exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConversionError(f"output path {out} exists and is not a directory")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (files megatron already synced cost nothing)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


@contextlib.contextmanager
def atomic_output(out: str | Path, force: bool):
    """Yield a fresh temporary directory next to ``out``; on success it becomes ``out``."""
    out = Path(out).absolute()
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        sync_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        _fsync(out.parent)  # the rename itself
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
