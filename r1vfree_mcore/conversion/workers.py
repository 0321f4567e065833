"""Run one function on N gloo ranks (the TP x PP ranks of a conversion).

Production counterpart of the test harness: a free port, fresh ``spawn`` processes, shared
progress counters, and every failing rank's traceback in the raised :class:`RankFailure`.
:func:`run_ranks` runs a world of one in this process instead when it can (no process start-up
and no second copy of torch / megatron / transformers in memory).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from typing import Any, Callable

from r1vfree_mcore.parallel.ports import free_port
from r1vfree_mcore.parallel.processes import reap


class RankFailure(RuntimeError):
    """One or more ranks failed. ``first_line`` is the root error of the lowest failing rank."""

    def __init__(self, failures: dict[int, tuple[str, str]]):
        self.failures = failures
        rank = min(failures)
        self.first_line = f"rank {rank}: {failures[rank][0]}"
        details = "\n".join(f"--- rank {r} ---\n{tb}" for r, (_, tb) in sorted(failures.items()))
        super().__init__(f"{len(failures)} rank(s) failed; {self.first_line}\n{details}")


def _entry(fn, rank, world, port, args, counters, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist

    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        out = fn(rank, world, counters, *args)
        results.put((rank, True, pickle.dumps(out), ""))
    except BaseException as exc:  # every failure reaches the parent, SystemExit included
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        results.put((rank, False, line, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 24 * 3600.0,
                on_poll: Callable[[Any], None] | None = None) -> list[Any]:
    """Run module-level ``fn(rank, world, counters, *args)`` on ``world`` ranks; per-rank results.

    ``counters`` is a shared ``multiprocessing.Array('q', 4)`` the ranks may add progress to;
    ``on_poll(counters)`` is called from this process about every 0.2 s while they run.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    counters = ctx.Array("q", 4)
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, args, counters, results))
             for r in range(world)]
    for p in procs:
        p.start()
    done: dict[int, tuple[bool, Any, str]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(done) < world and time.monotonic() < deadline:
            if on_poll is not None:
                on_poll(counters)
            try:
                rank, ok, payload, tb = results.get(timeout=0.2)
                done[rank] = (ok, payload, tb)
                if not ok:  # the others are likely blocked in a collective: give them a moment
                    deadline = min(deadline, time.monotonic() + 10.0)
            except queue.Empty:
                for r, p in enumerate(procs):
                    if r not in done and p.exitcode not in (None, 0):
                        done[r] = (False, f"process died with exit code {p.exitcode}", "")
                        deadline = min(deadline, time.monotonic() + 10.0)
    finally:
        reap(procs, grace=2.0)
    if on_poll is not None:
        on_poll(counters)
    failures = {r: (payload, tb) for r, (ok, payload, tb) in done.items() if not ok}
    for r in range(world):
        if r not in done:
            failures[r] = ("did not finish (killed after a peer failed or the timeout)", "")
    if failures:
        # A rank that only hung because a peer failed is noise: report real errors first.
        real = {r: f for r, f in failures.items() if f[1]}
        raise RankFailure(real or failures)
    return [pickle.loads(done[r][1]) for r in range(world)]


class _LocalCounters(list):
    """The in-process stand-in for the shared counters: same interface, reports every change."""

    def __init__(self, on_poll: Callable[[Any], None] | None):
        super().__init__([0, 0, 0, 0])
        self._on_poll = on_poll

    def get_lock(self):
        return contextlib.nullcontext()

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if self._on_poll is not None:
            self._on_poll(self)


def can_run_in_process(world: int) -> bool:
    """A world of one can run here if this process is not already part of a torch.distributed job."""
    import torch.distributed as dist

    return world == 1 and not (dist.is_available() and dist.is_initialized())


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, in_process: bool | None = None,
              on_poll: Callable[[Any], None] | None = None, **kwargs: Any) -> list[Any]:
    """:func:`spawn_ranks`, or for a world of one ``fn`` in this process on a private gloo group.

    ``in_process``: None picks it when :func:`can_run_in_process`; True requires it. The group
    (an in-memory store, no port) is created and destroyed here, and a failure is raised as the
    same :class:`RankFailure` a spawned rank would give; ``fn`` must undo any other global state
    it sets up (e.g. megatron's parallel state).
    """
    if in_process is None:
        in_process = can_run_in_process(world)
    if not in_process:
        return spawn_ranks(fn, world, *args, on_poll=on_poll, **kwargs)
    if not can_run_in_process(world):
        raise ValueError(f"in_process needs a world of 1 and no torch.distributed group here (world={world})")
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    counters = _LocalCounters(on_poll)
    try:
        out = fn(0, 1, counters, *args)
    except Exception as exc:
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise RankFailure({0: (line, traceback.format_exc())}) from exc
    finally:
        dist.destroy_process_group()
    if on_poll is not None:
        on_poll(counters)
    return [out]
