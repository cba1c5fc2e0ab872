"""Integration tests of the proxy's DLQ API, admin token and new-path cancel
(issues 3, 4) against a real redis-server and the real turnout-proxy binary.

The worker is not started: DLQ entries, schedule entries, running keys and
result records are seeded directly in Redis exactly as docs/worker-redis.md
lays them out, so these tests pin the proxy's side of that contract.
Contracts: shared/DESIGN.md §4, §5, §9; shared/WIRE.md §A, §C, §D."""
import base64
import json
import threading
import time
import uuid

import pytest

from fixtures_turnout import (
    SEP, Proxy, decode_celery_body, free_port, mval, wait_until,
)

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUEUE = "evaluation"


# --------------------------------------------------------------- fixtures

@pytest.fixture
def make_proxy(redis_server, tmp_path):
    """make(**env) -> started Proxy on the test Redis. The legacy URL points
    at a closed port: none of these endpoints talks to legacy."""
    made = []

    def make(**env):
        full = {
            "PROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "CELERY_BROKER_URL": redis_server.url,
            "LEGACY_QUEUE_URL": f"http://127.0.0.1:{free_port()}",
            "ADMIN_TOKEN": TOKEN,
            "LOG_LEVEL": "debug",
        }
        for k, v in env.items():
            if v is None:
                full.pop(k, None)
            else:
                full[k] = str(v)
        p = Proxy(tmp_path / f"proxy{len(made)}", full, name=f"turnout-proxy#{len(made)}")
        made.append(p)
        return p.start()

    yield make
    errors = [e for e in (p.cleanup() for p in made) if e]
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def proxy(make_proxy):
    return make_proxy()


@pytest.fixture
def r(redis_server):
    c = redis_server.client()
    yield c
    c.close()


# --------------------------------------------------------------- seeding

def seed_route(client, eval_id, path="new"):
    """The route record the proxy writes when it routes a submission
    (docs/records.md): cancel needs one for an eval nothing else shows yet."""
    client.set(f"turnout:route:{eval_id}", json.dumps({
        "eval_id": eval_id, "path": path, "reason": "percentage", "priority": 3,
        "priority_name": "default", "bucket": 1, "submitted_at": time.time()}), ex=3600)


def envelope(task_id, eval_id, priority=3, retries=5, queue=QUEUE, eta="2026-01-01T00:00:00+00:00"):
    """A Celery protocol v2 envelope (WIRE.md §A) as a producer and then a
    retrying worker leave it."""
    body = [[eval_id, "print(1)", "python"], {"timeout": 30, "engine": "docker", "priority": priority},
            {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": "tasks.evaluate_code", "id": task_id, "shadow": None,
                    "eta": eta, "expires": None, "group": None, "group_index": None,
                    "retries": retries, "timelimit": [None, None], "root_id": task_id,
                    "parent_id": None, "argsrepr": "", "kwargsrepr": "", "origin": "test@host",
                    "ignore_result": False},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue},
                       "priority": priority, "body_encoding": "base64",
                       "delivery_tag": "old-tag-" + task_id},
    })


def seed_dlq(r, eval_id, failed_at, exc_class="ExecutorUnavailable", priority=3, message=None,
             reason="retries_exhausted"):
    """A DLQ entry as docs/worker-redis.md describes it (entry, index, class count)."""
    tid = f"celery-{eval_id}"
    entry = {
        "task_id": tid, "eval_id": eval_id, "task": "tasks.evaluate_code", "queue": QUEUE,
        "priority": priority, "args": [eval_id, "print(1)", "python"],
        "kwargs": {"timeout": 30, "engine": "docker", "priority": priority},
        "exception_class": exc_class, "exception_message": "connect refused",
        "traceback": "Traceback ...", "retries": 5, "policy": "network_error",
        "first_failure_at": failed_at - 100, "last_failure_at": failed_at,
        "reason": reason,
        "message": envelope(tid, eval_id, priority) if message is None else message,
    }
    r.set(f"turnout:dlq:entry:{tid}", json.dumps(entry))
    r.zadd("turnout:dlq", {tid: failed_at})
    r.hincrby("turnout:dlq:classes", exc_class, 1)
    return tid, entry


def result_record(tid, status, result, date_done=True):
    """A Celery result record (WIRE.md §C)."""
    return json.dumps({"status": status, "result": result, "traceback": None, "children": [],
                       "date_done": "2026-11-22T08:42:30.022342" if date_done else None,
                       "task_id": tid})


def admin(proxy, method, path, headers=AUTH, **kw):
    kw.setdefault("timeout", 10)
    return proxy.session.request(method, proxy.url(path), headers=headers, **kw)


def assert_error(resp, status, code=None, names=None):
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text[:500]}"
    assert "json" in resp.headers.get("Content-Type", ""), resp.headers
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    if names is not None:
        assert names in body["message"], f"message does not name {names!r}: {body}"
    return body


class Subscriber:
    """Collects pub/sub messages on some channels in a thread (started and
    confirmed before the call under test)."""

    def __init__(self, redis_server, channels):
        self.c = redis_server.client()
        self.ps = self.c.pubsub(ignore_subscribe_messages=True)
        self.ps.subscribe(*channels)
        # wait for the confirmations so nothing published after this is missed
        wait_until(lambda: all(self.c.pubsub_numsub(ch)[0][1] >= 1 for ch in channels), 5,
                   f"SUBSCRIBE {channels}")
        self.messages = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            m = self.ps.get_message(timeout=0.1)
            if m and m["type"] == "message":
                self.messages.append((m["channel"].decode(), m["data"].decode()))

    def on(self, channel):
        return [json.loads(d) for ch, d in self.messages if ch == channel]

    def close(self):
        self._stop.set()
        self._t.join(5)
        self.ps.close()
        self.c.close()


# --------------------------------------------------------------- DLQ reads

def test_dlq_list_newest_first_paged_and_filtered(proxy, r):
    base = 1795337000.0
    tids = [seed_dlq(r, f"e{i}", base + i)[0] for i in range(7)]   # e6 newest
    newest_first = list(reversed(tids))

    resp = proxy.get("/api/dlq/list", headers=AUTH)   # the token shows args, kwargs and message
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == 7 and body["limit"] == 50 and body["offset"] == 0, body
    assert [e["task_id"] for e in body["entries"]] == newest_first
    first = body["entries"][0]
    assert first["eval_id"] == "e6" and first["exception_class"] == "ExecutorUnavailable"
    assert first["last_failure_at"] == base + 6 and isinstance(first["message"], str)

    pages = []
    for off in (0, 3, 6, 9):
        resp = proxy.get(f"/api/dlq/list?limit=3&offset={off}")
        assert resp.status_code == 200, resp.text
        b = resp.json()
        assert b["total"] == 7 and b["limit"] == 3 and b["offset"] == off, b
        pages.append([e["task_id"] for e in b["entries"]])
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7], []]

    b = proxy.get("/api/dlq/list?eval_id=e3").json()
    assert b["total"] == 1 and [e["task_id"] for e in b["entries"]] == ["celery-e3"], b
    b = proxy.get("/api/dlq/list?eval_id=nope").json()
    assert b["total"] == 0 and b["entries"] == [], b


def test_dlq_list_skips_index_ids_without_entry_and_shows_malformed(proxy, r):
    seed_dlq(r, "ok1", 1795337000.0)
    r.zadd("turnout:dlq", {"celery-gone": 1795337001.0})           # index only (deleted meanwhile)
    r.zadd("turnout:dlq", {"celery-bad": 1795337002.0})
    r.set("turnout:dlq:entry:celery-bad", "not json{")
    b = proxy.get("/api/dlq/list", headers=AUTH).json()
    assert b["total"] == 3, b
    assert [e["task_id"] for e in b["entries"]] == ["celery-bad", "celery-ok1"], b
    assert b["entries"][0]["malformed_entry"] == "not json{", b


@pytest.mark.parametrize("query,param", [
    ("limit=0", "limit"), ("limit=501", "limit"), ("limit=abc", "limit"), ("limit=", "limit"),
    ("offset=-1", "offset"), ("offset=x", "offset"), ("eval_id=a%20b", "eval_id"),
    ("eval_id=" + "a" * 129, "eval_id"),
])
def test_dlq_list_bad_parameters_422(proxy, query, param):
    assert_error(proxy.get(f"/api/dlq/list?{query}"), 422, names=param)


def test_dlq_stats(proxy, r):
    b = proxy.get("/api/dlq/stats").json()
    assert b == {"count": 0, "by_exception_class": {}, "oldest_failure_at": None,
                 "newest_failure_at": None}, b
    seed_dlq(r, "a", 1795337000.5, "ExecutorUnavailable")
    seed_dlq(r, "b", 1795337100.25, "ExecutorUnavailable")
    seed_dlq(r, "c", 1795336900.0, "MalformedMessage")
    resp = proxy.get("/api/dlq/stats")
    assert resp.status_code == 200, resp.text
    b = resp.json()
    assert b["count"] == 3
    assert b["by_exception_class"] == {"ExecutorUnavailable": 2, "MalformedMessage": 1}
    assert b["oldest_failure_at"] == pytest.approx(1795336900.0)
    assert b["newest_failure_at"] == pytest.approx(1795337100.25)


def test_dlq_get_and_404(proxy, r):
    tid, entry = seed_dlq(r, "g1", 1795337000.0)
    resp = proxy.get(f"/api/dlq/{tid}", headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json() == entry
    # without a token: the same entry but what was submitted
    resp = proxy.get(f"/api/dlq/{tid}")
    assert resp.status_code == 200, resp.text
    shown = {k: v for k, v in entry.items() if k not in ("args", "kwargs", "message")}
    assert {k: v for k, v in resp.json().items() if k not in ("redacted", "redacted_fields")} == shown
    assert_error(proxy.get("/api/dlq/celery-unknown"), 404, "not_found", names="celery-unknown")
    assert_error(proxy.get("/api/dlq/bad%0Aid"), 422, names="task_id")  # a control character
    assert_error(proxy.get("/api/dlq/celery-g1/what"), 404)


def test_dlq_wrong_methods_405(proxy, r):
    tid, _ = seed_dlq(r, "m1", 1795337000.0)
    for method, path, allow in [("POST", "/api/dlq/list", "GET"), ("DELETE", "/api/dlq/stats", "GET"),
                                ("PUT", f"/api/dlq/{tid}", "GET, DELETE"),
                                ("GET", f"/api/dlq/{tid}/retry", "POST")]:
        resp = admin(proxy, method, path)
        assert_error(resp, 405, "method_not_allowed")
        assert resp.headers.get("Allow") == allow, (method, path, resp.headers)
    assert r.exists(f"turnout:dlq:entry:{tid}")


# --------------------------------------------------------------- DLQ writes

def test_dlq_retry_republishes_on_its_priority_list(proxy, r):
    tid, entry = seed_dlq(r, "r1", 1795337000.0, "ExecutorUnavailable", priority=6)
    seed_dlq(r, "r2", 1795337001.0, "ExecutorUnavailable")
    r.set(f"celery-task-meta-{tid}", result_record(tid, "FAILURE", {
        "exc_type": "ExecutorUnavailable", "exc_message": ["x"], "exc_module": "turnout"}))
    resp = admin(proxy, "POST", f"/api/dlq/{tid}/retry")
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"task_id": tid, "eval_id": "r1", "requeued": True, "queue_key_priority": 6}

    assert not r.exists(f"turnout:dlq:entry:{tid}")
    assert r.zscore("turnout:dlq", tid) is None
    assert r.hget("turnout:dlq:classes", "ExecutorUnavailable") == b"1"
    assert not r.exists(f"celery-task-meta-{tid}"), "the FAILURE record must go so the re-run can write"
    assert r.llen(f"{QUEUE}{SEP}6") == 1 and r.llen(QUEUE) == 0 and r.llen(f"{QUEUE}{SEP}3") == 0
    msg = json.loads(r.lindex(f"{QUEUE}{SEP}6", 0))
    old = json.loads(entry["message"])
    assert msg["headers"]["retries"] == 0 and msg["headers"]["eta"] is None
    assert msg["headers"]["id"] == tid and msg["headers"]["task"] == "tasks.evaluate_code"
    assert msg["properties"]["delivery_tag"] != old["properties"]["delivery_tag"]
    uuid.UUID(msg["properties"]["delivery_tag"])
    assert msg["properties"]["delivery_info"] == {"exchange": "", "routing_key": QUEUE}
    assert decode_celery_body(msg) == decode_celery_body(old)

    # gone now
    assert_error(admin(proxy, "POST", f"/api/dlq/{tid}/retry"), 404, "not_found")


def test_dlq_retry_last_of_class_removes_the_class(proxy, r):
    tid, _ = seed_dlq(r, "only", 1795337000.0, "Lonely", priority=0)
    resp = admin(proxy, "POST", f"/api/dlq/{tid}/retry")
    assert resp.status_code == 202, resp.text
    assert resp.json()["queue_key_priority"] == 0
    assert r.hexists("turnout:dlq:classes", "Lonely") is False
    assert r.llen(QUEUE) == 1
    assert proxy.get("/api/dlq/stats").json()["by_exception_class"] == {}


def test_dlq_retry_of_a_malformed_message_is_refused(proxy, r):
    tid, _ = seed_dlq(r, "poison", 1795337000.0, "MalformedMessage", message="not a celery message",
                      reason="malformed")
    resp = admin(proxy, "POST", f"/api/dlq/{tid}/retry")
    assert_error(resp, 409, "not_retryable", names="delete")
    assert r.exists(f"turnout:dlq:entry:{tid}")
    assert [r.llen(k) for k in (QUEUE, f"{QUEUE}{SEP}3", f"{QUEUE}{SEP}6", f"{QUEUE}{SEP}9")] == [0, 0, 0, 0]


def test_dlq_delete(proxy, r):
    tid, _ = seed_dlq(r, "d1", 1795337000.0, "Boom")
    seed_dlq(r, "d2", 1795337001.0, "Boom")
    resp = admin(proxy, "DELETE", f"/api/dlq/{tid}")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"task_id": tid, "deleted": True}
    assert not r.exists(f"turnout:dlq:entry:{tid}") and r.zscore("turnout:dlq", tid) is None
    assert r.hget("turnout:dlq:classes", "Boom") == b"1"
    assert_error(admin(proxy, "DELETE", f"/api/dlq/{tid}"), 404, "not_found")
    admin(proxy, "DELETE", "/api/dlq/celery-d2")
    assert r.hlen("turnout:dlq:classes") == 0 and r.zcard("turnout:dlq") == 0


def test_admin_token_required_for_dlq_writes(proxy, r, make_proxy):
    tid, _ = seed_dlq(r, "a1", 1795337000.0)
    for method, path in [("POST", f"/api/dlq/{tid}/retry"), ("DELETE", f"/api/dlq/{tid}")]:
        resp = admin(proxy, method, path, headers={})
        body = assert_error(resp, 401, "unauthorized", names="Authorization: Bearer")
        assert resp.headers.get("WWW-Authenticate") == "Bearer", resp.headers
        assert "ADMIN_TOKEN" in body["message"]
        resp = admin(proxy, method, path, headers={"Authorization": f"Basic {TOKEN}"})
        assert_error(resp, 401, "unauthorized")
        for wrong in ("nope", TOKEN + "x", TOKEN[:-1], "S3CRET-ADMIN-TOKEN"):
            resp = admin(proxy, method, path, headers={"Authorization": f"Bearer {wrong}"})
            assert_error(resp, 403, "forbidden")
    assert r.exists(f"turnout:dlq:entry:{tid}"), "a refused write must change nothing"
    # reads need no token (they leave out what was submitted)
    assert proxy.get(f"/api/dlq/{tid}", headers={}).status_code == 200
    # the scheme is case-insensitive; the token is not
    resp = admin(proxy, "DELETE", f"/api/dlq/{tid}", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text

    m = proxy.metrics()
    assert mval(m, "turnout_requests_total", route="dlq", path="none", code="401") >= 4
    assert mval(m, "turnout_requests_total", route="dlq", path="none", code="403") >= 8
    assert TOKEN not in proxy.log(tail=0), "the admin token must never be logged"

    off = make_proxy(ADMIN_TOKEN=None)
    tid2, _ = seed_dlq(r, "a2", 1795337001.0)
    for headers in ({}, AUTH):
        resp = admin(off, "POST", f"/api/dlq/{tid2}/retry", headers=headers)
        assert_error(resp, 403, "admin_disabled", names="ADMIN_TOKEN")
    assert r.exists(f"turnout:dlq:entry:{tid2}")


def test_dlq_size_gauge_and_request_metrics(proxy, r):
    for i in range(3):
        seed_dlq(r, f"s{i}", 1795337000.0 + i)
    wait_until(lambda: mval(proxy.metrics(), "turnout_dlq_size") == 3, 10, "turnout_dlq_size == 3",
               [proxy.mp])
    proxy.get("/api/dlq/stats")
    m = proxy.metrics()
    assert mval(m, "turnout_requests_total", route="dlq", path="new", code="200") >= 1


# --------------------------------------------------------------- cancel

def assert_revoked_record(r, tid, why="revoked"):
    raw = r.get(f"celery-task-meta-{tid}")
    assert raw is not None, f"no result record for {tid}"
    rec = json.loads(raw)
    assert rec["status"] == "REVOKED", rec
    assert rec["result"] == {"exc_type": "TaskRevokedError", "exc_message": [why],
                             "exc_module": "celery.exceptions"}, rec
    assert rec["task_id"] == tid and rec["traceback"] is None and rec["children"] == []
    assert isinstance(rec["date_done"], str) and "T" in rec["date_done"], rec
    ttl = r.ttl(f"celery-task-meta-{tid}")
    assert 0 < ttl <= 86400, ttl
    return rec


def marker(r, tid):
    raw = r.get(f"turnout:revoked:{tid}")
    return json.loads(raw) if raw else None


def test_cancel_queued(proxy, r, redis_server):
    sub = Subscriber(redis_server, ["celery-task-meta-celery-q1", "/0.celery.pidbox", "turnout:revoke"])
    seed_route(r, "q1")
    try:
        resp = proxy.post("/api/eval/q1/cancel")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"eval_id": "q1", "previous_status": "queued", "cancelled": True,
                               "message": "removed: it will be skipped when taken"}
        mk = marker(r, "celery-q1")
        assert mk and mk["terminate"] is False and mk["by"] == "api" and abs(mk["at"] - time.time()) < 60
        assert 0 < r.ttl("turnout:revoked:celery-q1") <= 86400
        rec = assert_revoked_record(r, "celery-q1")
        wait_until(lambda: bool(sub.on("celery-task-meta-celery-q1")) and bool(sub.on("/0.celery.pidbox")), 5,
                   "result and pidbox publishes")
        assert sub.on("celery-task-meta-celery-q1")[0] == rec
        pid = sub.on("/0.celery.pidbox")[0]
        body = json.loads(base64.b64decode(pid["body"]))
        assert body["arguments"]["task_id"] == "celery-q1" and body["arguments"]["terminate"] is False
        assert sub.on("turnout:revoke") == [], "turnout:revoke is for running executions only"
    finally:
        sub.close()
    # now finished (cancelled)
    resp = proxy.post("/api/eval/q1/cancel")
    body = assert_error(resp, 409, "already_finished")
    assert body["previous_status"] == "cancelled" and body["cancelled"] is False and body["eval_id"] == "q1"


def test_cancel_retry_pending(proxy, r):
    tid = "celery-rp1"
    env = envelope(tid, "rp1", retries=2)
    r.zadd("turnout:schedule", {env: time.time() + 300})
    r.hset("turnout:schedule:ids", tid, env)
    r.set(f"celery-task-meta-{tid}", result_record(tid, "RETRY", {
        "exc_type": "ExecutorUnavailable", "exc_message": ["refused"], "exc_module": "turnout",
        "eta": "2026-11-22T08:47:30"}, date_done=False))
    resp = proxy.post("/api/eval/rp1/cancel")
    assert resp.status_code == 200, resp.text
    b = resp.json()
    assert b["previous_status"] == "retrying" and b["cancelled"] is True and b["eval_id"] == "rp1", b
    assert r.zcard("turnout:schedule") == 0
    assert not r.hexists("turnout:schedule:ids", tid)
    assert marker(r, tid)["terminate"] is False
    assert_revoked_record(r, tid)


def test_cancel_retry_pending_without_result_record(proxy, r):
    tid = "celery-rp2"
    env = envelope(tid, "rp2")
    other = envelope("celery-other", "other")
    r.zadd("turnout:schedule", {env: time.time() + 300, other: time.time() + 300})
    r.hset("turnout:schedule:ids", mapping={tid: env, "celery-other": other})
    resp = proxy.post("/api/eval/rp2/cancel")
    assert resp.status_code == 200 and resp.json()["previous_status"] == "retrying", resp.text
    assert r.zrange("turnout:schedule", 0, -1) == [other.encode()]
    assert r.hkeys("turnout:schedule:ids") == [b"celery-other"]


def test_cancel_running_needs_terminate(proxy, r):
    tid = "celery-run1"
    r.set(f"turnout:running:{tid}", json.dumps({"worker": "w1", "executor": "http://127.0.0.1:1",
                                                 "started_at": time.time(), "eval_id": "run1"}), ex=400)
    resp = proxy.post("/api/eval/run1/cancel")
    assert_error(resp, 409, "running", names="terminate=true")
    resp = proxy.post("/api/eval/run1/cancel?terminate=false")
    assert_error(resp, 409, "running")
    assert marker(r, tid) is None and not r.exists(f"celery-task-meta-{tid}")
    # STARTED / PROGRESS records count as running too
    for status in ("STARTED", "PROGRESS"):
        t2 = f"celery-run-{status}"
        r.set(f"celery-task-meta-{t2}", result_record(t2, status, {"eval_id": "x"}, date_done=False))
        assert_error(proxy.post(f"/api/eval/run-{status}/cancel"), 409, "running")


def test_cancel_running_with_terminate_broadcasts(proxy, r, redis_server):
    tid = "celery-run2"
    started = result_record(tid, "STARTED", {"pid": 0, "hostname": "w1"}, date_done=False)
    r.set(f"celery-task-meta-{tid}", started)
    r.set(f"turnout:running:{tid}", json.dumps({"worker": "w1", "executor": "http://127.0.0.1:1",
                                                 "started_at": time.time(), "eval_id": "run2"}), ex=400)
    sub = Subscriber(redis_server, ["turnout:revoke", "/0.celery.pidbox"])
    try:
        resp = proxy.post("/api/eval/run2/cancel?terminate=true")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"eval_id": "run2", "previous_status": "running", "cancelled": True,
                               "message": "termination requested"}
        mk = marker(r, tid)
        assert mk["terminate"] is True and mk["by"] == "api"
        wait_until(lambda: bool(sub.on("turnout:revoke")) and bool(sub.on("/0.celery.pidbox")), 5,
                   "revoke broadcasts on turnout:revoke and /0.celery.pidbox")
        assert sub.on("turnout:revoke") == [{"task_id": tid, "terminate": True}]
        env = sub.on("/0.celery.pidbox")[0]
        assert env["content-type"] == "application/json" and env["content-encoding"] == "utf-8"
        assert env["headers"]["clock"] == 1 and env["headers"]["expires"] > time.time()
        props = env["properties"]
        assert props["delivery_info"] == {"exchange": "celery.pidbox", "routing_key": ""}
        assert props["body_encoding"] == "base64" and props["delivery_tag"]
        body = json.loads(base64.b64decode(env["body"], validate=True))
        assert body == {"method": "revoke", "arguments": {"task_id": tid, "terminate": True,
                                                          "signal": "SIGTERM"},
                        "destination": None, "pattern": None, "matcher": None}
    finally:
        sub.close()
    # the worker writes REVOKED "terminated"; the proxy leaves the record alone
    assert r.get(f"celery-task-meta-{tid}") == started.encode()


def test_cancel_pidbox_channel_uses_broker_db(make_proxy, redis_server):
    proxy = make_proxy(CELERY_BROKER_URL=f"redis://127.0.0.1:{redis_server.port}/3")
    sub = Subscriber(redis_server, ["/3.celery.pidbox"])
    db3 = redis_server.client(3)
    seed_route(db3, "db3")
    db3.close()
    try:
        resp = proxy.post("/api/eval/db3/cancel")
        assert resp.status_code == 200, resp.text
        wait_until(lambda: sub.on("/3.celery.pidbox"), 5, "revoke on /3.celery.pidbox")
    finally:
        sub.close()
    c = redis_server.client(3)
    try:
        assert c.exists("turnout:revoked:celery-db3") and c.exists("celery-task-meta-celery-db3")
    finally:
        c.close()


@pytest.mark.parametrize("status,inner,previous", [
    ("SUCCESS", "completed", "completed"), ("SUCCESS", "failed", "failed"),
    ("SUCCESS", "timeout", "timeout"), ("FAILURE", None, "failed"), ("REVOKED", None, "cancelled"),
])
def test_cancel_finished_409(proxy, r, status, inner, previous):
    tid = "celery-done1"
    result = {"eval_id": "done1", "status": inner, "output": "1\n"} if inner else {
        "exc_type": "X", "exc_message": ["x"], "exc_module": "turnout"}
    rec = result_record(tid, status, result)
    r.set(f"celery-task-meta-{tid}", rec)
    resp = proxy.post("/api/eval/done1/cancel?terminate=true")
    body = assert_error(resp, 409, "already_finished")
    assert body == {"error": "already_finished", "message": "already finished", "eval_id": "done1",
                    "previous_status": previous, "cancelled": False}
    assert r.get(f"celery-task-meta-{tid}") == rec.encode()
    assert marker(r, tid) is None


def test_cancel_bad_requests(proxy, r):
    assert_error(proxy.post("/api/eval/bad%20id/cancel"), 422, "invalid_eval_id", names="eval_id")
    assert_error(proxy.post("/api/eval/" + "a" * 129 + "/cancel"), 422, names="eval_id")
    assert_error(proxy.post("/api/eval/a/b/cancel"), 422, names="eval_id")
    seed_route(r, "a" * 128)
    assert proxy.post("/api/eval/" + "a" * 128 + "/cancel").status_code == 200
    assert_error(proxy.post("/api/eval/x1/cancel?terminate=maybe"), 422, names="terminate")
    resp = proxy.get("/api/eval/x1/cancel")
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers.get("Allow") == "POST"
    m = proxy.metrics()
    assert mval(m, "turnout_requests_total", route="cancel", path="none", code="422") >= 4
    assert mval(m, "turnout_requests_total", route="cancel", path="new", code="200") >= 1


def test_separate_result_backend(make_proxy, redis_server, r):
    proxy = make_proxy(CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{redis_server.port}/1")
    res = redis_server.client(1)
    try:
        # cancel writes REVOKED in the result db, the marker in the broker db
        seed_route(r, "sb1")
        resp = proxy.post("/api/eval/sb1/cancel")
        assert resp.status_code == 200, resp.text
        assert_revoked_record(res, "celery-sb1")
        assert not r.exists("celery-task-meta-celery-sb1")
        assert marker(r, "celery-sb1") is not None
        # finished records are read from the result db
        res.set("celery-task-meta-celery-sb2", result_record("celery-sb2", "FAILURE", {
            "exc_type": "X", "exc_message": ["x"], "exc_module": "turnout"}))
        assert_error(proxy.post("/api/eval/sb2/cancel"), 409, "already_finished")
        # a DLQ retry deletes the result record in the result db
        tid, _ = seed_dlq(r, "sb2", 1795337000.0)
        resp = admin(proxy, "POST", f"/api/dlq/{tid}/retry")
        assert resp.status_code == 202, resp.text
        assert not res.exists("celery-task-meta-celery-sb2")
        assert r.llen(f"{QUEUE}{SEP}3") == 1
    finally:
        res.close()


def test_redis_down_503_with_retry_after(proxy, r, redis_server):
    seed_dlq(r, "x1", 1795337000.0)
    redis_server.stop()

    def refused():
        resp = proxy.post("/api/eval/down1/cancel")
        return resp if resp.status_code == 503 else None
    resp = wait_until(refused, 10, "cancel -> 503 with Redis down", [proxy.mp])
    body = assert_error(resp, 503, "redis_unavailable")
    assert int(resp.headers["Retry-After"]) >= 1, resp.headers
    assert "Retry-After" in body["message"]
    for method, path, headers in [("GET", "/api/dlq/list", {}), ("GET", "/api/dlq/stats", {}),
                                  ("GET", "/api/dlq/celery-x1", {}),
                                  ("POST", "/api/dlq/celery-x1/retry", AUTH),
                                  ("DELETE", "/api/dlq/celery-x1", AUTH)]:
        resp = admin(proxy, method, path, headers=headers)
        assert_error(resp, 503, "redis_unavailable")
        assert resp.headers.get("Retry-After"), (method, path)
    m = proxy.metrics()
    assert mval(m, "turnout_upstream_errors_total", path="new", reason="redis_down") >= 6
    assert mval(m, "turnout_requests_total", route="dlq", path="new", code="503") >= 5
    assert mval(m, "turnout_in_flight_requests", path="new") == 0
