#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): correctness, speed (tokens/s, MFU), memory on one
# H100/H200, offline, in under 8 minutes. Output: one table and one JSON line; with $OUT set,
# also $OUT/gpu_check.log.
#
#   bash bench/gpu_check.sh              # on a GPU machine, from the repository root
#   bash bench/gpu_check.sh --cpu-smoke  # the same code paths on the CPU (tiny model)
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export CUDA_DEVICE_MAX_CONNECTIONS=1      # megatron: keep TP comms ordered with compute
export NVTE_FLASH_ATTN=1 NVTE_FUSED_ATTN=1 # let TE pick flash or cuDNN fused attention
export NVTE_UNFUSED_ATTN=1                 # ... and unfused where those cannot (arbitrary masks)
export NVTE_DEBUG=0 NCCL_DEBUG=WARN TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1

if [[ -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
PY=${PYTHON:-python}

# Offline wheels: a git-ignored .whl/ folder (e.g. transformer-engine for this CUDA) fills in
# whatever the venv lacks; nothing is fetched from the network.
if [[ -d .whl ]]; then
  echo "gpu_check: installing missing packages from .whl/ (no index)"
  for spec in transformer_engine:transformer-engine flash_attn:flash-attn; do
    mod=${spec%%:*}; pkg=${spec##*:}
    if ! "$PY" -c "import $mod" 2>/dev/null && ls .whl | grep -qi "^${pkg//-/[-_]}"; then
      "$PY" -m pip install --no-index --find-links .whl "$pkg" || echo "gpu_check: could not install $pkg from .whl/"
    fi
  done
fi

"$PY" - <<'PYEOF'
import torch
print(f"gpu_check: torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
try:
    import transformer_engine
    print(f"gpu_check: transformer_engine {transformer_engine.__version__}")
except Exception as exc:
    print(f"gpu_check: transformer_engine not importable ({type(exc).__name__}: {exc}); local spec only")
PYEOF

LIMIT=${GPU_CHECK_TIMEOUT:-480}
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  timeout "$LIMIT" "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
exec timeout "$LIMIT" "$PY" bench/gpu_check.py "$@"
