"""All-or-nothing output directories: flushed to storage before they appear, nothing on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1vfree_mcore.conversion import outdir


def _write(tmp: Path) -> None:
    (tmp / "sub").mkdir()
    (tmp / "a.bin").write_bytes(b"x" * 10)
    (tmp / "sub" / "b.json").write_text("{}")


def test_every_file_is_flushed_before_the_directory_appears(tmp_path, monkeypatch):
    out = tmp_path / "out"
    synced: list[tuple[str, bool]] = []
    monkeypatch.setattr(outdir, "_fsync", lambda p: synced.append((Path(p).name, out.exists())))
    with outdir.atomic_output(out, force=False) as tmp:
        _write(tmp)
    files = {name: visible for name, visible in synced if name in ("a.bin", "b.json", "sub")}
    assert files == {"a.bin": False, "b.json": False, "sub": False}  # all before the rename
    assert synced[-1] == (tmp_path.name, True)  # then the rename itself
    assert (out / "sub" / "b.json").read_text() == "{}" and not tmp.exists()


def test_a_failure_leaves_no_output_and_keeps_an_earlier_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with outdir.atomic_output(out, force=True) as tmp:
            _write(tmp)
            raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["old.txt"] and not tmp.exists()
    with outdir.atomic_output(out, force=True) as tmp:
        _write(tmp)
    assert sorted(p.name for p in out.iterdir()) == ["a.bin", "sub"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old directory left
