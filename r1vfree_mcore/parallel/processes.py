"""Ending spawned rank processes without leaving orphans (test harness and conversion workers).

A rank may fork helpers of its own (dist_checkpointing's writer processes). If such a helper
lingers, the rank blocks at exit joining it, gets killed after the grace period, and the helper
is re-parented to init and lives on, holding its memory. :func:`reap` kills the whole family.
"""

from __future__ import annotations

import contextlib

import psutil


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def reap(procs, grace: float) -> None:
    """Join ``procs`` (``multiprocessing.Process``) for up to ``grace`` s each, then kill the
    ones still alive and every descendant any of them had, so nothing outlives the caller."""
    family = [d for p in procs if p.pid is not None for d in _descendants(p.pid)]
    for p in procs:
        p.join(timeout=grace)
        if p.is_alive():
            family += _descendants(p.pid)
            p.kill()
            p.join(timeout=5.0)
    killed = []
    for d in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            if d.is_running():
                d.kill()
                killed.append(d)
    psutil.wait_procs(killed, timeout=5.0)  # SIGKILL is asynchronous
