"""cpu_compat.mode_suspended: the cuda->cpu mode is off inside the block and back after it."""

from __future__ import annotations

import torch

from r1vfree_mcore.testing.distributed import run_distributed


def _suspend_checks(rank, world):
    from r1vfree_mcore.parallel import cpu_compat
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel

    initialize_parallel(ParallelConfig())
    out = {"before": torch.zeros(1, device="cuda").device.type}
    with cpu_compat.mode_suspended():
        out["inside_current_device"] = str(torch.cuda.current_device())
        out["inside_buffer"] = torch.empty(2, device=torch.cuda.current_device()).device.type
        try:
            torch.zeros(1, device="cuda")
            out["inside_literal_cuda"] = "ran"
        except RuntimeError:
            out["inside_literal_cuda"] = "raised"  # the mode is really off
        with cpu_compat.mode_suspended():  # nested: a no-op, the mode is not on top
            out["nested"] = str(torch.cuda.current_device())
        out["after_nested"] = str(torch.cuda.current_device())
    out["after"] = torch.zeros(1, device="cuda").device.type
    out["after_current_device"] = torch.cuda.current_device()
    return out


def test_mode_suspended_turns_the_mode_off_and_restores_it():
    (r,) = run_distributed(_suspend_checks, 1)
    assert r["before"] == "cpu" and r["after"] == "cpu", r
    assert r["inside_current_device"] == "cpu" and r["inside_buffer"] == "cpu", r
    assert r["inside_literal_cuda"] == "raised", r
    assert r["nested"] == "cpu" and r["after_nested"] == "cpu", r
    assert r["after_current_device"] == 0, r


def test_mode_suspended_is_a_no_op_when_not_applied():
    from r1vfree_mcore.parallel import cpu_compat

    if cpu_compat.is_applied():  # another test patched this process: nothing to check here
        return
    before = torch.cuda.current_device
    with cpu_compat.mode_suspended():
        assert torch.cuda.current_device is before
    assert torch.cuda.current_device is before


_FAULTS = """
import resource, sys, torch
from r1vfree_mcore.parallel import cpu_compat
if sys.argv[1] == "keep":
    assert cpu_compat.keep_freed_memory()
def faults():  # one 'phase': 40 tensors of 2-10 MiB (240 MiB) allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    xs = [torch.ones(((i % 5) + 1) << 19) for i in range(40)]
    del xs
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(max(faults() for _ in range(3)))
"""


def test_keep_freed_memory_reuses_freed_blocks():
    import subprocess
    import sys

    def run(arg: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, arg], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    # With glibc's defaults the same loop often (not always: its thresholds adapt) faults most of
    # the 61440 pages back in every time; kept, every round after the first reuses the blocks.
    kept = run("keep")
    assert kept < (240 << 20) // 4096 // 10, kept
