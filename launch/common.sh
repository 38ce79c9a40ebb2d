# shellcheck shell=bash
# Shared by the launch/*.sh scripts (sourced, not run): argument helpers, the TPU topology table
# (the same as ppow_jax.parallel.sharding.TOPOLOGIES; tests/test_launch.py checks they agree),
# and `run`, which prints each gcloud command and runs it unless --dry-run was given.

set -euo pipefail

DRY_RUN=0
PROJECT=""
ZONE=""
NAME=""
# shellcheck disable=SC2034  # read by the scripts that source this file
REMOTE_DIR="ppow_jax"  # the code's directory on every worker, relative to the login's home

die() {
  echo "error: $*" >&2
  exit 2
}

# quote ARG: ARG as one POSIX shell word (single-quoted unless it is plainly safe).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_all ARGS...: the words joined by spaces, each quoted.
quote_all() {
  local out="" arg
  for arg in "$@"; do
    out+="$(quote "$arg") "
  done
  printf '%s' "${out% }"
}

# run CMD ARGS...: prints "+ CMD ARGS" (quoted, so it can be pasted) and runs it.
run() {
  echo "+ $(quote_all "$@")"
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@"
  fi
}

# need_value FLAG VALUE: a flag's value must be present.
need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"
}

# topology_info NAME: sets ACCELERATOR_TYPE, RUNTIME_VERSION and CHIPS for a named TPU slice.
topology_info() {
  case "$1" in
    v4-8) ACCELERATOR_TYPE=v4-8; RUNTIME_VERSION=tpu-ubuntu2204-base; CHIPS=4 ;;
    v4-32) ACCELERATOR_TYPE=v4-32; RUNTIME_VERSION=tpu-ubuntu2204-base; CHIPS=16 ;;
    v5e-8) ACCELERATOR_TYPE=v5litepod-8; RUNTIME_VERSION=v2-alpha-tpuv5-lite; CHIPS=8 ;;
    v5e-64) ACCELERATOR_TYPE=v5litepod-64; RUNTIME_VERSION=v2-alpha-tpuv5-lite; CHIPS=64 ;;
    v5e-256) ACCELERATOR_TYPE=v5litepod-256; RUNTIME_VERSION=v2-alpha-tpuv5-lite; CHIPS=256 ;;
    v5p-8) ACCELERATOR_TYPE=v5p-8; RUNTIME_VERSION=v2-alpha-tpuv5; CHIPS=4 ;;
    v5p-64) ACCELERATOR_TYPE=v5p-64; RUNTIME_VERSION=v2-alpha-tpuv5; CHIPS=32 ;;
    v5p-128) ACCELERATOR_TYPE=v5p-128; RUNTIME_VERSION=v2-alpha-tpuv5; CHIPS=64 ;;
    v6e-8) ACCELERATOR_TYPE=v6e-8; RUNTIME_VERSION=v2-alpha-tpuv6e; CHIPS=8 ;;
    v6e-64) ACCELERATOR_TYPE=v6e-64; RUNTIME_VERSION=v2-alpha-tpuv6e; CHIPS=64 ;;
    v6e-256) ACCELERATOR_TYPE=v6e-256; RUNTIME_VERSION=v2-alpha-tpuv6e; CHIPS=256 ;;
    *) die "unknown topology '$1' (known: v4-8 v4-32 v5e-8 v5e-64 v5e-256 v5p-8 v5p-64 v5p-128 v6e-8 v6e-64 v6e-256)" ;;
  esac
  export ACCELERATOR_TYPE RUNTIME_VERSION CHIPS
}

# The flags every gcloud tpu-vm command takes.
gcloud_location() {
  LOCATION=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION+=(--project="$PROJECT")
  fi
}

require_name_zone() {
  [[ -n "$NAME" ]] || die "--name is required"
  [[ -n "$ZONE" ]] || die "--zone is required"
}
