"""run_ranks: a world of one runs in this process on a private group and leaves nothing behind."""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist

from r1vfree_mcore.conversion.workers import RankFailure, run_ranks


def _report(rank, world, counters, x):
    counters[0] += x
    return os.getpid(), rank, world, dist.get_world_size()


def _fail(rank, world, counters):
    raise ValueError("boom\nsecond line")


def test_world_of_one_runs_here_with_a_group_and_progress():
    polled = []
    assert run_ranks(_report, 1, 7, on_poll=lambda c: polled.append(c[0])) == [(os.getpid(), 0, 1, 1)]
    assert polled and polled[-1] == 7
    assert not dist.is_initialized()


def test_failure_in_process_is_a_rank_failure_and_the_group_is_gone():
    with pytest.raises(RankFailure) as exc:
        run_ranks(_fail, 1)
    assert exc.value.first_line == "rank 0: ValueError: boom"
    assert "Traceback" in exc.value.failures[0][1]
    assert not dist.is_initialized()


def test_in_process_needs_a_world_of_one():
    with pytest.raises(ValueError, match="world=2"):
        run_ranks(_report, 2, 1, in_process=True)


@pytest.mark.slow
def test_spawned_when_asked():
    (pid, rank, world, size), = run_ranks(_report, 1, 1, in_process=False)
    assert pid != os.getpid() and (rank, world, size) == (0, 1, 1)
