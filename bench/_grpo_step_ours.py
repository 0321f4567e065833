"""Our side of bench/grpo_step.py: ``r1vfree-train`` with the step's CPU time added to its metrics.

``python bench/_grpo_step_ours.py <r1vfree-train arguments>`` runs :func:`r1vfree_mcore.train.cli.main`
unchanged, except that each ``Trainer.train_step`` also reports ``bench/cpu_s`` (process CPU
seconds of the step, all threads) in RUN_DIR/metrics.jsonl: on a shared VM, wall time also
measures the scheduler; CPU time measures the work. ``bench/maxrss_mib`` is this process's peak
RSS so far (``ru_maxrss``) at the end of the step: the bench compares peaks over the training
steps on both sides, apart from the end-of-run checkpoint that only our side writes.
"""

from __future__ import annotations

import resource
import sys
import time

from r1vfree_mcore.train import cli, loop

_train_step = loop.Trainer.train_step


def _timed_train_step(self):
    c0 = time.process_time()
    out = _train_step(self)
    out["bench/cpu_s"] = time.process_time() - c0
    out["bench/maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


if __name__ == "__main__":
    loop.Trainer.train_step = _timed_train_step
    sys.exit(cli.main(sys.argv[1:]))
