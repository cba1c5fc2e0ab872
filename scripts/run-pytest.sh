#!/bin/sh
# Runs turnout's Python integration and interop tests (real redis-server, real
# Celery worker, real binaries from $TURNOUT_BIN_DIR, default <repo>/build).
#   scripts/run-pytest.sh [pytest args...]      e.g. -k redis -x
# Fails loudly when a tool the tests need is missing; never skips.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
: "${TURNOUT_BIN_DIR:=$ROOT/build}"
export TURNOUT_BIN_DIR
export PYTHONDONTWRITEBYTECODE=1   # keep __pycache__ out of the tree

# Debian's python: another python3 may come first on PATH without the packages.
PY=/usr/bin/python3
missing=""
if [ ! -x "$PY" ]; then
    missing="$missing python3(/usr/bin/python3)"
else
    "$PY" -c 'import pytest' 2>/dev/null || missing="$missing python3-pytest"
    "$PY" -c 'import requests' 2>/dev/null || missing="$missing python3-requests"
    "$PY" -c 'import redis' 2>/dev/null || missing="$missing python3-redis"
    "$PY" -m celery --version >/dev/null 2>&1 || missing="$missing python3-celery"
    "$PY" -c 'import yaml' 2>/dev/null || missing="$missing python3-yaml"
    "$PY" -c 'import selenium' 2>/dev/null || missing="$missing python3-selenium"
fi
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
[ -x /usr/bin/prometheus ] || missing="$missing prometheus"
command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || missing="$missing prometheus(promtool)"
if [ -n "$missing" ]; then
    echo "run-pytest.sh: FAIL: missing Debian packages:$missing" >&2
    echo "run-pytest.sh: install them with: make deps   (or scripts/deps.sh install)" >&2
    exit 1
fi
for b in turnout-proxy turnout-legacyd turnout-worker turnout-executor; do
    if [ ! -x "$TURNOUT_BIN_DIR/$b" ]; then
        echo "run-pytest.sh: FAIL: $TURNOUT_BIN_DIR/$b is missing: run make first" >&2
        exit 1
    fi
done

# TURNOUT_PYTEST_PATHS: what to run (scripts/run-faults.sh runs tests/faults)
: "${TURNOUT_PYTEST_PATHS:=tests/integration tests/interop}"
echo "run-pytest.sh: binaries from $TURNOUT_BIN_DIR"
# shellcheck disable=SC2086
"$PY" -m pytest -q -p no:cacheprovider $TURNOUT_PYTEST_PATHS "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run-pytest.sh: FAIL: pytest collected no tests (exit 5)" >&2
    exit 5
fi
if [ "$rc" -ne 0 ]; then
    echo "run-pytest.sh: FAIL: pytest exited $rc" >&2
fi
exit "$rc"
