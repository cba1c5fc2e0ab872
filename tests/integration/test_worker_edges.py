"""turnout-worker at the edges: poison messages, odd task ids, message and
request size limits, SIGHUP reloads, health under a read-only broker, two
workers under one name, NUL bytes in output, and duration formatting. Real
redis-server, real turnout-executor, real turnout-worker; messages are
LPUSHed by hand (the proxy cannot produce most of them)."""

import base64
import hashlib
import json
import re
import signal
import time
import uuid

import pytest
from fixtures_turnout import QUEUE, SEP, free_port, http_session, msum, mval, wait_until

DEFAULT_LIST = f"{QUEUE}{SEP}3"
TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
WAIT_S = 20.0


def message(eval_id=None, code="print('hi')", task="tasks.evaluate_code", tid=None, args=None,
            body=None, content_type="application/json"):
    """(task id, envelope text) of a Celery protocol v2 message."""
    eval_id = eval_id or f"e-{uuid.uuid4().hex[:12]}"
    tid = tid if tid is not None else f"celery-{eval_id}"
    if body is None:
        a = [eval_id, code, "python"] if args is None else args
        body = base64.b64encode(json.dumps(
            [a, {"timeout": 30}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        ).encode()).decode()
    env = {"body": body, "content-encoding": "utf-8", "content-type": content_type,
           "headers": {"lang": "py", "task": task, "id": tid, "shadow": None, "eta": None, "expires": None,
                       "group": None, "retries": 0, "timelimit": [None, None], "root_id": tid,
                       "parent_id": None, "argsrepr": "", "kwargsrepr": "", "origin": "test@pytest"},
           "properties": {"correlation_id": tid, "delivery_mode": 2,
                          "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 3,
                          "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
    return tid, json.dumps(env)


def result(c, tid):
    raw = c.get(f"celery-task-meta-{tid}")
    return json.loads(raw) if raw is not None else None


def wait_result(c, tid, procs, timeout=WAIT_S):
    def ready():
        rec = result(c, tid)
        return rec if rec and rec.get("status") in TERMINAL else None
    return wait_until(ready, timeout, f"a terminal result for {tid!r:.80}", procs)


def dlq_entry(c, tid):
    raw = c.get(f"turnout:dlq:entry:{tid}")
    return json.loads(raw) if raw is not None else None


def wait_dlq(c, tid, procs, timeout=WAIT_S):
    return wait_until(lambda: dlq_entry(c, tid), timeout, f"DLQ entry of {tid!r:.80}", procs)


def substitute_id(raw_id):
    return "invalid-id-" + hashlib.sha1(raw_id.encode()).hexdigest()


def log_count(w, text):
    return w.log_text().count(text)


def metric(w, name, **labels):
    return mval(w.metrics(), name, **labels) or 0


# --------------------------------------------------------------- 1, 2. poison messages

POISON = {
    # %.100s used to cut this inside a character: the DLQ entry could not be
    # built and the message went back to its queue at once, forever
    "long_utf8_task_name": lambda: message(task="x" + "é" * 300),
    "bad_json": lambda: (None, '{"body": "not json'),
    "bad_base64": lambda: message(body="!!!not base64!!!"),
    # quoted in the error as %.60s: cut inside the first ü
    "wrong_content_type": lambda: message(content_type="x" * 59 + "ü" * 10),
    "args_not_a_list": lambda: message(args={"eval_id": "x"}),
}


@pytest.mark.parametrize("kind", sorted(POISON))
def test_poison_message_dead_lettered_once_and_next_eval_runs(kind, redis_server, executor_factory,
                                                               worker_factory):
    ex = executor_factory()
    w = worker_factory(ex, CELERY_CONCURRENCY=1)
    c = redis_server.client()
    ptid, poison = POISON[kind]()
    good_tid, good = message(code="print('after the poison')")
    # same list, poison first (LPUSH + RPOP: the first pushed is taken first)
    c.lpush(DEFAULT_LIST, poison)
    c.lpush(DEFAULT_LIST, good)
    t0 = time.monotonic()
    rec = wait_result(c, good_tid, [w.mp, ex.mp], timeout=10)
    assert rec["status"] == "SUCCESS" and "after the poison" in rec["result"]["output"], rec
    assert time.monotonic() - t0 < 5, "the eval behind the poison message waited"
    # exactly one DLQ entry, with a reason, and the poison never given back
    wait_until(lambda: c.zcard("turnout:dlq") == 1, 5, "one DLQ entry", [w.mp])
    (dtid,) = [t.decode() for t in c.zrange("turnout:dlq", 0, -1)]
    if ptid is not None:
        assert dtid == ptid
    entry = dlq_entry(c, dtid)
    assert entry and entry["reason"] in ("malformed", "unknown_task"), entry
    assert entry["exception_message"], entry
    assert log_count(w, "dead-lettered") == 1, w.log_text()[-3000:]
    assert "given back" not in w.log_text()
    m = w.metrics()
    assert (mval(m, "turnout_worker_tasks_total", outcome="returned") or 0) == 0
    assert (mval(m, "turnout_worker_tasks_total", outcome="malformed") or 0) + \
        (mval(m, "turnout_worker_tasks_total", outcome="dead_lettered") or 0) == 1
    assert c.hlen("unacked") == 0 and c.llen(DEFAULT_LIST) == 0
    if kind == "long_utf8_task_name":
        # the quoted name is cut at a character boundary, never inside one
        assert "é" in entry["exception_message"] and "\ufffd" not in entry["exception_message"]
        assert result(c, ptid)["status"] == "FAILURE"


# --------------------------------------------------------------- 4. task ids

def test_invalid_ids_refused_under_a_substitute_id(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    c = redis_server.client()
    long_id = "celery-" + "k" * 10240
    ctl_id = "celery-bad\x01id"
    for tid in (long_id, ctl_id):
        c.lpush(DEFAULT_LIST, message(tid=tid)[1])
    for tid in (long_id, ctl_id):
        sub = substitute_id(tid)
        entry = wait_dlq(c, sub, [w.mp, ex.mp])
        assert entry["reason"] == "invalid_id" and entry["exception_class"] == "InvalidTaskId", entry
        assert entry["task_id"] == sub
        assert tid.startswith(entry["original_task_id"]) and len(entry["original_task_id"]) <= 1024, entry
        assert "headers.id" in entry["exception_message"]
    # never run, never stored under a cut id
    assert not c.keys("celery-task-meta-*"), c.keys("celery-task-meta-*")
    assert msum(w.metrics(), "turnout_worker_executor_requests_total", outcome="ok") == 0
    assert c.zcard("turnout:dlq") == 2


def test_id_with_spaces_runs_under_the_exact_id(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    c = redis_server.client()
    tid = "celery-an id with spaces ünd 255 bytes " + "z" * 200
    tid = tid.encode()[:255].decode("utf-8", "ignore")
    c.lpush(DEFAULT_LIST, message(tid=tid, code="print(40 + 2)")[1])
    rec = wait_result(c, tid, [w.mp, ex.mp])
    assert rec["status"] == "SUCCESS" and rec["task_id"] == tid and "42" in rec["result"]["output"], rec


# --------------------------------------------------------------- 3. size limits

def test_oversized_message_dead_lettered_unread(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex, WORKER_MAX_MESSAGE_BYTES=1 << 20, CELERY_CONCURRENCY=1)
    c = redis_server.client()
    big_tid, big = message(code="#" + "x" * (3 << 20))
    good_tid, good = message(code="print('small')")
    c.lpush(DEFAULT_LIST, big)
    c.lpush(DEFAULT_LIST, good)
    assert wait_result(c, good_tid, [w.mp, ex.mp])["status"] == "SUCCESS"
    entry = wait_dlq(c, big_tid, [w.mp])
    assert entry["reason"] == "too_large" and entry["exception_class"] == "MessageTooLarge", \
        {k: v for k, v in entry.items() if k != "message_head"}
    assert entry["message_bytes"] == len(big) and "WORKER_MAX_MESSAGE_BYTES" in entry["exception_message"]
    assert "message" not in entry and len(entry["message_head"]) <= 4096
    # the producer's AsyncResult gets the failure; nothing was executed
    assert result(c, big_tid)["status"] == "FAILURE"
    assert msum(w.metrics(), "turnout_worker_executor_requests_total", outcome="ok") == 1
    assert c.hlen("unacked") == 0 and log_count(w, "dead-lettered") == 1


def test_request_over_the_executor_limit_is_not_retried(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    assert ex.capacity()["max_body_bytes"] == 2 << 20
    w = worker_factory(ex)
    c = redis_server.client()
    tid, msg = message(code="#" + "x" * (5 << 20))   # above evhttp's own ceiling too
    c.lpush(DEFAULT_LIST, msg)
    rec = wait_result(c, tid, [w.mp, ex.mp])
    assert rec["status"] == "FAILURE", rec
    entry = wait_dlq(c, tid, [w.mp])
    assert entry["exception_class"] == "RequestTooLarge" and entry["reason"] == "not_retryable", entry
    assert entry["retries"] == 0 and "bytes" in entry["exception_message"]
    assert metric(w, "turnout_worker_retries_total", policy="network_error") == 0
    assert c.zcard("turnout:schedule") == 0


# --------------------------------------------------------------- 5. SIGHUP

def write_env(path, **kv):
    path.write_text("".join(f"{k}={v}\n" for k, v in kv.items()))


def wait_log(w, text, n, procs):
    return wait_until(lambda: log_count(w, text) >= n, WAIT_S, f"{n} x {text!r} in the worker log", procs)


def test_sighup_storm_during_a_drain(redis_server, executor_factory, worker_factory, tmp_path):
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    envf = tmp_path / "worker.env"
    write_env(envf, CELERY_CONCURRENCY=4)
    w = worker_factory(ex, TURNOUT_ENV_FILE=envf)
    c = redis_server.client()
    tids = []
    for i in range(24):
        tid, msg = message(code=f"import time; time.sleep(0.05); print({i})")
        tids.append(tid)
        c.lpush(DEFAULT_LIST, msg)
    for _ in range(100):
        w.mp._signal(signal.SIGHUP)
        time.sleep(0.002)
    for tid in tids:
        assert wait_result(c, tid, [w.mp, ex.mp])["status"] == "SUCCESS"
    assert w.running(), w.describe()
    wait_log(w, "msg=reloaded", 1, [w.mp])
    m = w.metrics()
    assert mval(m, "turnout_worker_tasks_total", outcome="completed") == len(tids)
    assert (mval(m, "turnout_worker_tasks_total", outcome="duplicate") or 0) == 0
    assert mval(m, "turnout_worker_reloads_total", outcome="ok") >= 1
    assert c.hlen("unacked") == 0


def test_reload_changes_live_settings_and_keeps_them_on_a_bad_file(redis_server, executor_factory,
                                                                     worker_factory, tmp_path):
    ex = executor_factory()
    envf = tmp_path / "worker.env"
    write_env(envf, RESULT_EXPIRES_S=1000)
    w = worker_factory(ex, TURNOUT_ENV_FILE=envf)
    c = redis_server.client()

    def run_one():
        tid, msg = message()
        c.lpush(DEFAULT_LIST, msg)
        wait_result(c, tid, [w.mp, ex.mp])
        return c.ttl(f"celery-task-meta-{tid}")

    assert 900 < run_one() <= 1000
    write_env(envf, RESULT_EXPIRES_S=500, CELERY_QUEUES="elsewhere")
    w.mp._signal(signal.SIGHUP)
    wait_log(w, "msg=reloaded", 1, [w.mp])
    assert "need a restart" in w.log_text() and "CELERY_QUEUES" in w.log_text()
    assert 400 < run_one() <= 500          # live; and still consuming the old queue
    write_env(envf, RESULT_EXPIRES_S="soon")
    w.mp._signal(signal.SIGHUP)
    wait_log(w, "reload failed, keeping the old settings", 1, [w.mp])
    assert "RESULT_EXPIRES_S" in w.log_text()
    assert 400 < run_one() <= 500
    assert metric(w, "turnout_worker_reloads_total", outcome="error") == 1


# --------------------------------------------------------------- 6. visible failures

def test_healthz_unhealthy_while_takes_fail_on_a_replica(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    c = redis_server.client()
    m = w.metrics()
    for op in ("take", "ack", "dead_letter", "result"):
        assert mval(m, "turnout_worker_broker_errors_total", op=op) == 0, op
    assert w.healthz().status_code == 200
    c.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))   # nobody there: READONLY from now on
    try:
        r = wait_until(lambda: (lambda r: r if r.status_code == 503 else None)(w.healthz()), WAIT_S,
                       "/healthz 503", [w.mp])
        body = r.json()
        assert body["status"] == "unhealthy" and "READONLY" in body["last_error"], body
        assert metric(w, "turnout_worker_broker_errors_total", op="take") >= 3
    finally:
        c.execute_command("REPLICAOF", "NO", "ONE")
    wait_until(lambda: w.healthz().status_code == 200, WAIT_S, "/healthz 200 again", [w.mp])
    tid, msg = message()
    c.lpush(DEFAULT_LIST, msg)
    assert wait_result(c, tid, [w.mp, ex.mp])["status"] == "SUCCESS"


def test_two_workers_with_one_name_are_warned_about(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w1 = worker_factory(ex)
    wait_until(lambda: redis_server.client().exists(f"turnout:worker:{w1.worker_name}:instance"), WAIT_S,
               "the first worker's instance key", [w1.mp])
    w2 = worker_factory(ex, WORKER_NAME=w1.worker_name)
    wait_log(w2, "another turnout-worker with this WORKER_NAME", 1, [w2.mp])
    assert log_count(w1, "another turnout-worker with this WORKER_NAME") == 0


# --------------------------------------------------------------- 7, 8. output and durations

def test_nul_in_output_is_carried_to_the_result(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    c = redis_server.client()
    tid, msg = message(code="import sys; sys.stdout.write('a\\x00b')")
    c.lpush(DEFAULT_LIST, msg)
    rec = wait_result(c, tid, [w.mp, ex.mp])
    assert rec["status"] == "SUCCESS", rec
    assert rec["result"]["status"] == "completed" and rec["result"]["output"] == "a\x00b", rec
    assert c.zcard("turnout:dlq") == 0


DURATION_RE = re.compile(r'"(?:duration_s|elapsed_s)":\s*(-?[0-9.eE+-]+)')


def test_durations_rounded_to_microseconds(redis_server, executor_factory, worker_factory):
    ex = executor_factory()
    s = http_session()
    r = s.post(ex.url + "/execute", json={"eval_id": "dur-1", "code": "print(1)", "timeout": 10}, timeout=20)
    assert r.status_code == 200
    (d,) = DURATION_RE.findall(r.text)
    assert re.fullmatch(r"\d+\.\d{1,6}", d), r.text
    w = worker_factory(ex)
    c = redis_server.client()
    tid, msg = message()
    c.lpush(DEFAULT_LIST, msg)
    wait_result(c, tid, [w.mp, ex.mp])
    raw = c.get(f"celery-task-meta-{tid}").decode()
    (d,) = DURATION_RE.findall(raw)
    assert re.fullmatch(r"\d+\.\d{1,6}", d), raw


def test_a_message_that_cannot_finish_is_given_back_later_then_dead_lettered(redis_server, executor_factory,
                                                                              worker_factory, tmp_path):
    """Its result cannot be stored (the result backend, another Redis, is a
    read-only replica): after WORKER_RESULT_RETRY_S the message is parked in
    the retry schedule for 5 s, then 20 s, then 80 s, never retaken at once;
    after the third return it is dead-lettered (given_back), so it is not
    run again and again.  The schedule is fast-forwarded here (its score set
    to now) instead of waiting."""
    from fixtures_turnout import RedisServer
    results = RedisServer(tmp_path / "results").start()
    rc = results.client()
    rc.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))   # READONLY from now on
    ex = executor_factory()
    w = worker_factory(ex, CELERY_RESULT_BACKEND=results.url, WORKER_RESULT_RETRY_S=1)
    c = redis_server.client()
    try:
        tid, msg = message(code="print('once')")
        c.lpush(DEFAULT_LIST, msg)
        for n in range(1, 4):
            def parked():
                score = c.zscore("turnout:schedule", c.hget("turnout:schedule:ids", tid) or b"")
                return score if score and score > time.time() else None   # a new, future entry
            t0 = time.time()
            due = wait_until(parked, WAIT_S, f"give-back {n} parked in the schedule", [w.mp, ex.mp])
            assert due - t0 >= 5 * 4 ** (n - 1) - 2, f"give-back {n} due after {due - t0:.1f}s only"
            assert sum(c.llen(k) for k in (QUEUE, DEFAULT_LIST)) == 0, "given back to the queue at once"
            assert log_count(w, "message given back to its queue later") == n
            # fast-forward: due now
            env = c.hget("turnout:schedule:ids", tid)
            c.zadd("turnout:schedule", {env: time.time() - 1})
        entry = wait_dlq(c, tid, [w.mp, ex.mp])
        assert entry["reason"] == "given_back" and "3 times" in entry["exception_message"], entry
        runs = sum(p.read_text(errors="replace").count(f'msg="run finished" eval_id={tid[7:]}')
                   for p in ex.dir.glob("executor-*.log"))
        assert runs == 4, f"{runs} executions"
        time.sleep(1.0)
        assert c.zcard("turnout:schedule") == 0 and c.hlen("unacked") == 0
        assert sum(c.llen(k) for k in (QUEUE, DEFAULT_LIST)) == 0
    finally:
        rc.execute_command("REPLICAOF", "NO", "ONE")
        rc.close()
        results.cleanup()
