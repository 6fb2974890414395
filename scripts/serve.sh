#!/usr/bin/env bash
# Set up scpfleet in .venv (first run only) and start the storage node with its embedded
# defaults: port 11112, AE title SCPFLEET, storage ./archive, one worker per CPU,
# durability fsync. Extra arguments go to `scpfleet serve` (see `scpfleet serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/scpfleet ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[metrics,postgresql]'
fi
exec .venv/bin/scpfleet serve "$@"
