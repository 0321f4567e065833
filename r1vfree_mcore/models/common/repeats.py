"""Runs of identical consecutive items (GRPO's G copies of a prompt): computed once, repeated."""

from __future__ import annotations

from typing import Callable


def collapse_repeats(n: int, same: Callable[[int, int], bool]) -> tuple[list[int], list[int]]:
    """``(keep, inverse)`` for items ``0..n-1``: ``keep`` the first item of each run of items
    equal to their predecessor's run (``same(i, j)`` compares item ``i`` with run head ``j``),
    ``inverse[i]`` the position in ``keep`` of item ``i``'s run."""
    keep, inverse = [0], [0]
    for i in range(1, n):
        if not same(i, keep[-1]):
            keep.append(i)
        inverse.append(len(keep) - 1)
    return keep, inverse
