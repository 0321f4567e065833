"""Session fixture: a private two-node Slurm (tests/slurm/slurm_cluster.py)."""

from __future__ import annotations

import os

import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_installed
from slurm_jobs import Slurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running two-node cluster (n1, n2); skips with the reason when Slurm cannot be had."""
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(f"Slurm unavailable: {exc}")
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root (slurmd, /etc/hosts)")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        print(f"\nslurm test cluster up (proctrack/{cluster.proctrack}) in {cluster.dir}")
        yield Slurm(cluster)
    finally:
        cluster.stop()
