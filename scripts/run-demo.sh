#!/usr/bin/env bash
# make run: the whole demo on loopback — redis-server (AOF on, own temp dir),
# turnout-executor, turnout-legacyd (pulling into the executor),
# turnout-worker and turnout-proxy with a 50/50 split.  Ctrl-C stops it all.
# Ports can be moved with DEMO_PROXY_PORT, DEMO_LEGACY_PORT, DEMO_REDIS_PORT,
# DEMO_EXECUTOR_PORT, DEMO_WORKER_PORT.  `make run LEGACY=rq` (DEMO_LEGACY=rq)
# puts RQ on the legacy side instead: a real `rq worker` (Debian's python3-rq)
# running legacyd/rq/tasks.py, on db 2 of the same redis-server.
set -euo pipefail

BUILD=${1:-build}
PROXY_PORT=${DEMO_PROXY_PORT:-8080}
LEGACY_PORT=${DEMO_LEGACY_PORT:-8081}
REDIS_PORT=${DEMO_REDIS_PORT:-6390}
EXECUTOR_PORT=${DEMO_EXECUTOR_PORT:-8083}
WORKER_PORT=${DEMO_WORKER_PORT:-9808}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/turnout-demo.XXXXXX")
pids=()

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PROXY_PORT" "$LEGACY_PORT" "$REDIS_PORT" "$EXECUTOR_PORT" "$WORKER_PORT"; do
    if port_busy "$p"; then
        echo "run: port $p on 127.0.0.1 is in use; pick others with DEMO_*_PORT (see scripts/run-demo.sh)" >&2
        exit 1
    fi
done

stop() {
    trap - INT TERM EXIT
    echo
    echo "run: stopping"
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap stop INT TERM EXIT

wait_for() { # name url-or-port
    for _ in $(seq 1 100); do
        if [[ $2 == http* ]]; then curl -fs -o /dev/null "$2" && return 0
        else port_busy "$2" && return 0; fi
        sleep 0.05
    done
    echo "run: $1 did not start; its log is in $DIR" >&2
    exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DIR" --appendonly yes \
    --save "" --daemonize no --logfile "$DIR/redis.log" &
pids+=($!)
wait_for redis-server "$REDIS_PORT"

EXECUTOR_LISTEN=127.0.0.1:$EXECUTOR_PORT EXECUTOR_MAX_CONCURRENT=4 \
    "$BUILD/turnout-executor" 2>"$DIR/executor.log" &
pids+=($!)
wait_for turnout-executor "http://127.0.0.1:$EXECUTOR_PORT/health"

LEGACY=${DEMO_LEGACY:-http}
case "$LEGACY" in
http)
    LEGACYD_LISTEN=127.0.0.1:$LEGACY_PORT EXECUTOR_SERVICE_URL=http://127.0.0.1:$EXECUTOR_PORT \
        "$BUILD/turnout-legacyd" 2>"$DIR/legacyd.log" &
    pids+=($!)
    wait_for turnout-legacyd "http://127.0.0.1:$LEGACY_PORT/health"
    LEGACY_ENV=(LEGACY_QUEUE_URL=http://127.0.0.1:$LEGACY_PORT)
    LEGACY_SAYS="legacy     http://127.0.0.1:$LEGACY_PORT        (turnout-legacyd: GET /status, GET /tasks/<eval_id>)"
    LEGACY_TRY="curl -s http://127.0.0.1:$LEGACY_PORT/tasks/<a legacy eval_id>"
    ;;
rq)
    RQ_URL=redis://127.0.0.1:$REDIS_PORT/2
    RQ_CMD="/usr/bin/python3 -m rq.cli worker -u $RQ_URL --path $(pwd)/legacyd/rq -n turnout-demo-rq high default low"
    EXECUTOR_SERVICE_URL=http://127.0.0.1:$EXECUTOR_PORT $RQ_CMD >"$DIR/rq.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        redis-cli -p "$REDIS_PORT" -n 2 SMEMBERS rq:workers 2>/dev/null | grep -q turnout-demo-rq && break
        sleep 0.1
    done
    LEGACY_ENV=(LEGACY_BACKEND=rq LEGACY_RQ_URL=$RQ_URL)
    LEGACY_SAYS="legacy     $RQ_URL      (RQ, worker started as: $RQ_CMD)"
    LEGACY_TRY="redis-cli -p $REDIS_PORT -n 2 HGETALL rq:job:<a legacy eval_id>"
    ;;
*)
    echo "run: LEGACY=$LEGACY: must be http (turnout-legacyd) or rq (a real rq worker)" >&2
    exit 2
    ;;
esac

CELERY_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0 \
EXECUTOR_SERVICE_URL=http://127.0.0.1:$EXECUTOR_PORT \
WORKER_METRICS_LISTEN=127.0.0.1:$WORKER_PORT WORKER_NAME=turnout-demo \
    "$BUILD/turnout-worker" 2>"$DIR/worker.log" &
pids+=($!)
wait_for turnout-worker "http://127.0.0.1:$WORKER_PORT/healthz"

# a fresh admin token each run, for the rollout and canary commands below
ADMIN_TOKEN=${DEMO_ADMIN_TOKEN:-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')}

PROXY_LISTEN=127.0.0.1:$PROXY_PORT \
CELERY_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0 \
ADMIN_TOKEN=$ADMIN_TOKEN ROLLOUT_STEPS=0.1,0.5,1.0 ROLLOUT_STEP_INTERVAL_S=60 GATE_MIN_SAMPLES=20 \
SHADOW_PERCENTAGE=0.1 \
CELERY_ENABLED=true CELERY_PERCENTAGE=0.5 \
    env "${LEGACY_ENV[@]}" "$BUILD/turnout-proxy" 2>"$DIR/proxy.log" &
pids+=($!)
wait_for turnout-proxy "http://127.0.0.1:$PROXY_PORT/healthz"

# A first batch, so both paths have finished work to show in /metrics.
items=$(for i in $(seq 1 20); do printf '%s{"eval_id":"demo-%s","code":"print(%s*%s)","priority":"default"}' \
    "$([ "$i" -gt 1 ] && echo ,)" "$i" "$i" "$i"; done)
curl -fs -o /dev/null -X POST "http://127.0.0.1:$PROXY_PORT/api/eval-batch" \
    -H 'Content-Type: application/json' -d "{\"evaluations\":[$items]}" \
    || echo "run: the first batch was refused; see $DIR/proxy.log" >&2

# A gentle stream (one submission every 2 s, one in eight failing) so the
# page and /metrics always have something live to show.
(
    i=0
    while sleep 2; do
        i=$((i + 1))
        code="print($i)"
        [ $((i % 8)) -eq 0 ] && code="raise SystemExit(3)"
        curl -fs -o /dev/null -X POST "http://127.0.0.1:$PROXY_PORT/api/eval" \
            -H 'Content-Type: application/json' -d "{\"code\": \"$code\"}" || true
    done
) &
pids+=($!)

cat <<MSG

turnout demo is running (50 % of submissions on the new queue):
  dashboard  http://127.0.0.1:$PROXY_PORT/dashboard   (live: a submission every 2 s is sent for you)
  proxy      http://127.0.0.1:$PROXY_PORT        (POST /api/eval, /metrics, /readyz, /api/stats)
  $LEGACY_SAYS
  executor   http://127.0.0.1:$EXECUTOR_PORT        (turnout-executor: GET /capacity)
  worker     http://127.0.0.1:$WORKER_PORT/metrics (turnout-worker)
  redis      redis://127.0.0.1:$REDIS_PORT/0      (queue lists: evaluation, evaluation\\x06\\x163, ...)
  logs       $DIR/*.log

Try:
  curl -s -X POST http://127.0.0.1:$PROXY_PORT/api/eval \\
       -H 'Content-Type: application/json' -d '{"code": "print(6*7)", "priority": "high"}'
  curl -s http://127.0.0.1:$PROXY_PORT/api/eval-status/demo-1     # either path, one shape
  curl -s http://127.0.0.1:$PROXY_PORT/api/queue-status
  # 20 demo evals were sent at start: both paths' completions, side by side
  curl -s http://127.0.0.1:$PROXY_PORT/metrics | grep -E 'turnout_(routing_decisions|evals_completed)_total'
  # rollout without restarts (admin token of this run: $ADMIN_TOKEN)
  curl -s http://127.0.0.1:$PROXY_PORT/admin/rollout
  curl -s -X PUT http://127.0.0.1:$PROXY_PORT/admin/rollout -H 'Authorization: Bearer $ADMIN_TOKEN' \\
       -H 'Content-Type: application/json' -d '{"percentage": 0.25, "reason": "demo"}'
  curl -s -X POST http://127.0.0.1:$PROXY_PORT/admin/canary/start -H 'Authorization: Bearer $ADMIN_TOKEN'
  curl -s http://127.0.0.1:$PROXY_PORT/admin/shadow/mismatches -H 'Authorization: Bearer $ADMIN_TOKEN'   # 10 % shadowed; outputs need a token
  # new path: the result Celery-style;  legacy path: the Queue Service's record
  redis-cli -p $REDIS_PORT GET celery-task-meta-celery-demo-1
  $LEGACY_TRY

Ctrl-C stops everything.
MSG

# Any child that dies ends the demo, so a broken part is never hidden.
wait -n "${pids[@]}" || true
echo "run: a process exited; see the logs above" >&2
