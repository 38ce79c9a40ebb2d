#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU VM / pod slice and builds its environment:
# a Python 3.11 venv (uv) with requirements.txt and jax[tpu], optionally a GCS bucket mounted
# with gcsfuse at the same path on every worker (the shared workdir multi-host runs need).
#
#   launch/setup_tpu.sh --name ppow --zone us-west4-a [--project P] [--bucket B]
#       [--mount /mnt/gcs] [--dry-run]
#
# --dry-run prints the gcloud commands without running them.

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

BUCKET=""
MOUNT="/mnt/gcs"
PYTHON_VERSION="3.11"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --bucket) need_value "$@"; BUCKET="$2"; shift 2 ;;
    --mount) need_value "$@"; MOUNT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown argument '$1'" >&2; usage 2 ;;
  esac
done
require_name_zone
gcloud_location

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_VERSION="$(sed -n 's/^jax==\([0-9.]*\).*/\1/p' "$REPO/requirements.txt")"
[[ -n "$JAX_VERSION" ]] || die "no jax==VERSION pin in $REPO/requirements.txt"
ARCHIVE="${TMPDIR:-/tmp}/ppow_jax-$NAME.tar.gz"

# A git checkout: its tracked and untracked-but-not-ignored files; otherwise the tree minus venvs,
# runs and caches.
if [[ "$DRY_RUN" == 0 ]]; then
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
       | tar -czf "$ARCHIVE" --null -T -)
  else
    tar -czf "$ARCHIVE" -C "$REPO" --exclude=.git --exclude=.venv --exclude=venv --exclude=runs \
      --exclude=__pycache__ --exclude=.pytest_cache .
  fi
fi
echo "# $ARCHIVE: this checkout ($REPO), for every worker"

run gcloud compute tpus tpu-vm scp "$ARCHIVE" "$NAME:ppow_jax.tar.gz" --worker=all \
  "${LOCATION[@]}"

setup="set -euo pipefail
mkdir -p ~/$REMOTE_DIR && tar -xzf ~/ppow_jax.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
export PATH=\$HOME/.local/bin:\$PATH
[[ -x .venv/bin/python ]] || uv venv --python $PYTHON_VERSION .venv
uv pip install --python .venv/bin/python -q -r requirements.txt 'jax[tpu]==$JAX_VERSION'
.venv/bin/python -c 'import jax; print(jax.__version__, jax.local_device_count(), jax.local_devices()[0].device_kind)'"
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$setup"

if [[ -n "$BUCKET" ]]; then
  mount="set -euo pipefail
if ! command -v gcsfuse >/dev/null; then
  echo 'deb https://packages.cloud.google.com/apt gcsfuse-jammy main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc
  sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
fi
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT"
  run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${LOCATION[@]}" --command="$mount"
fi
