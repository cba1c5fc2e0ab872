#!/bin/sh
# Runs turnout's fault and load tests (tests/faults/) against the real
# binaries in $TURNOUT_BIN_DIR (default <repo>/build).
#   scripts/run-faults.sh [--soak] [pytest args...]     e.g. -k redis -x
# Short form by default (the whole directory well under 90 s on two cores);
# --soak sets TURNOUT_SOAK=1: every test in its long form (more submissions,
# kills, outages and time; several minutes).
# Fails loudly when a tool the tests need is missing; never skips.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
: "${TURNOUT_BIN_DIR:=$ROOT/build}"
export TURNOUT_BIN_DIR
export PYTHONDONTWRITEBYTECODE=1   # keep __pycache__ out of the tree

if [ "${1:-}" = "--soak" ]; then
    shift
    TURNOUT_SOAK=1
else
    TURNOUT_SOAK=${TURNOUT_SOAK:-0}
fi
export TURNOUT_SOAK

# Debian's python: another python3 may come first on PATH without the packages.
PY=/usr/bin/python3
missing=""
if [ ! -x "$PY" ]; then
    missing="$missing python3(/usr/bin/python3)"
else
    "$PY" -c 'import pytest' 2>/dev/null || missing="$missing python3-pytest"
    "$PY" -c 'import requests' 2>/dev/null || missing="$missing python3-requests"
    "$PY" -c 'import redis' 2>/dev/null || missing="$missing python3-redis"
fi
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ -n "$missing" ]; then
    echo "run-faults.sh: FAIL: missing Debian packages:$missing" >&2
    echo "run-faults.sh: install them with: make deps   (or scripts/deps.sh install)" >&2
    exit 1
fi
for b in turnout-proxy turnout-legacyd turnout-worker turnout-executor; do
    if [ ! -x "$TURNOUT_BIN_DIR/$b" ]; then
        echo "run-faults.sh: FAIL: $TURNOUT_BIN_DIR/$b is missing: run make first" >&2
        exit 1
    fi
done

if [ "$TURNOUT_SOAK" = "1" ]; then form="long (soak)"; else form="short"; fi
echo "run-faults.sh: binaries from $TURNOUT_BIN_DIR, $form form"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider -rxXfE --durations=10 tests/faults "$@"
rc=$?
echo "run-faults.sh: $(( $(date +%s) - start )) s"
if [ "$rc" -eq 5 ]; then
    echo "run-faults.sh: FAIL: pytest collected no tests (exit 5)" >&2
    exit 5
fi
if [ "$rc" -ne 0 ]; then
    echo "run-faults.sh: FAIL: pytest exited $rc" >&2
fi
exit "$rc"
