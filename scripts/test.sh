#!/usr/bin/env bash
# Set up everything the tests need from nothing, then run them.
#   - DCMTK (the reference peer) from Debian's packages when missing;
#   - a virtualenv in .venv with the project and its test extras.
# Extra arguments are passed to pytest (e.g. scripts/test.sh -k pdu).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v storescu >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq dcmtk >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

# The default run includes a bounded version of the slow soak/fuzz tests in CI.
if [ "${CI:-}" = "true" ]; then
    export SCPFLEET_CI=1
fi
exec .venv/bin/python -m pytest "$@"
