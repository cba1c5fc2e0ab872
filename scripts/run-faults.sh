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

if [ "$TURNOUT_SOAK" = "1" ]; then form="long (soak)"; else form="short"; fi
echo "run-faults.sh: $form form"
# the same checks of tools and binaries as the integration tests
TURNOUT_PYTEST_PATHS=tests/faults exec "$ROOT/scripts/run-pytest.sh" -rxXfE --durations=10 "$@"
