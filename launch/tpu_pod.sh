#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: every worker VM runs the same command with
# --config.distributed=True, the workdir lives on a Cloud Storage bucket, and a preempted or
# failed run is relaunched (the trainer resumes from the bucket's latest checkpoint).
#
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator=v5p-32 \
#       --config=experiments/configs/default.py:task=permutation \
#       --workdir=gs://BUCKET/runs/permutation [--runtime=VERSION] [--project=PROJECT] [--spot]
#       [--reuse] [--max_restarts=3] [--dry-run] [-- EXTRA TRAINER ARGS...]
#
# Required: --name, --zone, --config, --workdir (gs://BUCKET/PATH); --accelerator unless --reuse.
# Options:
#   --runtime=VERSION   TPU VM software version (default tpu-ubuntu2204-base; v5e wants
#                       v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
#   --spot              create a Spot TPU VM (cheaper, preemptible; relaunch recreates it)
#   --reuse             never create or delete the VM: it must exist (e.g. made by hand or with
#                       queued resources); a preempted VM then ends the script
#   --max_restarts=N    relaunches after a preemption or failure (default 3)
#   --dry-run           print every command (gcloud, tar, the remote ones) and run nothing
#   -- ARGS             extra arguments for python -m amp_debate.main (e.g. --config.num_steps=1000)
#
# What it runs (each printed with "+ " first):
#   1. gcloud compute tpus tpu-vm describe NAME: does the VM exist? If not (and no --reuse):
#      gcloud compute tpus tpu-vm create NAME --accelerator-type=... --version=... [--spot]
#   2. Installs the code on every worker: the committed tree (git archive HEAD, so uncommitted
#      edits are not shipped) is copied with `tpu-vm scp --worker=all`, unpacked to ~/amp_debate
#      and installed with pip install -e "$HOME/amp_debate[tpu]" (jax[tpu]); no git access or package
#      index entry for amp_debate is needed on the VMs, only PyPI for the dependencies.
#   3. Mounts the bucket on every worker with gcsfuse at ~/gcs/BUCKET (installed from Google's
#      apt repository if missing). The trainer writes metrics and results with ordinary file I/O,
#      so it is given the mounted path ~/gcs/BUCKET/PATH, not the gs:// URL.
#   4. Runs, on all workers at once (tpu-vm ssh --worker=all):
#        cd ~/amp_debate && python -m amp_debate.main --config=... --workdir=~/gcs/BUCKET/PATH \
#            --config.distributed=True ARGS
#      On a TPU VM jax.distributed.initialize() detects the slice's workers by itself
#      (amp_debate.train.trainer.initialize_distributed calls it with no arguments).
#   5. Relaunch loop: the run is done when gs://BUCKET/PATH/results.md exists (the trainer writes
#      it at the end; a SIGTERM'd run saves a checkpoint, exits 0 and writes none). Otherwise the
#      VM's state is read (describe): PREEMPTED/TERMINATED -> delete, recreate, reinstall (not
#      with --reuse); then the same run command again, up to --max_restarts times.
# Needs gcloud (authenticated, with a default project or --project) unless --dry-run.
set -euo pipefail
PROG=launch/tpu_pod.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# shellcheck source=launch/common.sh
source "$HERE/common.sh"

name="" zone="" accelerator="" runtime="tpu-ubuntu2204-base" project="" config="" workdir=""
spot=0 reuse=0 max_restarts=3 DRY_RUN=0
extra=()
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --runtime=*) runtime="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --max_restarts=*) max_restarts="${1#*=}" ;;
    --spot) spot=1 ;;
    --reuse) reuse=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage_of "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown option $1 (trainer arguments go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$name" ]] || die "--name=NAME (the TPU VM) is required"
[[ -n "$zone" ]] || die "--zone=ZONE is required"
[[ -n "$config" ]] || die "--config=FILE.py[:ARGS] is required"
[[ -n "$workdir" ]] || die "--workdir=gs://BUCKET/PATH is required"
[[ "$workdir" =~ ^gs://([^/]+)(/.*)?$ ]] || die "--workdir must be gs://BUCKET/PATH, got $workdir"
bucket="${BASH_REMATCH[1]}"
path="${BASH_REMATCH[2]#/}"
[[ "$bucket$path" =~ ^[A-Za-z0-9_./-]*$ ]] || die "--workdir: use only letters, digits and _ . / - in $workdir"
((reuse)) || [[ -n "$accelerator" ]] || die "--accelerator=TYPE (e.g. v5p-32) is required unless --reuse"
[[ "$max_restarts" =~ ^[0-9]+$ ]] || die "--max_restarts must be a non-negative integer, got $max_restarts"
need_binary gcloud
need_binary git

mount="\$HOME/gcs/$bucket"  # $HOME expanded by the workers' shell
run_workdir="$mount${path:+/$path}"
where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")
tpu=(gcloud compute tpus tpu-vm)
archive="${TMPDIR:-/tmp}/amp_debate-$$.tar.gz"

# The remote commands, run on every worker (each one a shell command line).
install_cmd="rm -rf ~/amp_debate && mkdir -p ~/amp_debate && tar -xzf ~/amp_debate.tar.gz -C ~/amp_debate && python3 -m pip install -q -e \"\$HOME/amp_debate[tpu]\""
gcsfuse_cmd="command -v gcsfuse >/dev/null || { echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list && curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; }"
mount_cmd="mkdir -p $mount && { mountpoint -q $mount || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(quote "$bucket") $mount; } && mkdir -p $run_workdir"
train_cmd="cd ~/amp_debate && python3 -m amp_debate.main $(join --config="$config") --workdir=$run_workdir --config.distributed=True"
((${#extra[@]})) && train_cmd+=" $(join "${extra[@]}")"

vm_state() {  # the VM's state (READY, PREEMPTED, ...), or NONE when it does not exist
  # (under --dry-run: NONE, and the caller prints the command with describe_line)
  if ((DRY_RUN)); then
    echo NONE
  else
    "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null || echo NONE
  fi
}

describe_line() {
  echo "+ $(join "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)')"
}

create_vm() {
  local create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator"
                --version="$runtime")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
}

on_all_workers() {  # COMMAND_LINE: runs it on every worker of the slice
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$1"
}

install() {
  run git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
  run "${tpu[@]}" scp "$archive" "$name:~/amp_debate.tar.gz" "${where[@]}" --worker=all
  on_all_workers "$install_cmd"
  on_all_workers "$gcsfuse_cmd"
  on_all_workers "$mount_cmd"
}

finished() {  # whether the run wrote its final results.md
  if ((DRY_RUN)); then
    echo "+ $(join gcloud storage ls "$workdir/results.md")"
    return 1
  fi
  gcloud storage ls "$workdir/results.md" >/dev/null 2>&1
}

prepare() {  # makes sure the VM exists (creating it if allowed) and has the code and the mount
  local state
  describe_line
  state="$(vm_state)"
  if ((reuse)); then
    [[ "$state" == READY ]] || ((DRY_RUN)) || die "--reuse: TPU VM $name is $state, not READY"
  elif [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    create_vm
  elif [[ "$state" == NONE ]]; then
    create_vm
  fi
  install
}

prepare
restarts=0
while true; do
  status=0
  on_all_workers "$train_cmd" || status=$?
  if finished; then
    echo "${PROG}: done: $workdir/results.md"
    exit 0
  fi
  if ((DRY_RUN)); then
    echo "# not finished (exit code or preemption): the VM state is read again, the VM recreated"
    echo "# if preempted (not with --reuse), and the same run command rerun; at most $max_restarts times."
    exit 0
  fi
  if ((restarts >= max_restarts)); then
    die "the run stopped unfinished (last exit code $status) after $restarts restarts"
  fi
  restarts=$((restarts + 1))
  echo "${PROG}: run unfinished (exit code $status); relaunch $restarts of $max_restarts" >&2
  describe_line
  state="$(vm_state)"
  if [[ "$state" != READY ]]; then
    ((reuse)) && die "--reuse: TPU VM $name is $state; recreate it and rerun"
    prepare
  fi
done
