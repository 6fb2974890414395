#!/usr/bin/env bash
# Set up everything the tests need from nothing, then run them.
#   - a C compiler and Python's headers (the install builds storage._speedups, whose
#     tests compare it with the pure-Python walk),
#   - DCMTK (the reference peer), PostgreSQL 15 (the shared index's tests start their own
#     server from its binaries) and HAProxy (the cluster tests' balancer) from Debian's
#     packages when missing; their system services are neither started nor enabled;
#   - a virtualenv in .venv with the project and its test extras.
# Extra arguments are passed to pytest (e.g. scripts/test.sh -k pdu).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
"$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=(python3-dev)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql-15)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" = "0" ] || sudo=(sudo)
    # policy-rc.d exit 101 (unless one is there already): the packages' services are not
    # started by the install...
    policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        "${sudo[@]}" sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
        policy=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ "$policy" = "0" ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    # ... nor started at boot.
    for service in postgresql haproxy; do
        if [ -e "/etc/init.d/$service" ]; then
            "${sudo[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi

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
