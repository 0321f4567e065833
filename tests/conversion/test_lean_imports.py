"""The converter program imports megatron-core without TorchInductor / wandb and restores both."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conversion_cases import assert_bit_exact

_PROBE = """
import importlib.util, sys, torch
compile_fn = torch.compile
from r1vfree_mcore.conversion.lean_imports import import_megatron_lean
assert import_megatron_lean()
assert not import_megatron_lean()  # second call: already imported, nothing done
assert torch.compile is compile_fn
assert 'torch._inductor.compile_fx' not in sys.modules and 'wandb' not in sys.modules
from megatron.core import jit
f = lambda x: x
assert jit.jit_fuser(f) is f  # fused helpers stay eager in this process
assert importlib.util.find_spec('wandb') is not None  # importable again for anyone else
import r1vfree_mcore.models
print('ok')
"""


def test_lean_megatron_import_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_cli_program_round_trip_is_bit_exact(tiny, tmp_path):
    """``python -m r1vfree_mcore.conversion.cli`` (lean imports, TP=1 in-process) both ways; the
    HF export does not import megatron-core at all."""
    src = tiny("qwen2_5_vl", False)
    mc, back = tmp_path / "mcore", tmp_path / "hf"
    cli = [sys.executable, "-X", "importtime", "-m", "r1vfree_mcore.conversion.cli"]
    imported = {}
    for args in (["hf-to-mcore", "--hf-dir", str(src), "--out", str(mc), "--quiet"],
                 ["mcore-to-hf", "--mcore-dir", str(mc), "--out", str(back), "--quiet"]):
        out = subprocess.run(cli + args, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        imported[args[0]] = re.search(r"\|\s+megatron\b", out.stderr) is not None  # -X importtime lists each
    assert_bit_exact(src, back)
    assert imported == {"hf-to-mcore": True, "mcore-to-hf": False}  # the export needs no megatron
