"""The legacy side on RQ (LEGACY_BACKEND=rq): the proxy enqueues each
legacy-routed submission as rq's Queue.enqueue would (job rq:job:<eval_id>,
RPUSH rq:queue:<q>), real `rq worker` processes (RQ 1.13) run
tasks.evaluate_code (legacyd/rq/tasks.py) against turnout-executor, and the proxy
reads the job back for status, completion metrics, cancel and queue status.

First the harness alone, no proxy: rq's own enqueue, a job written field by
field as the proxy will write it, the executor down, RQ's stop-job command
and cancel. Then the proxy on RQ, mirroring what test_lifecycle.py and
test_proxy.py check of the HTTP legacy path.

Settings of the backend: LEGACY_BACKEND=http|rq, LEGACY_RQ_URL,
LEGACY_RQ_QUEUES (three names; priority 0-2, 3-5, 6-9), LEGACY_RQ_FUNCTION,
LEGACY_RQ_SERIALIZER=pickle|json, LEGACY_RQ_RESULT_TTL_S.
Real redis-server, turnout-executor, turnout-worker, turnout-proxy, rq worker.
"""
import datetime
import json
import pickle
import subprocess
import time
import zlib

import pytest

from fixtures_turnout import (
    RedisServer, base_env, binary, expected_path, free_port, msum, mval, wait_until,
)
from rq_helpers import (
    FUNCTION, QUEUES, RQ_TIMESTAMP_RE, RqWorker, connect, enqueue, fetch_job, job_hash,
    job_state, job_status, priority_queue, rq_url, serializer_of, wait_job,
)

SERIALIZER_NAMES = ["pickle", "json"]
STATUS_FIELDS = {"eval_id", "status", "path", "created_at", "completed_at", "output", "error",
                 "exit_code", "success"}
RQ_SETTINGS = ("LEGACY_BACKEND", "LEGACY_RQ_URL", "LEGACY_RQ_QUEUES", "LEGACY_RQ_FUNCTION",
               "LEGACY_RQ_SERIALIZER", "LEGACY_RQ_RESULT_TTL_S")
PRIORITY = {"high": 0, "default": 3, "low": 6}
SLEEP_30 = "import time\ntime.sleep(30)\n"


# --------------------------------------------------------------- fixtures

@pytest.fixture
def rq_workers(tmp_path):
    """make(url, executor, serializer="pickle", start=True, queues=QUEUES)
    -> RqWorker. Stopped by pid at teardown."""
    made = []

    def make(url, executor, serializer="pickle", start=True, queues=QUEUES):
        w = RqWorker(tmp_path / f"rqw{len(made)}", url, executor, queues=queues, serializer=serializer)
        made.append(w)
        if start:
            w.start()
        return w

    yield make
    for w in made:
        w.cleanup()


@pytest.fixture
def second_redis(tmp_path):
    """Another redis-server, built as the redis_server fixture is."""
    srv = RedisServer(tmp_path / "redis-rq").start()
    yield srv
    srv.cleanup()


@pytest.fixture
def rq_proxy(proxy_factory, redis_server):
    """make(serializer="pickle", url=<redis_server db 0>, **env) -> a
    proxy with LEGACY_BACKEND=rq. Defaults: CELERY_ENABLED=true,
    CELERY_PERCENTAGE=0 (all to legacy), COMPLETION_POLL_S=1. Fails at once,
    naming them, when the proxy reports the RQ settings as unknown."""
    def make(serializer="pickle", url=None, **env):
        full = dict(LEGACY_BACKEND="rq", LEGACY_RQ_URL=url or rq_url(redis_server),
                    LEGACY_RQ_SERIALIZER=serializer, CELERY_ENABLED=True, CELERY_PERCENTAGE=0,
                    COMPLETION_POLL_S=1)
        full.update(env)
        p = proxy_factory(**full)
        log = p.mp.log_path.read_text(errors="replace")
        unknown = [ln for ln in log.splitlines()
                   if "is not a turnout setting" in ln and any(s in ln for s in RQ_SETTINGS)]
        if unknown:
            pytest.fail("turnout-proxy does not know the RQ backend's settings:\n" + "\n".join(unknown),
                        pytrace=False)
        return p
    return make


# --------------------------------------------------------------- helpers

def status_of(proxy, eval_id, want=200):
    resp = proxy.get(f"/api/eval-status/{eval_id}")
    assert resp.status_code == want, f"status {eval_id}: {resp.status_code} {resp.text}\n{proxy.log(30)}"
    body = resp.json()
    if want == 200:
        assert STATUS_FIELDS <= set(body), body
        assert body["eval_id"] == eval_id, body
        other = proxy.get(f"/api/eval/{eval_id}")
        assert other.status_code == 200 and other.json()["status"] == body["status"], other.text
    return body


def wait_status(proxy, eval_id, statuses, timeout=30, procs=()):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)
    return wait_until(lambda: (lambda b: b if b["status"] in statuses else None)(status_of(proxy, eval_id)),
                      timeout, f"{eval_id} reaches {sorted(statuses)}", [proxy.mp, *procs], interval=0.2)


def submit(proxy, eval_id=None, code="print(1)", **fields):
    body = {"code": code, "language": "python", **fields}
    if eval_id is not None:
        body["eval_id"] = eval_id
    resp = proxy.post("/api/eval", json=body)
    assert resp.status_code == 202, f"submit {eval_id}: {resp.status_code} {resp.text}\n{proxy.log(30)}"
    b = resp.json()
    assert resp.headers.get("X-Turnout-Path") == b["path"], (resp.headers, b)
    assert b["status"] == "queued" and b["duplicate"] is False, b
    return b


def job_data(raw, serializer):
    """The (func, instance, args, kwargs) of a job's data field: zlib or raw."""
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    return serializer_of(serializer).loads(raw)


def rq_keys(conn):
    return sorted(k.decode() for k in conn.keys("rq:*"))


def legacy_counts(m, name, label):
    """{label value: count} of a metric's legacy-path series, for messages."""
    return {dict(ls).get(label): v for (n, ls), v in m.items() if n == name and dict(ls).get("path") == "legacy"}


def find_mapping(obj, want):
    """True when some dict inside obj (obj included) holds every item of want."""
    if isinstance(obj, dict):
        if all(obj.get(k) == v for k, v in want.items()):
            return True
        return any(find_mapping(v, want) for v in obj.values())
    if isinstance(obj, list):
        return any(find_mapping(v, want) for v in obj)
    return False


def utc_ts(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)


class Channel:
    """A pub/sub subscription, confirmed before the call under test."""

    def __init__(self, conn, name):
        self.ps = conn.pubsub()
        self.ps.subscribe(name)
        wait_until(lambda: (lambda m: m and m["type"] == "subscribe")(self.ps.get_message(timeout=0.2)), 5,
                   f"subscribed to {name}")

    def next(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.ps.get_message(timeout=0.2)
            if m and m["type"] == "message":
                return m["data"]
        return None

    def close(self):
        self.ps.close()


# =============================================================== the harness, no proxy

@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_harness_rq_runs_evaluate_code(serializer, redis_server, executor_factory, rq_workers):
    """rq's own Queue.enqueue, a real rq worker, tasks.evaluate_code on a
    real executor: a program's verdict is the job's return value, and the
    job itself finished, whatever the program did."""
    ex = executor_factory()
    c = redis_server.client()
    w = rq_workers(redis_server.url, ex, serializer)
    enqueue(c, "e1", "print(40+2)", "python", serializer=serializer, job_timeout=40)
    st = wait_job(c, "e1", {"finished", "failed"}, 30, [w.mp], serializer)
    assert st["status"] == "finished" and st["result_type"] == "SUCCESSFUL", (st, w.log(40))
    rv = st["return_value"]
    assert rv["eval_id"] == "e1" and rv["status"] == "completed" and rv["output"] == "42\n", rv
    assert rv["exit_code"] == 0 and rv["error"] is None and isinstance(rv["duration_s"], float), rv
    assert st["worker_name"] == w.name and st["origin"] == "default", st

    enqueue(c, "e2", "import sys\nsys.exit(3)\n", "python", serializer=serializer, job_timeout=40,
            timeout=20, engine="docker", priority=3)
    st = wait_job(c, "e2", {"finished", "failed"}, 30, [w.mp], serializer)
    assert st["status"] == "finished", f"a program's failure is its verdict, not a failed job: {st}"
    rv = st["return_value"]
    assert rv["status"] == "failed" and rv["exit_code"] == 3 and rv["eval_id"] == "e2", rv
    assert st["kwargs"] == {"timeout": 20, "engine": "docker", "priority": 3}, st
    assert c.zscore("rq:finished:default", "e1") is not None and c.zscore("rq:finished:default", "e2") is not None
    c.close()


@pytest.mark.parametrize("compressed", [True, False], ids=["zlib", "raw"])
@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_harness_a_job_written_field_by_field_runs(serializer, compressed, redis_server, executor_factory,
                                                   rq_workers):
    """The job exactly as the proxy is to write it, with plain Redis
    commands and no rq code: HSET rq:job:<id> (data = the serializer's
    [func, None, [eval_id, code, language], {timeout, engine, priority}],
    zlib-compressed as rq does or not), SADD rq:queues, RPUSH rq:queue:<q>.
    A real rq worker runs it and keeps the result as long as result_ttl."""
    ex = executor_factory()
    c = redis_server.client()
    eid, code, q = "hand-1", "print('by hand')", "high"
    kwargs = {"timeout": 20, "engine": "docker", "priority": 0}
    data = serializer_of(serializer).dumps([FUNCTION, None, [eid, code, "python"], kwargs])
    if serializer == "pickle":   # a simpler protocol than rq's own (5) reads the same
        data = pickle.dumps([FUNCTION, None, [eid, code, "python"], kwargs], protocol=2)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    from rq.utils import get_call_string
    with c.pipeline(transaction=True) as pipe:
        pipe.hset(f"rq:job:{eid}", mapping={
            "data": zlib.compress(data) if compressed else data,
            "created_at": now, "enqueued_at": now, "status": "queued", "origin": q,
            "description": get_call_string(FUNCTION, [eid, code, "python"], kwargs, max_length=75),
            "timeout": 25, "result_ttl": 3600, "started_at": "", "ended_at": "",
            "last_heartbeat": "", "worker_name": ""})
        pipe.sadd("rq:queues", f"rq:queue:{q}")
        pipe.rpush(f"rq:queue:{q}", eid)
        pipe.execute()
    w = rq_workers(redis_server.url, ex, serializer)
    st = wait_job(c, eid, {"finished", "failed"}, 30, [w.mp], serializer)
    assert st["status"] == "finished", (st, w.log(40))
    assert st["return_value"]["output"] == "by hand\n" and st["return_value"]["status"] == "completed", st
    assert st["args"] == [eid, code, "python"] and st["kwargs"] == kwargs, st
    # result_ttl governs how long the job hash and its result stream are kept
    assert 3500 < c.ttl(f"rq:results:{eid}") <= 3600 and 3500 < c.ttl(f"rq:job:{eid}") <= 3600
    h = job_hash(c, eid)
    assert RQ_TIMESTAMP_RE.match(h["started_at"]) and RQ_TIMESTAMP_RE.match(h["ended_at"]), h
    assert h["started_at"] <= h["ended_at"], h
    c.close()


def test_harness_rq_job_layout_is_what_the_proxy_must_write(redis_server):
    """What rq 1.13's Queue.enqueue writes, field by field (the reference
    for the proxy): no worker, both serializers."""
    c = redis_server.client()
    t0 = datetime.datetime.now(datetime.timezone.utc)
    for serializer in SERIALIZER_NAMES:
        eid = f"layout-{serializer}"
        enqueue(c, eid, "print(1)", "python", queue_name="low", serializer=serializer, job_timeout=35,
                result_ttl=86400, timeout=30, engine="docker", priority=6)
        h = job_hash(c, eid)
        assert h["status"] == "queued" and h["origin"] == "low" and h["timeout"] == "35", h
        assert h["result_ttl"] == "86400", h
        assert h["description"] == (f"tasks.evaluate_code('{eid}', 'print(1)', 'python', "
                                    "engine='docker', priority=6, timeout=30)"), h   # kwargs sorted
        for f in ("created_at", "enqueued_at"):
            assert RQ_TIMESTAMP_RE.match(h[f]), (f, h[f])
            assert abs((utc_ts(h[f]) - t0).total_seconds()) < 60, (f, h[f])
        assert h["started_at"] == h["ended_at"] == h["worker_name"] == h["last_heartbeat"] == "", h
        func, inst, args, kwargs = job_data(h["data"], serializer)
        assert (func, inst, list(args), kwargs) == (FUNCTION, None, [eid, "print(1)", "python"],
                                                    {"timeout": 30, "engine": "docker", "priority": 6})
        assert zlib.decompress(h["data"]), "rq compresses data with zlib"
        assert c.ttl(f"rq:job:{eid}") == -1, "a queued job has no expiry"
    assert c.lrange("rq:queue:low", 0, -1) == [b"layout-pickle", b"layout-json"]
    assert c.smembers("rq:queues") == {b"rq:queue:low"}
    c.close()


def test_harness_executor_down_is_a_failed_job(redis_server, rq_workers):
    """EXECUTOR_SERVICE_URL at a closed port: evaluate_code raises, the job
    is 'failed' in RQ (a system error, not a verdict), with the reason."""
    port = free_port()
    c = redis_server.client()
    w = rq_workers(redis_server.url, f"http://127.0.0.1:{port}")
    enqueue(c, "down-1", "print(1)", "python", job_timeout=40)
    st = wait_job(c, "down-1", {"finished", "failed"}, 30, [w.mp])
    assert st["status"] == "failed" and st["result_type"] == "FAILED", st
    assert st["return_value"] is None, st
    assert "ExecutorError" in st["exc_string"] and "unreachable" in st["exc_string"] \
        and str(port) in st["exc_string"], st["exc_string"]
    assert c.zscore("rq:failed:default", "down-1") is not None
    c.close()


def test_harness_stop_job_and_cancel(redis_server, executor_factory, rq_workers):
    """RQ's stop-job command (a PUBLISH of {"command":"stop-job","job_id"}
    on rq:pubsub:<worker_name>, the job hash's worker_name) kills the work
    horse: the job is 'stopped', in rq:failed:<q>, its result stream says
    FAILED, and the executor's run ends with it. A queued job cancelled as
    rq does it (status canceled, LREM from the queue, ZADD rq:canceled:<q>)
    is never run by a worker started later."""
    ex = executor_factory()
    c = redis_server.client()
    w = rq_workers(redis_server.url, ex)
    enqueue(c, "s1", SLEEP_30, "python", job_timeout=60, timeout=40)
    wait_job(c, "s1", "started", 15, [w.mp])
    wait_until(lambda: ex.capacity()["running"] == 1, 10, "the run on the executor", [w.mp])
    h = job_hash(c, "s1")
    assert h["worker_name"] == w.name and RQ_TIMESTAMP_RE.match(h["started_at"]), h
    t = time.monotonic()
    c.publish(f"rq:pubsub:{h['worker_name']}", json.dumps({"command": "stop-job", "job_id": "s1"},
                                                          separators=(",", ":")))
    st = wait_job(c, "s1", {"stopped", "failed", "finished"}, 10, [w.mp])
    assert st["status"] == "stopped", st
    assert time.monotonic() - t < 5
    assert st["result_type"] == "FAILED" and "stopped by user" in st["exc_string"], st
    h = job_hash(c, "s1")
    assert h["ended_at"] == "" and h["worker_name"] == "", f"rq 1.13 sets no ended_at on a stop: {h}"
    assert c.zscore("rq:failed:default", "s1") is not None
    wait_until(lambda: ex.capacity()["running"] == 0, 5, "the executor's run ended with the horse", [w.mp])
    # the worker goes on with the next job
    enqueue(c, "after-stop", "print(2)", "python")
    assert wait_job(c, "after-stop", {"finished", "failed"}, 20, [w.mp])["return_value"]["output"] == "2\n"

    assert w.stop() == 0
    job = enqueue(c, "c1", "print(1)", "python")
    job.cancel()
    assert job_status(c, "c1") == "canceled"
    assert c.lrange("rq:queue:default", 0, -1) == [] and c.zscore("rq:canceled:default", "c1") is not None
    w2 = rq_workers(redis_server.url, ex)
    enqueue(c, "c2", "print(3)", "python")
    wait_job(c, "c2", "finished", 20, [w2.mp])
    assert job_status(c, "c1") == "canceled" and not c.exists("rq:results:c1")
    assert job_hash(c, "c1")["started_at"] == ""
    c.close()


# =============================================================== the proxy on RQ

@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_split_half_and_half_every_eval_completes(serializer, rq_proxy, redis_server, legacyd,
                                                  executor_factory, worker_factory, rq_workers):
    ex_new = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    ex_leg = executor_factory(EXECUTOR_MAX_CONCURRENT=2)
    worker_factory(ex_new)
    w = rq_workers(rq_url(redis_server), ex_leg, serializer)
    p = rq_proxy(serializer, CELERY_PERCENTAGE=0.5)
    c = redis_server.client()
    ids = [f"split-{i}" for i in range(40)]
    paths = {}
    for i, e in enumerate(ids):
        b = submit(p, e, code=f"print({i})")
        assert b["path"] == expected_path(e, 0.5), b
        paths[e] = b["path"]
    assert set(paths.values()) == {"new", "legacy"}, paths
    legacy_ids = [e for e in ids if paths[e] == "legacy"]
    n_leg, n_new = len(legacy_ids), len(ids) - len(legacy_ids)
    for e in ids:   # each went to exactly one place
        assert c.exists(f"rq:job:{e}") == (1 if paths[e] == "legacy" else 0), e
        assert json.loads(c.get(f"turnout:route:{e}"))["path"] == paths[e]

    for i, e in enumerate(ids):
        b = wait_status(p, e, {"completed", "failed", "timeout", "cancelled"}, 60, [w.mp])
        assert b["status"] == "completed" and b["path"] == paths[e], b
        assert b["output"] == f"{i}\n" and b["exit_code"] == 0 and b["success"] is True, b
        assert b["error"] is None and b["completed_at"], b
    for e in legacy_ids:
        st = job_state(c, e, serializer)
        assert st["status"] == "finished" and st["return_value"]["status"] == "completed", st

    def counted():
        m = p.metrics()
        return m if msum(m, "turnout_evals_completed_total", path="legacy") == n_leg \
            and msum(m, "turnout_evals_completed_total", path="new") == n_new else None
    wait_until(counted, 20, f"completions legacy={n_leg} new={n_new}", [p.mp])
    time.sleep(2.5)   # two more polls: each eval is counted once, not once per poll
    m = p.metrics()
    assert mval(m, "turnout_evals_completed_total", path="legacy", outcome="completed") == n_leg
    assert msum(m, "turnout_evals_completed_total", path="legacy") == n_leg
    assert mval(m, "turnout_eval_verdicts_total", path="legacy", verdict="completed") == n_leg
    assert msum(m, "turnout_eval_verdicts_total", path="legacy") == n_leg
    assert mval(m, "turnout_evals_completed_total", path="new", outcome="completed") == n_new
    assert msum(m, "turnout_eval_system_errors_total", path="legacy") == 0
    assert mval(m, "turnout_eval_completion_seconds_count", path="legacy") == n_leg
    assert c.zcard("turnout:inflight:legacy") == 0
    assert legacyd.status()["total_tasks"] == 0, "the HTTP Queue Service is not used with LEGACY_BACKEND=rq"
    c.close()


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_program_failing_on_rq_is_a_verdict(serializer, rq_proxy, redis_server, executor_factory, rq_workers):
    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex, serializer)
    p = rq_proxy(serializer, CELERY_ENABLED=False)
    assert submit(p, "fail-3", code="import sys\nsys.exit(3)\n")["path"] == "legacy"
    b = wait_status(p, "fail-3", {"completed", "failed", "timeout", "cancelled"}, 30, [w.mp])
    assert b["status"] == "failed" and b["exit_code"] == 3 and b["success"] is False, b
    assert b["path"] == "legacy" and b["completed_at"], b
    c = redis_server.client()
    assert job_status(c, "fail-3") == "finished", "the job ran: the program failed, not the path"
    c.close()
    m = wait_until(lambda: (lambda m: m if msum(m, "turnout_evals_completed_total", path="legacy") == 1 else None)(
        p.metrics()), 10, "the completion counted", [p.mp])
    assert mval(m, "turnout_eval_verdicts_total", path="legacy", verdict="failed") == 1
    assert mval(m, "turnout_evals_completed_total", path="legacy", outcome="failed") == 1
    assert msum(m, "turnout_eval_system_errors_total", path="legacy") == 0, \
        legacy_counts(m, "turnout_eval_system_errors_total", "class")
    assert mval(m, "turnout_eval_path_outcomes_total", path="legacy", outcome="ok") == 1


def test_a_result_over_the_reply_limit_is_not_read(rq_proxy, redis_server, executor_factory, rq_workers):
    """A job's result comes from code the proxy does not control: one larger
    than LEGACY_MAX_REPLY_BYTES stays in Redis; the eval ends failed, as
    unreadable (a system error of the legacy path), at once."""
    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex)
    p = rq_proxy(CELERY_ENABLED=False, LEGACY_MAX_REPLY_BYTES=65536)
    submit(p, "big-1", code="print('x' * 200000)\n")
    c = redis_server.client()
    wait_until(lambda: job_status(c, "big-1") == "finished", 30, "the job ran", [w.mp])
    c.close()
    m = wait_until(lambda: (lambda m: m if msum(m, "turnout_evals_completed_total", path="legacy") == 1 else None)(
        p.metrics()), 15, "the eval finished", [p.mp])
    assert mval(m, "turnout_eval_system_errors_total", path="legacy", **{"class": "unreadable"}) == 1
    assert mval(m, "turnout_eval_verdicts_total", path="legacy", verdict="completed") == 0
    b = status_of(p, "big-1")
    assert b["status"] == "failed" and "LEGACY_MAX_REPLY_BYTES" in (b["error"] or ""), b


def test_failed_rq_job_is_a_system_error(rq_proxy, redis_server, rq_workers):
    """The executor down: the rq job fails (evaluate_code raised); turnout
    says failed, counted as the legacy path's system error, not a verdict."""
    w = rq_workers(rq_url(redis_server), f"http://127.0.0.1:{free_port()}")
    p = rq_proxy(CELERY_ENABLED=False)
    submit(p, "sys-1")
    b = wait_status(p, "sys-1", {"completed", "failed", "timeout", "cancelled"}, 30, [w.mp])
    assert b["status"] == "failed" and b["success"] is False and b["error"], b
    c = redis_server.client()
    assert job_status(c, "sys-1") == "failed"
    c.close()
    m = wait_until(lambda: (lambda m: m if msum(m, "turnout_evals_completed_total", path="legacy") == 1 else None)(
        p.metrics()), 10, "the completion counted", [p.mp])
    assert msum(m, "turnout_eval_system_errors_total", path="legacy") == 1, \
        legacy_counts(m, "turnout_eval_system_errors_total", "class")
    assert mval(m, "turnout_eval_path_outcomes_total", path="legacy", outcome="system_error") == 1
    assert msum(m, "turnout_eval_verdicts_total", path="legacy") == 0, "no verdict without a run"


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_priority_picks_the_queue_and_the_job_is_rqs_own(serializer, rq_proxy, redis_server, executor_factory,
                                                        rq_workers):
    p = rq_proxy(serializer, LEGACY_RQ_RESULT_TTL_S=3600)   # CELERY_PERCENTAGE=0: all to legacy
    c = redis_server.client()
    t0 = datetime.datetime.now(datetime.timezone.utc)
    subs = [("p-low", "low"), ("p-default", "default"), ("p-high", "high"), ("p-9", 9), ("p-5", 5), ("p-2", 2)]
    for eid, prio in subs:
        b = submit(p, eid, code="print(1)", priority=prio, timeout=20)
        assert b["path"] == "legacy", b
    assert c.lrange("rq:queue:high", 0, -1) == [b"p-high", b"p-2"]
    assert c.lrange("rq:queue:default", 0, -1) == [b"p-default", b"p-5"]
    assert c.lrange("rq:queue:low", 0, -1) == [b"p-low", b"p-9"]
    assert {b"rq:queue:high", b"rq:queue:default", b"rq:queue:low"} <= c.smembers("rq:queues")
    from rq.utils import get_call_string
    for eid, prio in subs:
        n = PRIORITY.get(prio, prio)
        h = job_hash(c, eid)
        assert h.get("status") == "queued" and h.get("origin") == priority_queue(n), (eid, h)
        assert 20 <= int(h["timeout"]) <= 80, f"job timeout = the eval's 20 s + a small grace: {h}"
        assert h.get("result_ttl") == "3600", h
        kwargs = {"timeout": 20, "engine": "docker", "priority": n}
        assert h["description"] == get_call_string(FUNCTION, [eid, "print(1)", "python"], kwargs, max_length=75), h
        for f in ("created_at", "enqueued_at"):
            assert RQ_TIMESTAMP_RE.match(h.get(f, "")), (eid, f, h)
            assert abs((utc_ts(h[f]) - t0).total_seconds()) < 60, (eid, f, h[f])
        func, inst, args, kw = job_data(h["data"], serializer)
        assert (func, inst, list(args), kw) == (FUNCTION, None, [eid, "print(1)", "python"], kwargs), h
        job = fetch_job(c, eid, serializer)   # rq reads it back
        assert job.func_name == FUNCTION and job.get_status() == "queued" and job.origin == priority_queue(n)
        b = status_of(p, eid)
        assert b["status"] == "queued" and b["path"] == "legacy" and b["success"] is None, b
        assert b["completed_at"] is None, b

    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex, serializer)
    started = {}
    for eid, _ in subs:
        st = wait_job(c, eid, {"finished", "failed"}, 30, [w.mp], serializer)
        assert st["status"] == "finished" and st["return_value"]["output"] == "1\n", st
        started[eid] = st["started_at"]
        assert 0 < c.ttl(f"rq:results:{eid}") <= 3600, "LEGACY_RQ_RESULT_TTL_S is the job's result_ttl"
    order = sorted(started, key=started.get)   # one worker: one job at a time, first queue first
    assert order == ["p-high", "p-2", "p-default", "p-5", "p-low", "p-9"], (order, started)
    for eid, _ in subs:
        assert wait_status(p, eid, "completed", 20, [w.mp])["output"] == "1\n"
    c.close()


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_cancel_a_queued_rq_job(serializer, rq_proxy, redis_server, executor_factory, rq_workers):
    p = rq_proxy(serializer, CELERY_ENABLED=False)
    c = redis_server.client()
    submit(p, "cq-1")
    submit(p, "cq-2", priority="low")
    resp = p.post("/api/eval/cq-1/cancel")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["eval_id"] == "cq-1" and body["previous_status"] == "queued" and body["cancelled"] is True, body
    assert isinstance(body["message"], str) and body["message"], body
    # as rq's Job.cancel leaves it
    assert job_status(c, "cq-1") == "canceled"
    assert b"cq-1" not in c.lrange("rq:queue:default", 0, -1)
    assert c.zscore("rq:canceled:default", "cq-1") is not None
    assert c.lrange("rq:queue:low", 0, -1) == [b"cq-2"], "the other job is left alone"
    b = status_of(p, "cq-1")
    assert b["status"] == "cancelled" and b["path"] == "legacy" and b["success"] is False, b
    assert b["completed_at"], b
    again = p.post("/api/eval/cq-1/cancel")
    assert again.status_code == 409, again.text
    assert again.json()["previous_status"] == "cancelled" and again.json()["cancelled"] is False, again.text

    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex, serializer)
    assert wait_status(p, "cq-2", "completed", 30, [w.mp])["output"] == "1\n"
    assert job_status(c, "cq-1") == "canceled" and not c.exists("rq:results:cq-1")
    assert job_hash(c, "cq-1")["started_at"] == "", "a worker started afterwards does not run it"
    assert status_of(p, "cq-1")["status"] == "cancelled"
    wait_until(lambda: mval(p.metrics(), "turnout_evals_completed_total", path="legacy", outcome="cancelled") == 1,
               10, "the cancel counted as a completion", [p.mp])
    c.close()


def test_cancel_a_finished_rq_job_is_409(rq_proxy, redis_server, executor_factory, rq_workers):
    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex)
    p = rq_proxy(CELERY_ENABLED=False)
    c = redis_server.client()
    for eid, code, outcome in (("cf-ok", "print(1)", "completed"), ("cf-bad", "raise SystemExit(3)", "failed")):
        submit(p, eid, code=code)
        assert wait_status(p, eid, {"completed", "failed"}, 30, [w.mp])["status"] == outcome
        for q in ("", "?terminate=true"):
            resp = p.post(f"/api/eval/{eid}/cancel{q}")
            assert resp.status_code == 409, resp.text
            body = resp.json()
            assert body["error"] == "already_finished" and body["previous_status"] == outcome, body
            assert body["cancelled"] is False and body["eval_id"] == eid, body
        assert job_status(c, eid) == "finished"
        assert status_of(p, eid)["status"] == outcome
    c.close()


@pytest.mark.parametrize("serializer", SERIALIZER_NAMES)
def test_cancel_a_running_rq_job(serializer, rq_proxy, redis_server, executor_factory, rq_workers):
    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex, serializer)
    p = rq_proxy(serializer, CELERY_ENABLED=False)
    c = redis_server.client()
    submit(p, "cr-1", code=SLEEP_30, timeout=60)
    wait_job(c, "cr-1", "started", 15, [w.mp], serializer)
    wait_status(p, "cr-1", "running", 15, [w.mp])
    for q in ("", "?terminate=false"):
        resp = p.post(f"/api/eval/cr-1/cancel{q}")
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"] == "running" and resp.json()["message"], resp.text
    assert job_status(c, "cr-1") == "started"

    ch = Channel(c, f"rq:pubsub:{w.name}")
    try:
        resp = p.post("/api/eval/cr-1/cancel?terminate=true")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["eval_id"] == "cr-1" and body["previous_status"] == "running", body
        assert body["cancelled"] is True and body["message"], body
        cmd = ch.next(5)
        assert cmd is not None, "no stop-job command on the worker's channel"
        assert json.loads(cmd) == {"command": "stop-job", "job_id": "cr-1"}, cmd
    finally:
        ch.close()
    st = wait_job(c, "cr-1", {"stopped", "failed", "finished"}, 10, [w.mp], serializer)
    assert st["status"] == "stopped", st
    b = wait_status(p, "cr-1", {"cancelled", "completed", "failed", "timeout"}, 10, [w.mp])
    assert b["status"] == "cancelled" and b["success"] is False and b["completed_at"], b
    wait_until(lambda: ex.capacity()["running"] == 0, 5, "the executor's run ended", [w.mp])
    again = p.post("/api/eval/cr-1/cancel?terminate=true")
    assert again.status_code == 409 and again.json()["previous_status"] == "cancelled", again.text
    # the worker takes the next one
    submit(p, "cr-next", code="print(5)")
    assert wait_status(p, "cr-next", "completed", 20, [w.mp])["output"] == "5\n"
    m = wait_until(lambda: (lambda m: m if msum(m, "turnout_evals_completed_total", path="legacy") == 2 else None)(
        p.metrics()), 10, "both completions counted", [p.mp])
    assert mval(m, "turnout_evals_completed_total", path="legacy", outcome="cancelled") == 1
    assert msum(m, "turnout_eval_system_errors_total", path="legacy") == 0
    c.close()


def test_queue_status_shows_the_rq_queues(rq_proxy, redis_server, second_redis):
    p = rq_proxy(url=rq_url(second_redis))   # no rq worker: the jobs wait
    for i, prio in enumerate(["high", "high", "default", "low", "low", "low"]):
        submit(p, f"qs-{i}", priority=prio)
    rc = second_redis.client()
    assert [rc.llen(f"rq:queue:{q}") for q in QUEUES] == [2, 1, 3]
    rc.close()
    resp = p.get("/api/queue-status")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    leg = body["legacy"]
    assert "error" not in leg, body
    assert leg["queued"] == 6, body
    assert find_mapping(leg, {"high": 2, "default": 1, "low": 3}), \
        f"the legacy side names each RQ queue with its length: {body}"
    assert body["new"]["queued"] == 0, body
    # RQ's Redis away: the legacy side says so, the new side still answers
    second_redis.stop()
    resp = p.get("/api/queue-status")
    assert resp.status_code == 200, resp.text
    assert set(resp.json()["legacy"]) >= {"error", "message"} and "new" in resp.json(), resp.text


def test_fallback_to_rq_when_the_new_path_is_down(rq_proxy, redis_server, executor_factory, rq_workers):
    serializer = "json"
    ex = executor_factory()
    w = rq_workers(rq_url(redis_server), ex, serializer)
    p = rq_proxy(serializer, CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", CELERY_PERCENTAGE=1,
                 FALLBACK_TO_LEGACY=True, REDIS_TIMEOUT_MS=300)
    c = redis_server.client()
    ids = []
    for i in range(5):
        b = submit(p, code=f"print({i})")   # generated eval_ids: Redis cannot check a client's own
        assert b["path"] == "legacy" and b["reason"] == "fallback", b
        ids.append(b["eval_id"])
    for i, e in enumerate(ids):
        st = wait_job(c, e, {"finished", "failed"}, 30, [w.mp], serializer)
        assert st["status"] == "finished" and st["return_value"]["output"] == f"{i}\n", st
        assert st["args"] == [e, f"print({i})", "python"], st
        b = wait_status(p, e, {"completed", "failed"}, 15, [w.mp])
        assert b["status"] == "completed" and b["path"] == "legacy" and b["output"] == f"{i}\n", b
    m = p.metrics()
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="fallback") == 5
    assert msum(m, "turnout_routing_decisions_total", path="new") == 0
    c.close()


@pytest.mark.parametrize("where", ["another-server", "same-server-db5"])
def test_rq_on_its_own_redis(where, rq_proxy, redis_server, executor_factory, rq_workers, request):
    url = rq_url(request.getfixturevalue("second_redis")) if where == "another-server" \
        else rq_url(redis_server, 5)
    ex = executor_factory()
    w = rq_workers(url, ex)
    p = rq_proxy(url=url, CELERY_ENABLED=False)
    rqc, broker = connect(url), redis_server.client(0)
    ids = [f"own-{i}" for i in range(3)]
    for i, e in enumerate(ids):
        submit(p, e, code=f"print({i})")
    for i, e in enumerate(ids):
        assert wait_status(p, e, {"completed", "failed"}, 30, [w.mp])["output"] == f"{i}\n"
        assert job_status(rqc, e) == "finished"
        assert json.loads(broker.get(f"turnout:route:{e}"))["path"] == "legacy", "route records stay on the broker"
    assert rq_keys(broker) == [], f"nothing of RQ on the broker's db: {rq_keys(broker)}"
    wait_until(lambda: msum(p.metrics(), "turnout_evals_completed_total", path="legacy") == 3, 10,
               "the completions counted", [p.mp])
    rqc.close()
    broker.close()


def test_shadow_comparison_with_legacy_on_rq(rq_proxy, redis_server, executor_factory, worker_factory,
                                             rq_workers):
    serializer = "json"
    ex_leg, ex_new = executor_factory(), executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    worker_factory(ex_new, CELERY_CONCURRENCY=4)
    w = rq_workers(rq_url(redis_server), ex_leg, serializer)
    p = rq_proxy(serializer, CELERY_ENABLED=False, SHADOW_PERCENTAGE=1)
    c = redis_server.client()
    ids = [f"sh-{i}" for i in range(4)]
    for i, e in enumerate(ids):
        b = submit(p, e, code=f"print({i})\n")
        assert b["path"] == "legacy" and "shadow" not in json.dumps(b), b
    wait_until(lambda: msum(p.metrics(), "turnout_shadow_comparisons_total") == len(ids), 40,
               "every shadow compared", [p.mp, w.mp])
    m = p.metrics()
    assert mval(m, "turnout_shadow_comparisons_total", result="match") == len(ids)
    assert mval(m, "turnout_shadow_comparisons_total", result="mismatch") == 0
    assert mval(m, "turnout_shadow_comparisons_total", result="error") == 0
    for i, e in enumerate(ids):
        b = status_of(p, e)
        assert b["path"] == "legacy" and b["status"] == "completed" and b["output"] == f"{i}\n", b
        assert job_status(c, e) == "finished" and not c.exists(f"rq:job:shadow-{e}"), "the shadow is not on RQ"
        assert json.loads(c.get(f"celery-task-meta-shadow-{e}"))["status"] == "SUCCESS"
    c.close()


# --------------------------------------------------------------- configuration

def check_config(env):
    full = base_env()
    full.update(env)
    return subprocess.run([binary("turnout-proxy"), "--check-config"], env=full, capture_output=True,
                          text=True, timeout=10)


def test_check_config_takes_the_rq_settings():
    for env in ({"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": "redis://127.0.0.1:6390/2"},
                {"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": "redis://127.0.0.1:6390/0", "LEGACY_RQ_SERIALIZER": "json",
                 "LEGACY_RQ_QUEUES": "a,b,c", "LEGACY_RQ_FUNCTION": "mytasks.run", "LEGACY_RQ_RESULT_TTL_S": "600"},
                {"LEGACY_BACKEND": "http"}, {"LEGACY_RQ_SERIALIZER": "pickle"}):
        r = check_config(env)
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "configuration OK" in r.stdout, f"{env}: rc={r.returncode}\n{out}"
        assert "is not a turnout setting" not in out, f"{env}:\n{out}"


@pytest.mark.parametrize("env,named", [
    ({"LEGACY_BACKEND": "rq"}, "LEGACY_RQ_URL"),
    ({"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": ""}, "LEGACY_RQ_URL"),
    ({"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": "redis://127.0.0.1:6390/0", "LEGACY_RQ_SERIALIZER": "yaml"},
     'LEGACY_RQ_SERIALIZER="yaml"'),
    ({"LEGACY_BACKEND": "celery"}, 'LEGACY_BACKEND="celery"'),
    ({"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": "http://127.0.0.1:6390/0"}, "LEGACY_RQ_URL"),
    ({"LEGACY_BACKEND": "rq", "LEGACY_RQ_URL": "redis://127.0.0.1:6390/0", "LEGACY_RQ_QUEUES": "high,default"},
     "LEGACY_RQ_QUEUES"),
], ids=["no-url", "empty-url", "serializer-yaml", "backend-celery", "url-not-redis", "two-queues"])
def test_check_config_refuses_bad_rq_settings(env, named):
    r = check_config(env)
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"{env}: rc={r.returncode}, want 2\n{out}"
    assert named in out, f"{env}: the refusal does not name {named!r}:\n{out}"
    assert "is not a turnout setting" not in out, out


def test_proxy_refuses_to_start_on_rq_without_its_url(redis_server, legacyd):
    full = base_env()
    full.update({"PROXY_LISTEN": f"127.0.0.1:{free_port()}", "CELERY_BROKER_URL": redis_server.url,
                 "LEGACY_QUEUE_URL": legacyd.url, "LEGACY_BACKEND": "rq"})
    try:
        r = subprocess.run([binary("turnout-proxy")], env=full, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"turnout-proxy started with LEGACY_BACKEND=rq and no LEGACY_RQ_URL (want exit 2):\n"
                    f"{(e.stderr or b'').decode(errors='replace')[-2000:]}", pytrace=False)
    assert r.returncode == 2 and "LEGACY_RQ_URL" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
