#!/usr/bin/env bash
# Creates a TPU VM (single host) or pod slice (many hosts) for ppow_jax.
#
#   launch/create_tpu.sh --name ppow --zone us-west4-a --topology v5e-8 [--project P]
#       [--spot] [--queued] [--dry-run]
#
# --queued asks through the queued-resources API (waits for capacity, then until ACTIVE);
# otherwise `gcloud compute tpus tpu-vm create` (fails at once when the zone has none).
# --dry-run prints the gcloud commands without running them.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

TOPOLOGY=""
SPOT=0
QUEUED=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --topology) need_value "$@"; TOPOLOGY="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
require_name_zone
[[ -n "$TOPOLOGY" ]] || die "--topology is required"
topology_info "$TOPOLOGY"
gcloud_location

echo "# $TOPOLOGY: $ACCELERATOR_TYPE ($CHIPS chips), runtime $RUNTIME_VERSION"
if [[ "$QUEUED" == 1 ]]; then
  args=(gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" "${LOCATION[@]}"
        --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    args+=(--spot)
  fi
  run "${args[@]}"
  run gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
    --format="value(state.state)"
  if [[ "$DRY_RUN" == 0 ]]; then
    until [[ "$(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
                --format="value(state.state)")" == ACTIVE ]]; do
      echo "waiting for $NAME to become ACTIVE..."
      sleep 30
    done
  fi
else
  args=(gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}"
        --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    args+=(--spot)
  fi
  run "${args[@]}"
fi
