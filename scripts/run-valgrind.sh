#!/bin/sh
# Runs a chosen set of integration tests with every turnout binary under
# valgrind memcheck (TURNOUT_VALGRIND, see tests/integration/fixtures_turnout.py)
# and fails when any valgrind log reports definitely/indirectly lost bytes or
# any error, printing those logs.
#
#   scripts/run-valgrind.sh [test files or pytest args...]
#       default files: $VALGRIND_TESTS (below)
#   VALGRIND_DIR        where the logs go   (default build/valgrind; its *.log removed first)
#   VALGRIND_TIMEOUT_S  bound of the pytest run (default 2400)
#   VALGRIND_PYTEST_ARGS  more pytest arguments; default deselects a test whose
#       hard-coded 3 s bound (restore right after a restart) valgrind's slower
#       worker start misses; it checks timing, not memory
#   TURNOUT_VALGRIND_SLOWDOWN  start/HTTP bounds multiplier (default 5)
#   TURNOUT_VALGRIND_SKIP  binaries run natively (default turnout-executor:
#       under valgrind its sandbox cannot lower RLIMIT_NOFILE's hard limit,
#       valgrind answers EPERM, so every evaluation fails "sandbox setup failed")
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

: "${VALGRIND_TESTS:=tests/integration/test_proxy.py tests/integration/test_lifecycle.py tests/integration/test_rollout.py tests/integration/test_worker.py tests/integration/test_tls_security.py tests/integration/test_worker_edges.py tests/integration/test_one_path.py tests/integration/test_output_edges.py}"
: "${VALGRIND_DIR:=$ROOT/build/valgrind}"
: "${VALGRIND_TIMEOUT_S:=2400}"
: "${VALGRIND_PYTEST_ARGS=--deselect tests/integration/test_worker.py::test_killed_worker_message_restored_by_restart}"
PY=/usr/bin/python3

command -v valgrind >/dev/null 2>&1 || { echo "run-valgrind.sh: FAIL: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
make --no-print-directory all || { echo "run-valgrind.sh: FAIL: make failed" >&2; exit 1; }

mkdir -p "$VALGRIND_DIR" || exit 1
VALGRIND_DIR=$(cd "$VALGRIND_DIR" && pwd)
rm -f "$VALGRIND_DIR"/*.log   # only this run's logs are judged

export TURNOUT_BIN_DIR="$ROOT/build"
export TURNOUT_VALGRIND="$VALGRIND_DIR"
export TURNOUT_VALGRIND_SKIP="${TURNOUT_VALGRIND_SKIP-turnout-executor}"
export PYTHONDONTWRITEBYTECODE=1

if [ "$#" -eq 0 ]; then
    # shellcheck disable=SC2086
    set -- $VALGRIND_TESTS
fi
echo "run-valgrind.sh: logs in $VALGRIND_DIR; native: ${TURNOUT_VALGRIND_SKIP:-none}; pytest bounded to ${VALGRIND_TIMEOUT_S}s: $*"
start=$(date +%s)
# shellcheck disable=SC2086
timeout --kill-after=30 "$VALGRIND_TIMEOUT_S" "$PY" -m pytest -q -p no:cacheprovider $VALGRIND_PYTEST_ARGS "$@"
prc=$?
echo "run-valgrind.sh: pytest exited $prc after $(( $(date +%s) - start ))s"
[ "$prc" -eq 124 ] && echo "run-valgrind.sh: pytest hit the ${VALGRIND_TIMEOUT_S}s bound" >&2

# --- the logs
total=0; bad=0; incomplete=0; badlist=""
for f in "$VALGRIND_DIR"/*.log; do
    [ -e "$f" ] || continue
    total=$((total + 1))
    # a child's log after fork is silent (--child-silent-after-fork), so an
    # empty/short log without a summary is a process killed (SIGKILL) or still running
    if ! grep -q "ERROR SUMMARY:" "$f"; then
        incomplete=$((incomplete + 1))
        echo "run-valgrind.sh: note: no summary (killed?) in $f"
        continue
    fi
    why=$(awk '
        { gsub(",", "") }
        /definitely lost:/ { for (i = 1; i <= NF; i++) if ($i == "lost:" && $(i+1) + 0 > 0) print "definitely lost " $(i+1) " bytes" }
        /indirectly lost:/ { for (i = 1; i <= NF; i++) if ($i == "lost:" && $(i+1) + 0 > 0) print "indirectly lost " $(i+1) " bytes" }
        /ERROR SUMMARY:/   { for (i = 1; i <= NF; i++) if ($i == "SUMMARY:" && $(i+1) + 0 > 0) print $(i+1) " errors" }
    ' "$f" | tr '\n' ';')
    if [ -n "$why" ]; then
        bad=$((bad + 1))
        badlist="$badlist $f"
        echo "run-valgrind.sh: PROBLEM in $f: $why"
    fi
done

for f in $badlist; do
    echo
    echo "=================== $f"
    cat "$f"
done

echo
echo "run-valgrind.sh: $total valgrind logs, $bad with leaks or errors, $incomplete without a summary; pytest rc=$prc"
if [ "$total" -eq 0 ]; then
    echo "run-valgrind.sh: FAIL: no valgrind log was written (is TURNOUT_VALGRIND honoured by the fixtures?)" >&2
    exit 1
fi
if [ "$bad" -gt 0 ]; then
    echo "run-valgrind.sh: FAIL: valgrind found leaks or errors (logs above)" >&2
    exit 1
fi
if [ "$prc" -ne 0 ]; then
    echo "run-valgrind.sh: FAIL: pytest exited $prc under valgrind" >&2
    exit "$prc"
fi
echo "run-valgrind.sh: OK"
exit 0
