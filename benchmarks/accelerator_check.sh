#!/usr/bin/env bash
# Installs the wheels carried in $WHEELS (default .whl/), if any, into $SITE (default /tmp/site), then runs benchmarks/accelerator_check.py with these arguments under $PYTHON (default python3). See benchmarks/README.md.
w="${WHEELS:-.whl}"; s="${SITE:-/tmp/site}"; py="${PYTHON:-python3}"; if compgen -G "$w/*.whl" >/dev/null; then "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$s" "$w"/*.whl || exit; export PYTHONPATH="$s${PYTHONPATH:+:$PYTHONPATH}"; fi; exec "$py" "$(dirname "$0")/accelerator_check.py" "$@"
