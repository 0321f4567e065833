"""Fixtures of the conversion tests; the helpers they use live in conversion_cases.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conversion_cases import TP2PP2_CASES, write_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conversion_tiny")


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """``tiny(family, tied)`` -> path of a cached tiny HF checkpoint."""
    cache: dict = {}

    def get(family: str, tied: bool) -> Path:
        if (family, tied) not in cache:
            cache[(family, tied)] = write_tiny(tiny_root, family, tied)
        return cache[(family, tied)]

    return get


@pytest.fixture(scope="session")
def tp2pp2(tiny, tmp_path_factory):
    """Every family x tied checkpoint converted at TP=2/PP=2 by one set of 4 rank processes:
    ``{(family, tied): (hf_dir, mcore_dir, summary)}``."""
    from r1vfree_mcore.conversion.to_mcore import hf_to_mcore_many

    root = tmp_path_factory.mktemp("tp2pp2")
    jobs = [(tiny(f, t), root / f"{f}_{t}") for f, t in TP2PP2_CASES]
    summaries = hf_to_mcore_many(jobs, tp=2, pp=2, progress=False)
    return {case: (src, out, s) for case, (src, out), s in zip(TP2PP2_CASES, jobs, summaries)}
