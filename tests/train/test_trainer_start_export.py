"""The trainer's start from a Megatron checkpoint (model.mcore_dir), its HF exports, and the
precision plan reaching the policy forward."""

from __future__ import annotations

import math

import pytest
import torch

from r1vfree_mcore.testing.trainer_run import run_trainer, trainer_args
from r1vfree_mcore.train.metrics import read_metrics

pytestmark = pytest.mark.slow

COMPARED = ("reward", "loss", "kl", "grad_norm", "completion_length")


def _hf_tensors(d):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def hf_start_run(tiny_assets, tmp_path_factory):
    """Two steps from the HF weights, exporting HF at the end."""
    run = tmp_path_factory.mktemp("hf_start") / "run"
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "2", "checkpoint.hf_export_at_end=true"))
    assert p.returncode == 0, p.stderr[-3000:]
    return run, p


def test_mcore_start_equals_hf_start_and_exports_every_step(tiny_assets, hf_start_run, tmp_path):
    from r1vfree_mcore.conversion import hf_to_mcore

    hf_run, hf_proc = hf_start_run
    mcore = tmp_path / "policy_mcore_tp2"
    hf_to_mcore(tiny_assets["policy"], mcore, tp=2, progress=False)  # another layout than the run's
    run = tmp_path / "run"
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "2", f"model.mcore_dir={mcore}",
                                 "checkpoint.hf_export_every=1"))
    assert p.returncode == 0, p.stderr[-3000:]

    # Same weights, same seeds: the two runs are the same run.
    a, b = read_metrics(hf_run), read_metrics(run)
    for ra, rb in zip(a, b, strict=True):
        for k in COMPARED:
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
        assert rb["checkpoint/hf_export_failures"] == 0

    assert sorted(x.name for x in (run / "hf").iterdir()) == ["step_000001", "step_000002"]
    assert [x.name for x in (hf_run / "hf").iterdir()] == ["step_000002"]  # at_end only
    end_a, end_b = _hf_tensors(hf_run / "hf" / "step_000002"), _hf_tensors(run / "hf" / "step_000002")
    start = _hf_tensors(tiny_assets["policy"])
    assert set(end_a) == set(end_b) == set(start)
    assert all(torch.equal(end_a[k], end_b[k]) for k in start)
    assert any(not torch.equal(end_a[k], start[k]) for k in start), "two steps changed no weight"
    assert (run / "hf" / "step_000002" / "config.json").is_file()
    assert "exported HF checkpoint" in p.stdout


def test_precision_plan_reaches_the_policy_forward(tiny_assets, hf_start_run, tmp_path):
    """fp8 without TE says it runs bf16 instead of silently ignoring the request, and the bf16
    parameters change the numbers (on CPU bf16 compute means bf16 parameters; see plan_precision)."""
    hf_run, hf_proc = hf_start_run
    assert "precision: spec=local, params=float32, compute=float32" in hf_proc.stdout
    run = tmp_path / "fp8_on_cpu"
    p = run_trainer(trainer_args(tiny_assets, run, "--max-steps", "1", "model.precision=fp8",
                                 "model.fp8_recipe=delayed", "model.dtype=bf16"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "params=bfloat16, compute=bfloat16" in p.stdout
    assert "fp8 needs the transformer_engine spec: running bf16" in p.stdout
    got, ref = read_metrics(run)[0], read_metrics(hf_run)[0]
    assert all(math.isfinite(got[k]) for k in COMPARED)
    # Step 1 has kl = 0 and loss ~ 0 in any precision; gradients and entropy show the dtype.
    assert got["grad_norm"] != ref["grad_norm"] and got["entropy"] != ref["entropy"], "bf16 changed nothing"
    assert abs(got["grad_norm"] - ref["grad_norm"]) < 0.05 * ref["grad_norm"]
