#!/usr/bin/env bash
# Run NPROC cooperating processes of one multi-process lbt job on THIS machine,
# each with DEVICES_PER_PROC simulated CPU devices; collectives go over gloo.
# This is how multi-host code paths are exercised without a cluster.
#
# Usage:
#   launch/local.sh NPROC DEVICES_PER_PROC -- COMMAND [ARGS...]
#   launch/local.sh 2 4 -- lbt train --config configs/digits.py --workdir /tmp/lbt-run
#
# Every process gets:
#   LBT_COORDINATOR_ADDRESS=127.0.0.1:<free port>   (process 0 hosts the coordinator)
#   LBT_NUM_PROCESSES=NPROC   LBT_PROCESS_ID=0..NPROC-1
#   LBT_NUM_CPU_DEVICES=DEVICES_PER_PROC  and  JAX_NUM_CPU_DEVICES=DEVICES_PER_PROC
#   JAX_PLATFORMS=cpu (unless JAX_PLATFORMS is already set)   PYTHONUNBUFFERED=1
# Output lines are prefixed with "[pI] ". The script waits for all processes;
# as soon as one fails, it stops the others and exits with that process's
# status (124 means the time limit was hit).
#
# Optional environment:
#   LBT_LOCAL_TIMEOUT   time limit per process, `timeout` syntax (default 3600s)
#   LBT_LOCAL_PORT      coordinator port (default: a free port picked here)
#   LBT_LOCAL_GRACE     seconds between SIGTERM and SIGKILL when stopping the others (default 10)
#   PYTHON              interpreter used to pick the port (default python3)
set -euo pipefail

usage() {
  echo "usage: $0 NPROC DEVICES_PER_PROC -- COMMAND [ARGS...]" >&2
  exit 2
}

[[ $# -ge 4 ]] || usage
NPROC=$1
DEVICES=$2
[[ $3 == "--" ]] || usage
shift 3
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || { echo "$0: NPROC must be a positive integer, got '$NPROC'" >&2; exit 2; }
[[ $DEVICES =~ ^[1-9][0-9]*$ ]] || { echo "$0: DEVICES_PER_PROC must be a positive integer, got '$DEVICES'" >&2; exit 2; }

TIME_LIMIT=${LBT_LOCAL_TIMEOUT:-3600s}
GRACE=${LBT_LOCAL_GRACE:-10}
PORT=${LBT_LOCAL_PORT:-$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local t alive
  for ((t = 0; t < GRACE * 10; t++)); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM

echo "[local.sh] $NPROC processes x $DEVICES CPU devices, coordinator 127.0.0.1:$PORT, limit $TIME_LIMIT" >&2
for ((i = 0; i < NPROC; i++)); do
  # `timeout` runs the command in its own process group and forwards signals to it.
  LBT_COORDINATOR_ADDRESS="127.0.0.1:$PORT" \
  LBT_NUM_PROCESSES="$NPROC" \
  LBT_PROCESS_ID="$i" \
  LBT_NUM_CPU_DEVICES="$DEVICES" \
  JAX_NUM_CPU_DEVICES="$DEVICES" \
  JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" \
  PYTHONUNBUFFERED=1 \
    timeout --kill-after=10s "$TIME_LIMIT" "$@" \
      > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  PIDS+=($!)
done

STATUS=0
remaining=$NPROC
FINISHED=()  # FINISHED[i]=1 once process i has been reaped
while ((remaining > 0)); do
  for i in "${!PIDS[@]}"; do
    [[ -n ${FINISHED[i]:-} ]] && continue
    pid=${PIDS[$i]}
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" || rc=$?
      FINISHED[i]=1
      remaining=$((remaining - 1))
      if ((rc != 0)); then
        echo "[local.sh] process $i exited with status $rc; stopping the others" >&2
        if ((STATUS == 0)); then STATUS=$rc; fi
      fi
    fi
  done
  if ((STATUS != 0)); then
    cleanup
    wait || true
    break
  fi
  if ((remaining > 0)); then sleep 0.2; fi
done
wait 2>/dev/null || true  # let the log prefixers flush
if ((STATUS == 0)); then
  echo "[local.sh] all $NPROC processes finished" >&2
fi
exit "$STATUS"
