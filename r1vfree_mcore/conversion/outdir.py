"""All-or-nothing output directories: build in ``OUT.tmp-XXXX``, rename to ``OUT`` at the end.

A failed or interrupted conversion leaves no ``OUT`` (an earlier ``OUT`` survives until the
new one is complete); the temporary directory is removed on failure.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_output(out: str | Path, force: bool):
    """Yield a fresh temporary directory next to ``out``; on success it becomes ``out``."""
    out = Path(out).absolute()
    check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
