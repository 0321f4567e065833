"""Run a function in N gloo processes (tests of parallel layouts).

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` fresh processes on a free port,
initialises torch.distributed (gloo) in each, calls ``fn(rank, world_size, *args)`` and returns
the list of per-rank return values. If any rank raises, every rank's traceback is put in the
``DistributedTestError`` message; ranks still running after ``timeout`` seconds are killed.
``fn`` must be importable (a module-level function), since processes are spawned.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import time
import traceback
from typing import Any, Callable

from r1vfree_mcore.parallel.ports import free_port
from r1vfree_mcore.parallel.processes import reap


class DistributedTestError(AssertionError):
    """One or more ranks failed or hung; the message holds each rank's traceback."""


def _worker(fn, rank, world_size, port, args, env, results, init_pg=True):
    os.environ.update(env)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        if init_pg:
            dist.init_process_group("gloo", rank=rank, world_size=world_size)
        out = fn(rank, world_size, *args)
        # Plain pickle copies tensor data; the queue's default would share memory that dies
        # with this process.
        results.put((rank, "ok", pickle.dumps(out)))
    except BaseException:  # report everything, including SystemExit, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception as exc:  # a failed teardown must not hide the real result
            results.put((rank, "teardown", repr(exc)))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 240.0,
    env: dict[str, str] | None = None,
    init_process_group: bool = True,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return per-rank results.

    With ``init_process_group=False`` the workers get the MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE
    environment but do not join a process group (``fn`` builds its own, e.g. a sub-world).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(fn, r, world_size, port, args, dict(env or {}), results, init_process_group),
            daemon=False,  # ranks may spawn helpers (dist_checkpointing); we kill stragglers
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    outcome: dict[int, tuple[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(outcome) < world_size and time.monotonic() < deadline:
        try:
            rank, status, payload = results.get(timeout=0.5)
        except queue.Empty:
            # A rank that died without reporting (killed, segfault) is an error too.
            for r, p in enumerate(procs):
                if r not in outcome and not p.is_alive() and p.exitcode not in (0, None):
                    outcome[r] = ("error", f"process exited with code {p.exitcode}")
            if any(s == "error" for s, _ in outcome.values()):
                # Give the other ranks a moment to report, then stop waiting.
                deadline = min(deadline, time.monotonic() + 5.0)
            continue
        if status == "teardown":
            continue
        outcome[rank] = (status, payload)
        if status == "error":
            deadline = min(deadline, time.monotonic() + 5.0)
    reap(procs, grace=1.0)
    failures = []
    for r in range(world_size):
        status, payload = outcome.get(r, ("hung", f"no result within {timeout:.0f}s; killed"))
        if status != "ok":
            failures.append(f"--- rank {r} ({status}) ---\n{payload}")
    if failures:
        raise DistributedTestError(
            f"{len(failures)} of {world_size} ranks failed in {getattr(fn, '__name__', fn)}:\n"
            + "\n".join(failures)
        )
    return [pickle.loads(outcome[r][1]) for r in range(world_size)]
