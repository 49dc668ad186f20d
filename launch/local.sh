#!/usr/bin/env bash
# N processes of the same command on this machine, joined by JAX's distributed runtime on 127.0.0.1
# (CPU collectives: gloo). For testing multi-host code paths without a cluster.
#
#   launch/local.sh [-n NUM_PROCESSES] [-p PORT] [-l LOG_DIR] -- python -m ppt_jax.main --config=configs/joint.py
#
# Each process gets PPT_DISTRIBUTED=1, PPT_COORDINATOR_ADDRESS=127.0.0.1:PORT, PPT_NUM_PROCESSES and
# PPT_PROCESS_ID (read by ppt_jax.distributed.maybe_initialize); its output goes to LOG_DIR/process-I.log
# and, prefixed with [I], to this terminal, its PID to LOG_DIR/process-I.pid (to signal one process, as
# a preemption would). If one process fails the others are stopped; the exit status is the first
# non-zero one.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

num=2
port=""
log_dir="runs/launch-logs"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) num="$2"; shift 2 ;;
    -p) port="$2"; shift 2 ;;
    -l) log_dir="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "local.sh: no command given after --" >&2; usage; }
[[ "$num" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: -n must be a positive integer, got '$num'" >&2; exit 2; }
if [[ -z "$port" ]]; then
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
mkdir -p "$log_dir"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM

for ((i = 0; i < num; i++)); do
  PPT_DISTRIBUTED=1 PPT_COORDINATOR_ADDRESS="127.0.0.1:$port" PPT_NUM_PROCESSES="$num" \
    PPT_PROCESS_ID="$i" "$@" > >(tee "$log_dir/process-$i.log" | sed -u "s/^/[$i] /") 2>&1 &
  pids+=("$!")
  echo "$!" > "$log_dir/process-$i.pid"
done

status=0
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  done_pid=""
  set +e
  wait -n -p done_pid "${remaining[@]}"
  rc=$?
  set -e
  if [[ -z "$done_pid" ]]; then
    # bash already reaped one of them ("no such job"): wait for the rest one by one; 127 = unknown pid
    for pid in "${remaining[@]}"; do
      set +e; wait "$pid"; rc=$?; set -e
      if [[ $rc -ne 0 && $rc -ne 127 && $status -eq 0 ]]; then status=$rc; fi
    done
    break
  fi
  next=()
  for pid in "${remaining[@]}"; do [[ "$pid" == "$done_pid" ]] || next+=("$pid"); done
  remaining=("${next[@]+"${next[@]}"}")
  if [[ $rc -ne 0 ]]; then
    status=$rc
    echo "local.sh: a process exited with status $rc; stopping the others (logs in $log_dir)" >&2
    pids=("${remaining[@]+"${remaining[@]}"}")
    stop_all
    wait || true
    break
  fi
done
exit "$status"
