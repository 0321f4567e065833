import pytest

from r1vfree_mcore.testing.distributed import DistributedTestError, run_distributed


def _allreduce_sum(rank, world):
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item()


def _rank1_fails(rank, world):
    if rank == 1:
        raise ValueError("boom from rank one")
    return rank


def _rank0_hangs(rank, world):
    import time

    if rank == 0:
        time.sleep(600)
    return rank


@pytest.mark.parametrize("world", [1, 2, 4])
def test_collectives_across_ranks(world):
    out = run_distributed(_allreduce_sum, world)
    assert out == [world * (world + 1) / 2] * world


def test_failing_rank_traceback_is_reported():
    with pytest.raises(DistributedTestError) as err:
        run_distributed(_rank1_fails, 2)
    msg = str(err.value)
    assert "rank 1 (error)" in msg and "boom from rank one" in msg and "ValueError" in msg


def test_hung_rank_is_killed():
    with pytest.raises(DistributedTestError, match="rank 0 \\(hung\\)"):
        run_distributed(_rank0_hangs, 2, timeout=8)


def _sleep(seconds):
    import time

    time.sleep(seconds)


def _forks_a_lingering_helper(rank, world):
    """Like dist_checkpointing's writers: a forked, non-daemon child that outlives the work, so the
    rank blocks at exit joining it."""
    import multiprocessing as mp

    child = mp.get_context("fork").Process(target=_sleep, args=(600,), daemon=False)
    child.start()
    return child.pid


def test_no_process_outlives_the_harness():
    import psutil

    pids = run_distributed(_forks_a_lingering_helper, 2)
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"orphaned helper processes still running: {alive}"
