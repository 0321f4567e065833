#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): correctness, speed (tokens/s, MFU), memory on one
# H100/H200, offline, in under 8 minutes. Output: one table and one JSON line, then (GPU only) a
# few GRPO steps of the tiny demo trainer on the card and a resume from its checkpoint. Logs go
# to ${OUT:-/tmp}: gpu_check.log, trainer_smoke.log, trainer_resume.log (+ trainer_metrics.jsonl
# when OUT is set).
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
PY=${PYTHON:-$(command -v python || command -v python3)}
# The repository itself is importable without an install (a bare GPU image has no venv).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Offline wheels: a git-ignored folder (default .whl/; megatron-core, transformer-engine, ... for
# this Python/CUDA) fills in whatever the image lacks; nothing is fetched from the network.
WHL_DIR=${WHL_DIR:-.whl}
if compgen -G "$WHL_DIR/*.whl" >/dev/null; then
  SITE=${WHL_SITE:-/tmp/gpu_check_site}
  echo "gpu_check: installing $(ls "$WHL_DIR"/*.whl | wc -l) wheel(s) from $WHL_DIR/ into $SITE (no index)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL_DIR"/*.whl \
    || { echo "gpu_check: could not install the wheels in $WHL_DIR/" >&2; exit 3; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
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

# 1. The check itself (table + JSON line).
LOG=${OUT:-/tmp}/gpu_check.log
mkdir -p "$(dirname "$LOG")"
set +e
timeout "${GPU_CHECK_TIMEOUT:-330}" "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}

# 2. GPU mode only: the trainer end to end on the card (tiny demo assets, bf16, spec
#    transformer_engine or its local_sdpa fallback): rollout, rewards, nccl DDP, the distributed
#    optimizer and checkpoints on CUDA; then a second process resumes from the last checkpoint.
demo() {  # demo LOG_NAME TAIL_LINES DEMO_ARGS...: one demo run, its log kept, its exit status returned
  local log=${OUT:-/tmp}/$1 lines=$2
  shift 2
  timeout "${TRAINER_TIMEOUT:-150}" "$PY" -m r1vfree_mcore.demo --run-dir "$RUN/run" --assets "$RUN/assets" "$@" \
    model.precision=bf16 model.spec=transformer_engine checkpoint.every_steps=2 \
    2>&1 | tee "$log" | grep -v -i "warn" | tail -"$lines"
  return "${PIPESTATUS[0]}"
}
if [[ " $* " != *" --cpu-smoke "* ]]; then
  RUN=${TRAINER_RUN_DIR:-/tmp/gpu_check_trainer}
  STEPS=${TRAINER_STEPS:-4}
  rm -rf "$RUN"
  echo "gpu_check: trainer smoke ($RUN): $STEPS GRPO steps of the tiny demo on the GPU"
  demo trainer_smoke.log 25 --max-steps "$STEPS"
  trc=$?
  echo "gpu_check: trainer smoke rc=$trc"
  if [[ $trc -eq 0 ]]; then  # the distributed optimizer's state back from disk, 2 more steps
    demo trainer_resume.log 8 --resume auto --max-steps "$((STEPS + 2))"
    trc=$?
    echo "gpu_check: trainer resume rc=$trc"
  fi
  [[ -n "${OUT:-}" && -f "$RUN/run/metrics.jsonl" ]] && cp "$RUN/run/metrics.jsonl" "$OUT/trainer_metrics.jsonl"
  [[ $trc -ne 0 && $rc -eq 0 ]] && rc=$trc
fi
exit "$rc"
