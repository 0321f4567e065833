"""bench/gpu_check.py --cpu-smoke runs every code path of the GPU check on the CPU (< 60 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_smoke_prints_table_and_json():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    assert res["bench"] == "gpu_check" and res["device"] == "cpu" and res["te"] is False
    # Same code paths as on the GPU: HF comparison, packing, GRPO step, rollout.
    assert 0 < res["logit_rel_err_bf16"] < 0.05, res  # bf16 rounding, not a wrong model
    assert res["logit_rel_err_fp32"] < 1e-4, res  # fp32 parity with HF's 3-D mrope positions
    for key in ("local", "local_sdpa"):  # bf16 error of Megatron ~ HF's own bf16 error
        assert res[f"logit_rel_err_bf16_vs_fp32_{key}"] < 2 * res["hf_bf16_vs_fp32_rel_err"], res
    assert res["packed_vs_padded_rel_err_local"] < 0.02, res
    assert res["tokens_per_s_bf16"] > 0 and res["rollout_tokens_per_s"] > 0, res
    assert res["errors"] == {}, res["errors"]  # a failing phase would also make the exit code 1
    assert res["rollout_tokens_per_s"] == max(res["rollout_tokens_per_s_local"], res["rollout_tokens_per_s_local_sdpa"])
    assert res["local_sdpa_vs_local_rel_err"] < 0.02, res  # the non-TE GPU spec is the same model
    assert res["mfu_bf16"] is None and res["mfu_fp8"] is None and res["fp8_speedup"] is None
    assert res["model_flops_per_step"] > 6 * res["params"] * 2 * 64 * 0.5
    table = "\n".join(lines[:-1])
    for needle in ("| section", "Megatron vs HF logits", "packed THD vs padded", "GRPO fwd+bwd bf16",
                   "rollout local bf16 (KV cache)", "rollout local_sdpa bf16",
                   "GRPO fwd+bwd bf16 (local_sdpa)", "| memory"):
        assert needle in table, needle


def test_gpu_mode_refuses_without_cuda(capsys):
    import importlib.util

    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    assert mod.main([]) == 2 and "--cpu-smoke" in capsys.readouterr().err
