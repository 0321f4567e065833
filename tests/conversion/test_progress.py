"""The conversion progress bar: bytes and tensors done, and the save phase once the bytes are in."""

from __future__ import annotations

from r1vfree_mcore.conversion.progress import Progress


def test_bar_counts_bytes_and_tensors_and_names_the_save(capsys):
    bar = Progress("hf-to-mcore", 100, 4)
    bar.update_from([60, 3, 0, 0])
    assert (bar.bar.n, bar.tensors, bar.note) == (60, 3, "")
    bar.update_from([100, 4, 2, 0])  # two ranks saving
    assert (bar.bar.n, bar.tensors) == (100, 4) and "saving on 2 rank(s)" in bar.bar.postfix
    bar.update_from([100, 4, 0, 0])
    assert bar.note == "" and "saving" not in bar.bar.postfix
    bar.close()
    assert "tensors 4/4" in capsys.readouterr().err
    quiet = Progress("x", 10, 1, enabled=False)
    quiet.update_from([10, 1, 1, 0])
    assert quiet.bar is None and quiet.tensors == 0  # nothing tracked or printed when quiet
