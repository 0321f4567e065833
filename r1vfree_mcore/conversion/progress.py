"""A tqdm progress bar counting bytes, with tensors done in the postfix (stderr; off when quiet)."""

from __future__ import annotations


class Progress:
    """``update(nbytes, ntensors)`` in-process, or ``update_from(counters)`` from worker counters
    (``counters[0]`` bytes, ``counters[1]`` tensors, ``counters[2]`` ranks now saving, as
    :func:`spawn_ranks` shares them)."""

    def __init__(self, desc: str, total_bytes: int, total_tensors: int, enabled: bool = True):
        self.total_tensors = total_tensors
        self.tensors = 0
        self.note = ""  # what runs after the bytes are in (e.g. the checkpoint save)
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                            dynamic_ncols=True, mininterval=0.5)

    def update(self, nbytes: int, ntensors: int = 1) -> None:
        self.tensors += ntensors
        if self.bar is not None:
            self.bar.update(min(nbytes, self.bar.total - self.bar.n))
            self.bar.set_postfix_str(f"tensors {self.tensors}/{self.total_tensors}{self.note}", refresh=False)

    def update_from(self, counters) -> None:
        if self.bar is not None:
            self.note = f", saving on {counters[2]} rank(s)" if counters[2] else ""
            self.update(counters[0] - self.bar.n, counters[1] - self.tensors)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
