#!/usr/bin/env bash
# Submits one multi-process training run to a SLURM GPU cluster (the job: launch/slurm.sbatch).
#
#   launch/slurm.sh --config=experiments/configs/default.py:task=permutation \
#       --workdir=/shared/runs/permutation [--nodes=2] [--gpus_per_node=8] [--layout=per-gpu]
#       [--partition=P] [--account=A] [--time=24:00:00] [--job_name=NAME] [--dry-run]
#       [-- EXTRA TRAINER ARGS...]
#
# Required: --config, --workdir (a directory every node can reach; created here if missing).
# Options:
#   --nodes=N           machines (default 1)
#   --gpus_per_node=G   GPUs per machine (default 8)
#   --layout=per-gpu    one process per GPU: --ntasks-per-node=G (default)
#   --layout=per-node   one process per machine using its G GPUs: --ntasks-per-node=1
#   --partition=P, --account=A, --time=D-HH:MM:SS, --job_name=NAME   passed to sbatch
#   --dry-run           print the sbatch command and the srun line the job will run; submit nothing
#   -- ARGS             extra arguments for python -m amp_debate.main
#
# Run it from the repository root in the environment that has amp_debate installed (the job
# inherits it). The job runs srun python -m amp_debate.main ... --config.distributed=True (JAX's
# SLURM auto-detection), saves on SIGTERM 120 s before the time limit and requeues itself until
# <workdir>/results.md exists; the log is <workdir>/slurm-<job id>.out. See launch/slurm.sbatch.
set -euo pipefail
PROG=launch/slurm.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

config="" workdir="" nodes=1 gpus=8 layout=per-gpu partition="" account="" time="" job_name=""
DRY_RUN=0
extra=()
while (($#)); do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --nodes=*) nodes="${1#*=}" ;;
    --gpus_per_node=*) gpus="${1#*=}" ;;
    --layout=*) layout="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time="${1#*=}" ;;
    --job_name=*) job_name="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage_of "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (trainer arguments go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$config" ]] || die "--config=FILE.py[:ARGS] is required"
[[ -n "$workdir" ]] || die "--workdir=DIR (on a filesystem shared by all nodes) is required"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got $nodes"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive integer, got $gpus"
case "$layout" in
  per-gpu) tasks_per_node="$gpus" ;;
  per-node) tasks_per_node=1 ;;
  *) die "--layout must be per-gpu or per-node, got $layout" ;;
esac
need_binary sbatch

workdir_abs="$(realpath -m "$workdir")"
sbatch_cmd=(sbatch --nodes="$nodes" --ntasks-per-node="$tasks_per_node" --gpus-per-node="$gpus"
            --job-name="${job_name:-amp_debate}" --output="$workdir_abs/slurm-%j.out")
[[ -n "$partition" ]] && sbatch_cmd+=(--partition="$partition")
[[ -n "$account" ]] && sbatch_cmd+=(--account="$account")
[[ -n "$time" ]] && sbatch_cmd+=(--time="$time")
job_args=(--config="$config" --workdir="$workdir_abs" "${extra[@]}")
sbatch_cmd+=("$HERE/slurm.sbatch" "${job_args[@]}")

((DRY_RUN)) || mkdir -p "$workdir_abs"
run "${sbatch_cmd[@]}"
if ((DRY_RUN)); then
  echo "# each of the $nodes node(s) runs $tasks_per_node task(s) of:"
  SLURM_NTASKS_PER_NODE="$tasks_per_node" SLURM_GPUS_PER_NODE="$gpus" AMP_DEBATE_DRY_RUN=1 \
    "$BASH" "$HERE/slurm.sbatch" "${job_args[@]}"
fi
