#!/usr/bin/env bash
# Thin wrapper: one torchrun on this node for r1vfree-train. See launch/launch.py --launcher-help.
#   launch/train.sh --nproc-per-node 8 --config launch/configs/qwen2_vl_2b.yaml --run-dir runs/2b
# PYTHON (or VENV) picks the interpreter; default: the repo's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/pick_python.sh"
pick_python "$here/.."
exec "$PYTHON" "$here/launch.py" "$@"
