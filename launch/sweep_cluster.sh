#!/usr/bin/env bash
# Runs a sweep (experiments/sweeps/NAME.py) on a cluster, one job per run of the sweep.
#
#   launch/sweep_cluster.sh --sweep=experiments/sweeps/NAME.py \
#       --config=experiments/configs/default.py:task=permutation --workdir=/shared/sweeps/NAME \
#       [--count=N] [--partition=P] [--account=A] [--time=HH:MM:SS] [--gpus_per_run=1]
#       [--max_parallel=K] [--dry-run] [-- EXTRA SWEEP ARGS...]
#   launch/sweep_cluster.sh --tpu --name=VM --zone=ZONE [--project=PROJECT] --sweep=... \
#       --config=... --workdir=DIR_ON_THE_VM [--count=N] [--dry-run] [-- EXTRA SWEEP ARGS...]
#
# Required: --sweep, --config, --workdir; with --tpu also --name and --zone.
# The number of runs N comes from `python -m amp_debate.sweep --sweep=... --config=...
# --workdir=... --count` unless --count=N is given (then the sweep module is not needed here,
# also not under --dry-run). Run I (0-based) is `python -m amp_debate.sweep ... --only=I`.
# With `-- --vmap=K` the units are vmapped groups of up to K runs sharing a compiled step (one
# job per group; the count, taken with the same extra arguments, is the number of groups).
#
# SLURM (default): one array job, `sbatch --array=0-(N-1)[%K]`, task I running run I as one
#   process with --gpus_per_run GPUs (default 1); --max_parallel=K runs at most K at once. The
#   job may be requeued on preemption (--requeue) and gets SIGTERM 120 s before its time limit
#   (--signal=TERM@120), on which the trainer saves; resubmitting the same sweep resumes each
#   unfinished run from its checkpoints (each run has its own directory under --workdir).
#   Logs: <workdir>/sweep-<array job id>_<task id>.out. Submit from the repository root in the
#   environment that has amp_debate installed.
# --tpu: the runs one after another on one existing TPU VM (or pod slice: --worker=all), each
#   `gcloud compute tpus tpu-vm ssh NAME --worker=all --command='cd ~/amp_debate && python3 -m
#   amp_debate.sweep ... --only=I'`; stops at the first run that fails. The VM must already hold
#   the code in ~/amp_debate (launch/tpu_pod.sh installs it there) and --workdir is a path on the
#   VM (e.g. the bucket mount '$HOME/gcs/BUCKET/...', $HOME or ~ expanded there). For a multi-worker slice pass the sweep
#   runner's option for --config.distributed=True after --.
# --dry-run prints every command (sbatch or gcloud) and runs nothing.
set -euo pipefail
PROG=launch/sweep_cluster.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

sweep="" config="" workdir="" count="" partition="" account="" time="" gpus=1 max_parallel=""
tpu=0 name="" zone="" project="" DRY_RUN=0
extra=()
while (($#)); do
  case "$1" in
    --sweep=*) sweep="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --count=*) count="${1#*=}" ;;
    --partition=*) partition="${1#*=}" ;;
    --account=*) account="${1#*=}" ;;
    --time=*) time="${1#*=}" ;;
    --gpus_per_run=*) gpus="${1#*=}" ;;
    --max_parallel=*) max_parallel="${1#*=}" ;;
    --tpu) tpu=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage_of "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (sweep runner arguments go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$sweep" ]] || die "--sweep=experiments/sweeps/NAME.py is required"
[[ -n "$config" ]] || die "--config=FILE.py[:ARGS] is required"
[[ -n "$workdir" ]] || die "--workdir=DIR is required"
if ((tpu)); then
  [[ -n "$name" ]] || die "--tpu needs --name=NAME (the TPU VM)"
  [[ -n "$zone" ]] || die "--tpu needs --zone=ZONE"
  need_binary gcloud
else
  [[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_run must be a positive integer, got $gpus"
  [[ -z "$max_parallel" || "$max_parallel" =~ ^[1-9][0-9]*$ ]] ||
    die "--max_parallel must be a positive integer, got $max_parallel"
  need_binary sbatch
  workdir="$(realpath -m "$workdir")"
fi

sweep_args=(--sweep="$sweep" --config="$config" --workdir="$workdir")
if [[ -z "$count" ]]; then
  echo "+ $(join python -m amp_debate.sweep "${sweep_args[@]}" "${extra[@]}" --count)"
  count="$(python -m amp_debate.sweep "${sweep_args[@]}" "${extra[@]}" --count)" ||
    die "python -m amp_debate.sweep ... --count failed (give --count=N to skip it)"
fi
[[ "$count" =~ ^[1-9][0-9]*$ ]] || die "the sweep's run count must be a positive integer, got '$count'"

if ((tpu)); then
  where=(--zone="$zone")
  [[ -n "$project" ]] && where+=(--project="$project")
  for ((i = 0; i < count; i++)); do
    # A workdir under ~/ or $HOME/ is left for the VM's shell to expand.
    if [[ "$workdir" =~ ^(~|\$HOME)/(.*)$ ]]; then
      remote_workdir="--workdir=\$HOME/$(quote "${BASH_REMATCH[2]}")"
    else
      remote_workdir="$(join --workdir="$workdir")"
    fi
    remote="cd ~/amp_debate && python3 -m amp_debate.sweep $(join --sweep="$sweep" --config="$config") $remote_workdir $(join --only="$i" "${extra[@]}")"
    run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$remote" ||
      die "run $i of $count failed; rerun this command to resume (finished runs are kept)"
  done
  exit 0
fi

array="0-$((count - 1))${max_parallel:+%$max_parallel}"
job="python -m amp_debate.sweep $(join "${sweep_args[@]}") --only=\$SLURM_ARRAY_TASK_ID"
((${#extra[@]})) && job+=" $(join "${extra[@]}")"
sbatch_cmd=(sbatch --array="$array" --job-name="sweep-$(basename "$sweep" .py)" --ntasks=1
            --gpus="$gpus" --cpus-per-task=8 --requeue --signal=TERM@120 --open-mode=append
            --output="$workdir/sweep-%A_%a.out")
[[ -n "$partition" ]] && sbatch_cmd+=(--partition="$partition")
[[ -n "$account" ]] && sbatch_cmd+=(--account="$account")
[[ -n "$time" ]] && sbatch_cmd+=(--time="$time")
sbatch_cmd+=(--wrap="$job")
((DRY_RUN)) || mkdir -p "$workdir"
run "${sbatch_cmd[@]}"
