"""A seeded, resumable prompt sampler that gives each data-parallel rank distinct prompts.

Every epoch is a permutation of the dataset drawn from ``seed + epoch``; DP rank ``r`` reads the
stride ``perm[r::dp]``, so ranks never share a prompt within an epoch. The position is a plain
dict (``state_dict``) saved with each checkpoint; resuming at the same DP size continues with the
very next prompt. Unusable samples (bad images) are skipped by the caller via ``next_valid``.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class ResumableSampler:
    """Deterministic per-DP-rank index stream over ``n`` records."""

    def __init__(self, n: int, seed: int, dp_rank: int = 0, dp_size: int = 1, shuffle: bool = True):
        if n < dp_size:
            raise ValueError(f"dataset has {n} records, fewer than the {dp_size} data-parallel ranks")
        self.n, self.seed, self.dp_rank, self.dp_size, self.shuffle = n, seed, dp_rank, dp_size, shuffle
        self.epoch = 0
        self.pos = 0  # index into this rank's stride of the current epoch
        self._perm = self._make_perm()

    def _make_perm(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        # Drop the tail so every rank's stride has the same length.
        usable = (self.n // self.dp_size) * self.dp_size
        return order[:usable][self.dp_rank :: self.dp_size]

    def next_index(self) -> int:
        """The next record index for this rank (rolls over into a new epoch)."""
        if self.pos >= len(self._perm):
            self.epoch += 1
            self.pos = 0
            self._perm = self._make_perm()
        idx = self._perm[self.pos]
        self.pos += 1
        return idx

    def next_valid(self, k: int, load: Callable[[int], T | None], max_tries: int | None = None) -> list[T]:
        """Draw ``k`` items, skipping indices for which ``load`` returns None."""
        out: list[T] = []
        tries = 0
        limit = max_tries or max(10 * k, 2 * len(self._perm))
        while len(out) < k:
            if tries >= limit:
                raise RuntimeError(f"sampler: {tries} draws gave only {len(out)} usable samples of {k}")
            tries += 1
            item = load(self.next_index())
            if item is not None:
                out.append(item)
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "dp_size": self.dp_size}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler: checkpoint seed {state['seed']} != data.shuffle_seed {self.seed}")
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        if state["dp_size"] != self.dp_size:
            # Another DP size reads other strides: restart the epoch at the same fraction.
            self.pos = self.pos * state["dp_size"] // self.dp_size
        self._perm = self._make_perm()
