#!/usr/bin/env bash
# Runs the trainer as N processes on this machine (multi-host on loopback), e.g. to try the
# multi-host code path on a laptop:
#
#   XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
#     launch/local.sh 2 --config=experiments/configs/default.py:task=permutation,quickstart \
#     --workdir=workdir/two_processes
#
# Every process gets JAX_COORDINATOR_ADDRESS, AMP_DEBATE_NUM_PROCESSES, AMP_DEBATE_PROCESS_ID and
# --config.distributed=True (amp_debate.train.trainer.initialize_distributed). Process 0 prints
# the progress bar and the table; the others log to <workdir>/process_<i>.log. SIGTERM (or ^C) to
# this script is passed on to every process (each saves at the step they agree on and exits 0);
# the script waits for all of them and exits with the last non-zero exit code, if any.
set -euo pipefail
num="${1:?usage: launch/local.sh NUM_PROCESSES ARGS...}"
shift
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
python="${PYTHON:-python}"
workdir=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir="${arg#--workdir=}" ;; esac
done
mkdir -p "${workdir:-.}"
pids=()
for ((i = num - 1; i >= 0; i--)); do
  if [[ $i -eq 0 ]]; then
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" AMP_DEBATE_NUM_PROCESSES="$num" AMP_DEBATE_PROCESS_ID=0 \
      "$python" -m amp_debate.main "$@" --config.distributed=True &
  else
    JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" AMP_DEBATE_NUM_PROCESSES="$num" AMP_DEBATE_PROCESS_ID="$i" \
      "$python" -m amp_debate.main "$@" --config.distributed=True > "${workdir:-.}/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  # A trapped signal interrupts wait while the processes still run (saving): wait again.
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
  wait "$pid" || status=$?
done
exit "$status"
