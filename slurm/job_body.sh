# Body shared by slurm/train_1node.sbatch and slurm/train_multinode.sbatch (sourced, not run).
# Every knob is an environment variable; see slurm/README.md.
#
# One srun task per node runs launch/launch.py, which starts one torchrun there. USR1 (sent by
# Slurm `--signal=B:USR1@SECS` before the time limit, or `scancel --signal=USR1 --batch`) touches
# RUN_DIR/PREEMPT; the trainer checkpoints at the end of its step, deletes PREEMPT and exits 0;
# we then requeue the job, which comes back with SLURM_RESTART_COUNT>=1 and resumes (the trainer
# always gets --resume auto).
set -uo pipefail

log() { echo "r1vfree-slurm: $*"; }
die() { echo "r1vfree-slurm: error: $*" >&2; exit 2; }

REPO_DIR="${R1VFREE_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
[[ -f "$REPO_DIR/launch/launch.py" ]] \
  || die "R1VFREE_ROOT=$REPO_DIR is not an r1vfree-mcore checkout (no launch/launch.py)"
cd "$REPO_DIR"

source "$REPO_DIR/launch/pick_python.sh"
pick_python "$REPO_DIR" || exit 2

[[ -n "${CONFIG:-}" ]] || die "CONFIG is not set (path of a recipe, e.g. launch/configs/qwen2_vl_2b.yaml)"
if [[ ! -f "$CONFIG" ]]; then  # same wording as the trainer, before any node starts Python
  echo "r1vfree: config error: config file not found: $CONFIG (cwd $REPO_DIR)" >&2
  exit 2
fi
RUN_DIR="${RUN_DIR:-$REPO_DIR/runs/${SLURM_JOB_NAME:-r1vfree}-${SLURM_JOB_ID:-local}}"
mkdir -p "$RUN_DIR/logs" || die "cannot create RUN_DIR=$RUN_DIR"
RESTART="${SLURM_RESTART_COUNT:-0}"

launch_args=()
[[ -n "${NPROC_PER_NODE:-}" ]] && launch_args+=(--nproc-per-node "$NPROC_PER_NODE")
[[ -n "${REWARD_NODES:-}" ]] && launch_args+=(--reward-nodes "$REWARD_NODES")
[[ -n "${MASTER_PORT_OVERRIDE:-}" ]] && launch_args+=(--master-port "$MASTER_PORT_OVERRIDE")
[[ -n "${LAUNCH_SCRIPT:-}" ]] && launch_args+=(--script "$LAUNCH_SCRIPT")
# TRAIN_ARGS / SRUN_ARGS are split on whitespace (values must not contain spaces).
read -r -a train_args <<< "${TRAIN_ARGS:-}"
read -r -a srun_args <<< "${SRUN_ARGS:-}"

log "job=${SLURM_JOB_ID:-?} restart=$RESTART nodes=${SLURM_JOB_NUM_NODES:-1} nodelist=${SLURM_JOB_NODELIST:-?} run_dir=$RUN_DIR config=$CONFIG python=$PYTHON"
echo "${SLURM_JOB_ID:-?} restart=$RESTART $(date -u +%FT%TZ)" >> "$RUN_DIR/logs/jobs.txt"

PREEMPTED=0
on_usr1() {
  PREEMPTED=1
  log "caught USR1: asking the trainer to checkpoint (touch $RUN_DIR/PREEMPT)"
  touch "$RUN_DIR/PREEMPT"
}
on_term() {
  # Slurm cancels/preempts with TERM and signals the tasks itself; we only make sure the trainer
  # also sees the file. Slurm (not this script) decides whether the job comes back.
  log "caught TERM: asking the trainer to checkpoint before exit"
  touch "$RUN_DIR/PREEMPT"
}
trap on_usr1 USR1
trap on_term TERM

# One task per node, each starting torchrun with nproc-per-node workers. --whole gives that one
# task every CPU and GPU of its node (otherwise Slurm may pin all workers to one core);
# --kill-on-bad-exit makes a failure on one node end the others at once (fail fast).
srun --ntasks-per-node=1 --whole --kill-on-bad-exit=1 "${srun_args[@]}" \
  env PYTHONUNBUFFERED=1 "$PYTHON" launch/launch.py "${launch_args[@]}" \
  --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto "${train_args[@]}" &
SRUN_PID=$!
# `wait` returns early (status > 128) whenever a trapped signal arrives: keep waiting for srun.
while :; do
  wait "$SRUN_PID"; rc=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break
done
log "srun exited with status $rc"
if [[ "$rc" != 0 ]]; then
  log "training failed: the first 'r1vfree: ... error' line above names the cause"
fi

if [[ "$PREEMPTED" == 1 ]]; then
  if [[ "$rc" == 0 && ! -e "$RUN_DIR/PREEMPT" ]]; then
    # The trainer consumed PREEMPT: it saved a checkpoint and stopped early. Come back later.
    log "checkpoint saved ($(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo '?')); requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID" || die "scontrol requeue $SLURM_JOB_ID failed"
    exit 0
  fi
  # Training ended (or failed) before it saw PREEMPT: nothing to resume.
  rm -f "$RUN_DIR/PREEMPT"
  log "not requeued: the trainer finished (status $rc) before acting on the preemption request"
fi
exit "$rc"
