#!/usr/bin/env bash
# Runs `python -m ppow_jax.main ARGS` on every worker of a TPU VM / pod slice at once (one JAX
# process per host; they find each other through jax.distributed.initialize() with no
# arguments, which --config.distributed.num_processes=-1 selects).
#
#   launch/run_tpu.sh --name ppow --zone us-west4-a --topology v5e-8 [--project P]
#       [--detach] [--dry-run] -- --config configs/targets/llama31_8b.py --workdir /mnt/gcs/run ...
#
# Everything after `--` goes to ppow_jax.main, then --config.topology=TOPOLOGY and
# --config.distributed.num_processes=-1. --detach starts it under nohup (log: ~/ppow_jax.log on
# each worker) and returns; --dry-run prints the gcloud command without running it.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

TOPOLOGY=""
DETACH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --topology) need_value "$@"; TOPOLOGY="$2"; shift 2 ;;
    --detach) DETACH=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "error: unknown argument '$1' (ppow_jax.main's arguments go after --)" >&2; usage 2 ;;
  esac
done
require_name_zone
[[ -n "$TOPOLOGY" ]] || die "--topology is required"
topology_info "$TOPOLOGY"
[[ $# -gt 0 ]] || die "no ppow_jax.main arguments after -- (at least --config FILE)"
gcloud_location

main=(.venv/bin/python -m ppow_jax.main "$@" --config.topology="$TOPOLOGY"
      --config.distributed.num_processes=-1)
quoted="$(quote_all "${main[@]}")"
if [[ "$DETACH" == 1 ]]; then
  remote="cd ~/$REMOTE_DIR && nohup $quoted > ~/ppow_jax.log 2>&1 < /dev/null &"
else
  remote="cd ~/$REMOTE_DIR && $quoted"
fi
echo "# $TOPOLOGY: $CHIPS chips; the same command on every worker"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$remote"
