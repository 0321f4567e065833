# Sourced by launch/train.sh and slurm/*: sets PYTHON (argument: the repository root).
# Order: $PYTHON, $VENV/bin/python, <repo>/.venv/bin/python, python3.
pick_python() {
  local repo="$1"
  if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VENV:-}" ]]; then PYTHON="$VENV/bin/python"
    elif [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"
    else PYTHON=python3; fi
  fi
  if ! command -v "$PYTHON" >/dev/null; then
    echo "r1vfree: error: PYTHON=$PYTHON is not an executable" >&2
    return 2
  fi
}
