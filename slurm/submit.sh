#!/usr/bin/env bash
# Submit an R1V-Free training job (and optionally a dependent HF-export job). See slurm/README.md.
#
#   slurm/submit.sh --config CFG [--run-dir DIR] [--nodes N] [--nproc-per-node P]
#                   [--gpus-per-node G] [--reward-nodes K] [--time T] [--partition P]
#                   [--export-hf] [--hf-out DIR] [--sbatch-arg ARG]... [--dry-run]
#                   [-- TRAINER_ARGS...]
#
# Prints TRAIN_JOB_ID=<id> (and EXPORT_JOB_ID=<id>). Logs: RUN_DIR/logs/<job name>-<job id>.out.
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "submit.sh: error: $*" >&2; exit 2; }

config="" run_dir="" nodes=1 nproc="${NPROC_PER_NODE:-}" gpus="" reward_nodes="${REWARD_NODES:-0}"
export_hf=0 hf_out="" dry_run=0 sbatch_args=() trainer_args=()
while (($#)); do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --nproc-per-node) nproc="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --reward-nodes) reward_nodes="$2"; shift 2 ;;
    --time) sbatch_args+=("--time=$2"); shift 2 ;;
    --partition) sbatch_args+=("--partition=$2"); shift 2 ;;
    --export-hf) export_hf=1; shift ;;
    --hf-out) hf_out="$2"; shift 2 ;;
    --sbatch-arg) sbatch_args+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; trainer_args=("$@"); break ;;
    *) die "unknown option $1 (trainer arguments go after --)" ;;
  esac
done
[[ -n "$config" ]] || die "--config is required"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got $nodes"
[[ "$reward_nodes" =~ ^[0-9]+$ ]] && ((reward_nodes < nodes)) \
  || die "--reward-nodes=$reward_nodes must be < --nodes=$nodes (at least one policy node)"
if [[ -n "$gpus" ]]; then
  sbatch_args+=("--gres=gpu:$gpus")
  nproc="${nproc:-$gpus}"
fi
[[ "$config" = /* ]] || config="$PWD/$config"
[[ -f "$config" ]] || die "config file not found: $config"
run_dir="${run_dir:-$REPO_DIR/runs/$(basename "$config" .yaml)}"
[[ "$run_dir" = /* ]] || run_dir="$PWD/$run_dir"
for arg in "${trainer_args[@]}"; do
  [[ "$arg" != *[[:space:]]* ]] || die "trainer argument with whitespace is not supported: '$arg'"
done

script=train_multinode.sbatch
((nodes == 1)) && script=train_1node.sbatch
common=(--parsable "--chdir=$REPO_DIR" "--output=$run_dir/logs/%x-%j.out")
train_cmd=(sbatch "${common[@]}" "--nodes=$nodes" "${sbatch_args[@]}" "$REPO_DIR/slurm/$script")
export R1VFREE_ROOT="$REPO_DIR" CONFIG="$config" RUN_DIR="$run_dir" REWARD_NODES="$reward_nodes"
export TRAIN_ARGS="${trainer_args[*]}"
[[ -n "$nproc" ]] && export NPROC_PER_NODE="$nproc"

if ((dry_run)); then
  echo "env: R1VFREE_ROOT=$R1VFREE_ROOT CONFIG=$CONFIG RUN_DIR=$RUN_DIR NPROC_PER_NODE=${NPROC_PER_NODE:-} REWARD_NODES=$REWARD_NODES TRAIN_ARGS='$TRAIN_ARGS'"
  echo "${train_cmd[*]}"
  ((export_hf)) && echo "sbatch ${common[*]} --dependency=afterok:<TRAIN_JOB_ID> $REPO_DIR/slurm/export_hf.sbatch"
  exit 0
fi
mkdir -p "$run_dir/logs"
train_id="$("${train_cmd[@]}")"
train_id="${train_id%%;*}"
echo "TRAIN_JOB_ID=$train_id"
if ((export_hf)); then
  [[ -n "$hf_out" ]] && export HF_OUT="$hf_out"
  export_id="$(sbatch "${common[@]}" "--dependency=afterok:$train_id" "$REPO_DIR/slurm/export_hf.sbatch")"
  echo "EXPORT_JOB_ID=${export_id%%;*}"
fi
