"""turnout-worker end to end (issue 3; DESIGN §2, §5, §6, §8, §9; WIRE.md §A-§D;
docs/worker-redis.md): real redis-server, real turnout-executor, real
turnout-worker(s), real turnout-proxy. Submissions go through the proxy's
POST /api/eval (CELERY_ENABLED=true, CELERY_PERCENTAGE=1) unless a test needs a
hand-made or poison message, which is LPUSHed with redis-py."""

import base64
import datetime
import json
import random
import re
import signal
import subprocess
import threading
import time
import uuid

import pytest
from fixtures_turnout import (QUEUE, SEP, base_env, binary, free_port, http_session, msum, mval,
                              parse_metric_types, series, tool, wait_until)

TERMINAL = ("SUCCESS", "FAILURE", "REVOKED")
DEFAULT_LIST = f"{QUEUE}{SEP}3"   # priority "default" -> step 3 (DESIGN §5)
RESULT_WAIT_S = 20.0
ADMIN_TOKEN = "test-admin-token"


# --------------------------------------------------------------- helpers

def meta_key(tid):
    return f"celery-task-meta-{tid}"


def get_result(c, tid):
    raw = c.get(meta_key(tid))
    return json.loads(raw) if raw is not None else None


def wait_result(c, tid, procs, states=TERMINAL, timeout=RESULT_WAIT_S, interval=0.05):
    """The result record of tid once its status is one of states."""
    def ready():
        rec = get_result(c, tid)
        return rec if rec and rec.get("status") in states else None
    return wait_until(ready, timeout, f"{meta_key(tid)} in {states} "
                      f"(now: {get_result(c, tid)})", procs, interval=interval)


def describe_all(*things):
    return "\n".join(t.describe() for t in things if t is not None)


def new_proxy(proxy_factory, **env):
    return proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, **env)


def submit(p, code, timeout=30, eval_id=None, **fields):
    """POST /api/eval on the new path; returns the eval_id."""
    eval_id = eval_id or f"w-{uuid.uuid4().hex[:12]}"
    r = p.submit(code=code, timeout=timeout, eval_id=eval_id, **fields)
    assert r.status_code == 202, f"submit -> {r.status_code} {r.text}\n{p.log(40)}"
    assert r.json()["path"] == "new", r.json()
    return eval_id


def make_message(eval_id=None, code="print('hi')", language="python", timeout=30, task="tasks.evaluate_code",
                 tid=None, queue=QUEUE, args=None, kwargs=None, body=None, headers_extra=None):
    """(task id, envelope JSON text) of a Celery protocol v2 message (WIRE.md §A)."""
    eval_id = eval_id or f"h-{uuid.uuid4().hex[:12]}"
    tid = tid or f"celery-{eval_id}"
    if body is None:
        a = [eval_id, code, language] if args is None else args
        kw = {"timeout": timeout, "engine": "docker", "priority": "default"} if kwargs is None else kwargs
        body = base64.b64encode(json.dumps(
            [a, kw, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()).decode()
    headers = {"lang": "py", "task": task, "id": tid, "shadow": None, "eta": None, "expires": None,
               "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
               "root_id": tid, "parent_id": None, "argsrepr": "", "kwargsrepr": "",
               "origin": "test@pytest", "ignore_result": False}
    headers.update(headers_extra or {})
    env = {"body": body, "content-encoding": "utf-8", "content-type": "application/json",
           "headers": headers,
           "properties": {"correlation_id": tid, "delivery_mode": 2,
                          "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 3,
                          "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
    return tid, json.dumps(env)


def iso_to_unix(s):
    d = datetime.datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


class ResultWatcher:
    """Records every PUBLISH on celery-task-meta-* (the channel a result is
    published on, WIRE.md §C): {tid: [(time, status), ...]}."""

    def __init__(self, redis_server):
        self.client = redis_server.client()
        self.ps = self.client.pubsub(ignore_subscribe_messages=True)
        self.ps.psubscribe("celery-task-meta-*")
        self.events = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        # wait for the subscription to be live
        deadline = time.monotonic() + 5
        while not self.ps.subscribed and time.monotonic() < deadline:
            time.sleep(0.01)

    def _run(self):
        while not self.stop_flag.is_set():
            try:
                m = self.ps.get_message(timeout=0.1)
            except Exception:  # noqa: BLE001 - connection closed at stop
                return
            if m and m["type"] == "pmessage":
                ch = m["channel"].decode()
                tid = ch[len("celery-task-meta-"):]
                try:
                    st = json.loads(m["data"])["status"]
                except (ValueError, KeyError, TypeError):
                    st = "<unparsable>"
                self.events.setdefault(tid, []).append((time.time(), st))

    def statuses(self, tid):
        return [s for _, s in self.events.get(tid, [])]

    def terminal(self, tid):
        return [s for s in self.statuses(tid) if s in TERMINAL]

    def close(self):
        time.sleep(0.2)   # let the last publishes arrive
        self.stop_flag.set()
        self.thread.join(2)
        try:
            self.ps.close()
        finally:
            self.client.close()


@pytest.fixture
def watcher(redis_server):
    w = ResultWatcher(redis_server)
    yield w
    w.close()


class Canceller:
    """Cancels through the proxy's POST /api/eval/<id>/cancel when it exists,
    else as docs/worker-redis.md describes (marker + PUBLISH turnout:revoke).
    `via` records which one was used ("proxy" or "redis")."""

    def __init__(self, p, redis_server, via=None):
        """via: None = the proxy if it has the route, else Redis; "proxy" =
        the proxy only (fails without the route); "redis" = Redis only."""
        self.p = None if via == "redis" else p
        self.require_proxy = via == "proxy"
        self.c = redis_server.client()
        self.via = []
        self.replies = {}

    def cancel(self, eval_id, terminate=False):
        tid = f"celery-{eval_id}"
        if self.p is not None:
            r = self.p.post(f"/api/eval/{eval_id}/cancel" + ("?terminate=true" if terminate else ""))
            # The eval was submitted through this proxy, so 404/405 means the
            # route itself is missing.
            if r.status_code not in (404, 405):
                self.via.append("proxy")
                self.replies[eval_id] = (r.status_code, r.text)
                assert r.status_code in (200, 202, 409), \
                    f"cancel {eval_id} -> {r.status_code} {r.text}\n{self.p.log(40)}"
                return r
            assert not self.require_proxy, \
                f"the proxy has no cancel route: POST /api/eval/{eval_id}/cancel -> {r.status_code} {r.text}"
        self.via.append("redis")
        self.c.set(f"turnout:revoked:{tid}",
                   json.dumps({"terminate": terminate, "at": time.time(), "by": "test"}), ex=86400)
        self.c.publish("turnout:revoke", json.dumps({"task_id": tid, "terminate": terminate}))
        return None

    def close(self):
        self.c.close()


def exec_calls(m):
    """Calls the worker made to executors (every outcome)."""
    return msum(m, "turnout_worker_executor_requests_total")


def unacked_state(c):
    return c.hlen("unacked"), c.zcard("unacked_index")


def assert_idle(c, *procs):
    """Nothing queued, nothing unacked."""
    lens = [c.llen(k) for k in (QUEUE, f"{QUEUE}{SEP}3", f"{QUEUE}{SEP}6", f"{QUEUE}{SEP}9")]
    assert lens == [0, 0, 0, 0], f"queue lists not empty: {lens}\n{describe_all(*procs)}"
    wait_until(lambda: unacked_state(c) == (0, 0), 5, f"unacked empty (now {unacked_state(c)})", [])


class RunningSampler:
    """While active, samples the executor's GET /capacity "running" every
    interval seconds; .counts are the numbers, .errors anything else."""

    def __init__(self, ex, interval):
        self.ex, self.interval = ex, interval
        self.counts, self.errors = [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        s = http_session()
        while not self.stop.is_set():
            try:
                self.counts.append(s.get(self.ex.url + "/capacity", timeout=2).json()["running"])
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(f"error {e!r}")
            time.sleep(self.interval)
        s.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


# --------------------------------------------------------------- 1. outcomes

@pytest.mark.parametrize("case", ["prints", "raises", "infinite_loop"])
def test_eval_outcomes(case, redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    code, timeout = {
        "prints": ("print('hello from turnout'); print(6*7)", 30),
        "raises": ("def f():\n    raise ValueError('boom-42')\nf()\n", 30),
        "infinite_loop": ("while True:\n    pass\n", 1),
    }[case]
    eid = submit(p, code, timeout=timeout)
    t0 = time.monotonic()
    rec = wait_result(c, f"celery-{eid}", [w.mp, ex.mp, p.mp])
    elapsed = time.monotonic() - t0
    assert rec["status"] == "SUCCESS", f"{rec}\n{describe_all(w, ex)}"
    assert rec["task_id"] == f"celery-{eid}"
    assert rec["children"] == [] and rec["traceback"] is None and rec["date_done"], rec
    res = rec["result"]
    assert res["eval_id"] == eid, res
    for k in ("status", "output", "error", "exit_code", "executor", "duration_s"):
        assert k in res, f"result lacks {k}: {res}"
    if case == "prints":
        assert res["status"] == "completed", res
        assert "hello from turnout" in res["output"] and "42" in res["output"], res
        assert res["exit_code"] == 0, res
    elif case == "raises":
        assert res["status"] == "failed", res
        assert res["exit_code"] == 1, res
        assert "Traceback" in res["error"] and "ValueError: boom-42" in res["error"], res
    else:
        assert res["status"] == "timeout", res
        assert elapsed < 10, f"timeout 1 s took {elapsed:.1f} s to report"
    m = w.metrics()
    want = {"prints": "completed", "raises": "failed", "infinite_loop": "timeout"}[case]
    assert mval(m, "turnout_worker_tasks_total", outcome=want) == 1
    assert_idle(c, w)
    c.close()


def test_soft_time_limit_gives_timeout(redis_server, executor_factory, worker_factory, proxy_factory):
    """SOFT_TIME_LIMIT_S below the eval's own timeout: the execution is asked to
    stop at the soft limit and the result is `timeout` (DESIGN §6)."""
    ex = executor_factory()
    w = worker_factory(ex, SOFT_TIME_LIMIT_S=1, TIME_LIMIT_S=2)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(30)\nprint('not reached')", timeout=60)
    t0 = time.monotonic()
    rec = wait_result(c, f"celery-{eid}", [w.mp, ex.mp], timeout=15)
    elapsed = time.monotonic() - t0
    assert rec["status"] == "SUCCESS", rec
    assert rec["result"]["status"] == "timeout", rec
    assert "not reached" not in (rec["result"]["output"] or "")
    assert elapsed < 6, f"soft limit 1 s / hard 2 s, but the result took {elapsed:.1f} s"
    wait_until(lambda: ex.capacity()["running"] == 0, 5, "executor idle after the soft limit", [ex.mp])
    c.close()


# --------------------------------------------------------------- 2. retries and DLQ

FAST_RETRY = dict(RETRY_NETWORK_BASE_S=0.2, RETRY_NETWORK_FACTOR=2, RETRY_NETWORK_MAX=3, RETRY_JITTER=False)


def run_until_dead_lettered(redis_server, worker_factory, p, dead_port):
    """Submits one eval against an executor URL nobody listens on; records
    each RETRY (observed time, eta, schedule score); returns
    (eval_id, worker, retries [(t_observed, eta_unix, score)], final record)."""
    w = worker_factory(f"http://127.0.0.1:{dead_port}", **FAST_RETRY)
    c = redis_server.client()
    eid = submit(p, "print('after the outage')")
    tid = f"celery-{eid}"
    seen = {}   # retries count -> (t_obs, eta, score)
    deadline = time.monotonic() + 20
    final = None
    while time.monotonic() < deadline:
        now = time.time()
        rec = get_result(c, tid)
        if rec and rec["status"] == "RETRY":
            n = rec.get("retries")
            eta = rec["result"].get("eta")
            key = (n, eta)
            if key not in seen:
                score = None
                member = c.hget("turnout:schedule:ids", tid)
                if member is not None:
                    score = c.zscore("turnout:schedule", member)
                seen[key] = (now, iso_to_unix(eta) if eta else None, score)
        elif rec and rec["status"] in TERMINAL:
            final = rec
            break
        time.sleep(0.01)
    c.close()
    assert final is not None, f"no terminal result in 20 s; RETRYs seen {seen}\n{w.describe()}"
    return eid, w, [seen[k] for k in sorted(seen, key=lambda k: seen[k][0])], final


def test_executor_down_retries_then_dead_letter(redis_server, worker_factory, proxy_factory):
    p = new_proxy(proxy_factory)
    dead_port = free_port()
    eid, w, retries, final = run_until_dead_lettered(redis_server, worker_factory, p, dead_port)
    tid = f"celery-{eid}"
    c = redis_server.client()
    log = w.describe()
    assert len(retries) == 3, f"want 3 RETRY states, saw {retries}\n{log}"
    # delays 0.2, 0.4, 0.8 (no jitter): as the worker logged them ...
    logged = [float(x) for x in re.findall(r'msg="retry scheduled".*? delay_s=([0-9.]+)', w.log_text())]
    assert logged == pytest.approx([0.2, 0.4, 0.8], abs=0.002), f"logged retry delays {logged}\n{log}"
    # ... and as seen from outside: eta minus the time the RETRY state was
    # first observed (polled every 10 ms, so a little less than the delay)
    delays = [eta - t_obs for t_obs, eta, _ in retries]
    for d, want in zip(delays, (0.2, 0.4, 0.8)):
        assert want - 0.2 <= d <= want + 0.05, f"observed retry delays {delays}, want ~0.2, 0.4, 0.8\n{log}"
    assert delays[0] < delays[1] < delays[2], f"retry delays do not grow: {delays}\n{log}"
    for _, eta, score in retries:
        if score is not None:
            assert abs(score - eta) < 0.01, f"schedule score {score} != eta {eta}"
    assert final["status"] == "FAILURE", f"{final}\n{log}"
    assert final["result"]["exc_module"] == "turnout", final
    # the DLQ entry (docs/worker-redis.md)
    assert c.zscore("turnout:dlq", tid) is not None, f"{tid} not in turnout:dlq: {c.zrange('turnout:dlq', 0, -1)}"
    raw = c.get(f"turnout:dlq:entry:{tid}")
    assert raw is not None, "no turnout:dlq:entry"
    e = json.loads(raw)
    assert e["task_id"] == tid and e["eval_id"] == eid, e
    assert e["reason"] == "retries_exhausted", e
    assert e["retries"] == 3, e
    assert e["policy"] == "network_error", e
    assert e["exception_class"], e
    assert e["exception_class"] == final["result"]["exc_type"], (e, final)
    assert e["args"][0] == eid and e["args"][1] == "print('after the outage')", e
    assert e["first_failure_at"] < e["last_failure_at"], e
    # first failure ~ 1.4 s (0.2 + 0.4 + 0.8) before the last
    assert 1.2 <= e["last_failure_at"] - e["first_failure_at"] <= 4.0, e
    assert abs(c.zscore("turnout:dlq", tid) - e["last_failure_at"]) < 0.01
    assert int(c.hget("turnout:dlq:classes", e["exception_class"]) or 0) == 1
    assert json.loads(e["message"])["headers"]["id"] == tid
    m = w.metrics()
    assert mval(m, "turnout_worker_retries_total", policy="network_error") == 3, log
    assert mval(m, "turnout_worker_retries_total", policy="default") == 0
    assert mval(m, "turnout_worker_tasks_total", outcome="dead_lettered") == 1
    assert c.zcard("turnout:schedule") == 0 and c.hlen("turnout:schedule:ids") == 0
    assert_idle(c, w)
    c.close()


def test_dlq_api_lists_and_retries(redis_server, executor_factory, worker_factory, proxy_factory):
    """The proxy's DLQ API (DESIGN §4) lists the dead-lettered eval; once an
    executor listens on the port, POST /api/dlq/<tid>/retry re-runs it."""
    p = new_proxy(proxy_factory, ADMIN_TOKEN=ADMIN_TOKEN)
    r = p.get("/api/dlq/stats")
    assert r.status_code == 200, (f"the proxy's DLQ API is missing: GET /api/dlq/stats -> "
                                  f"{r.status_code} {r.text[:200]}")
    dead_port = free_port()
    eid, w, _, final = run_until_dead_lettered(redis_server, worker_factory, p, dead_port)
    tid = f"celery-{eid}"
    assert final["status"] == "FAILURE", final
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = p.get("/api/dlq/stats")
    assert r.status_code == 200, r.text
    assert "count" in r.json() and r.json()["count"] >= 1, r.json()
    r = p.get("/api/dlq/list", params={"limit": 10, "offset": 0})
    assert r.status_code == 200, r.text
    assert tid in r.text, f"{tid} not listed: {r.text[:500]}"
    r = p.get("/api/dlq/list", params={"eval_id": eid})
    assert r.status_code == 200 and tid in r.text, r.text[:500]
    r = p.get(f"/api/dlq/{tid}")
    assert r.status_code == 200, r.text
    # writes need the admin token
    r = p.post(f"/api/dlq/{tid}/retry")
    assert r.status_code in (401, 403), f"retry without token -> {r.status_code} {r.text}"
    ex = executor_factory(port=dead_port)
    r = p.post(f"/api/dlq/{tid}/retry", headers=auth)
    assert r.status_code in (200, 202), f"retry -> {r.status_code} {r.text}\n{p.log(40)}"
    c = redis_server.client()
    rec = wait_result(c, tid, [w.mp, ex.mp, p.mp], states=("SUCCESS",), timeout=25)
    assert rec["result"]["status"] == "completed", rec
    assert "after the outage" in rec["result"]["output"], rec
    assert c.zscore("turnout:dlq", tid) is None and c.get(f"turnout:dlq:entry:{tid}") is None
    c.close()


# --------------------------------------------------------------- 3. cancel

@pytest.mark.parametrize("via", ["proxy", "redis"])
def test_cancel_queued_eval_never_runs(via, redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "print('must not run')")
    tid = f"celery-{eid}"
    cn = Canceller(p, redis_server, via)
    cn.cancel(eid)
    w = worker_factory(ex)
    rec = wait_result(c, tid, [w.mp, ex.mp, p.mp], timeout=10)
    assert rec["status"] == "REVOKED", f"{rec} (cancel via {cn.via})\n{w.describe()}"
    assert rec["result"]["exc_type"] == "TaskRevokedError", rec
    assert rec["result"]["exc_message"] == ["revoked"], rec
    time.sleep(0.5)
    m = w.metrics()
    assert exec_calls(m) == 0, f"the executor was called for a revoked eval: {series(m, 'turnout_worker_executor_requests_total')}"
    # the proxy may take the message off the queue itself; else the worker
    # drops it when taken
    if cn.via == ["redis"]:
        assert mval(m, "turnout_worker_tasks_total", outcome="revoked") == 1
    else:
        code, body = cn.replies[eid]
        assert code == 200, (code, body)
        reply = json.loads(body)
        assert reply["cancelled"] is True and reply["previous_status"] == "queued", reply
    assert msum(m, "turnout_worker_tasks_total", outcome="completed") == 0
    assert get_result(c, tid)["status"] == "REVOKED"
    assert_idle(c, w)
    cn.close()
    c.close()


@pytest.mark.parametrize("via", ["proxy", "redis"])
def test_cancel_running_eval_with_terminate(via, redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(30)\nprint('finished')", timeout=60)
    tid = f"celery-{eid}"
    wait_until(lambda: ex.capacity()["running"] == 1, 10, "the eval running on the executor", [w.mp, ex.mp])
    cn = Canceller(p, redis_server, via)
    t0 = time.monotonic()
    cn.cancel(eid, terminate=True)
    rec = wait_result(c, tid, [w.mp, ex.mp], timeout=5)
    took = time.monotonic() - t0
    assert rec["status"] == "REVOKED", f"{rec} (cancel via {cn.via})\n{w.describe()}"
    assert rec["result"]["exc_message"] == ["terminated"], rec
    assert took < 5
    wait_until(lambda: ex.capacity()["running"] == 0, 3, "executor shows running 0 after terminate",
               [w.mp, ex.mp])
    time.sleep(0.5)
    assert get_result(c, tid)["status"] == "REVOKED"
    assert_idle(c, w)
    cn.close()
    c.close()


@pytest.mark.parametrize("via", ["proxy", "redis"])
def test_cancel_retry_pending_eval_is_never_retried(via, redis_server, executor_factory, worker_factory,
                                                   proxy_factory):
    dead_port = free_port()
    w = worker_factory(f"http://127.0.0.1:{dead_port}", RETRY_NETWORK_BASE_S=2, RETRY_NETWORK_MAX=3,
                       RETRY_JITTER=False)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "print('must not run')")
    tid = f"celery-{eid}"
    rec = wait_result(c, tid, [w.mp], states=("RETRY",), timeout=10)
    eta = iso_to_unix(rec["result"]["eta"])
    cn = Canceller(p, redis_server, via)
    cn.cancel(eid)
    rec = wait_result(c, tid, [w.mp], timeout=8)
    assert rec["status"] == "REVOKED", f"{rec} (cancel via {cn.via})\n{w.describe()}"
    # an executor now listens where the retry would go: it must not get the eval
    ex = executor_factory(port=dead_port)
    time.sleep(max(0.0, eta - time.time()) + 2.0)
    m = w.metrics()
    assert mval(m, "turnout_worker_retries_total", policy="network_error") == 1, w.describe()
    assert msum(m, "turnout_worker_executor_requests_total", outcome="ok") == 0, \
        f"a revoked eval was sent to the executor\n{w.describe()}"
    assert get_result(c, tid)["status"] == "REVOKED"
    assert c.zcard("turnout:schedule") == 0, c.zrange("turnout:schedule", 0, -1)
    assert c.hget("turnout:schedule:ids", tid) is None
    assert ex.capacity()["running"] == 0
    assert_idle(c, w)
    cn.close()
    c.close()


@pytest.mark.parametrize("via", ["proxy", "redis"])
def test_cancel_race_many_random_cancels(via, redis_server, executor_factory, worker_factory, proxy_factory,
                                         watcher):
    """40 evals of sleep 0.3, each cancelled with terminate after a random
    0-400 ms: every eval ends in exactly one terminal state, no execution is
    left running, and no eval reported REVOKED "terminated" also succeeded."""
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    w = worker_factory(ex, CELERY_CONCURRENCY=4)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    cn = Canceller(p, redis_server, via)
    rnd = random.Random(1234)
    n = 40
    ids = [f"race-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    delays = [rnd.uniform(0, 0.4) for _ in range(n)]
    errors = []

    def one(eid, d):
        try:
            submit(p, "import time\ntime.sleep(0.3)\nprint('done')", eval_id=eid, session=http_session())
            time.sleep(d)
            cn2 = Canceller(p, redis_server, via)
            try:
                cn2.cancel(eid, terminate=True)
                cn.via.extend(cn2.via)
            finally:
                cn2.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{eid}: {e!r}")

    threads = []
    for i, (eid, d) in enumerate(zip(ids, delays)):
        t = threading.Thread(target=one, args=(eid, d), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.02)
    for t in threads:
        t.join(15)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "submit/cancel threads hung"

    def all_terminal():
        recs = {eid: get_result(c, f"celery-{eid}") for eid in ids}
        return recs if all(r and r["status"] in TERMINAL for r in recs.values()) else None
    recs = wait_until(all_terminal, 30, "all 40 evals terminal", [w.mp, ex.mp], interval=0.2)
    time.sleep(1.0)   # settle
    cap = ex.capacity()
    assert cap["running"] == 0, f"executions left running after the race: {cap}\n{describe_all(w, ex)}"
    bad = []
    for eid in ids:
        tid = f"celery-{eid}"
        term = watcher.terminal(tid)
        final = get_result(c, tid)
        if len(term) != 1:
            bad.append(f"{eid}: terminal publishes {term}, stored {final['status']}")
        elif term[0] != final["status"]:
            bad.append(f"{eid}: published {term[0]} but stored {final['status']}")
        if final["status"] == "REVOKED" and final["result"]["exc_message"] == ["terminated"]:
            if "SUCCESS" in watcher.statuses(tid):
                bad.append(f"{eid}: REVOKED terminated but a SUCCESS was published too")
    assert not bad, "\n".join(bad) + f"\n(cancel via {set(cn.via)})\n{w.describe()}"
    states = [r["status"] for r in recs.values()]
    assert states.count("REVOKED") >= 1, states   # the race exercised cancels
    assert_idle(c, w)
    cn.close()
    c.close()


# --------------------------------------------------------------- 5. at least once

def test_killed_worker_message_restored_by_restart(redis_server, executor_factory, worker_factory,
                                                   proxy_factory, watcher):
    ex = executor_factory()
    w = worker_factory(ex)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(3)\nprint('survived')", timeout=30)
    tid = f"celery-{eid}"
    wait_result(c, tid, [w.mp, ex.mp], states=("STARTED", "PROGRESS"), timeout=10)
    w.kill()
    assert c.hlen("unacked") == 1, f"unacked after SIGKILL: {c.hgetall('unacked')}"
    tag = list(c.hkeys("unacked"))[0]
    assert json.loads(c.hget("unacked", tag))[0] and tid in c.hget("unacked", tag).decode()
    assert c.sismember(f"turnout:worker:{w.worker_name}:tags", tag)
    assert c.zscore("unacked_index", tag) is not None
    t0 = time.monotonic()
    w.start()   # same WORKER_NAME
    wait_until(lambda: not c.hexists("unacked", tag), 3, "the old delivery tag restored at once", [w.mp])
    rec = wait_result(c, tid, [w.mp, ex.mp], timeout=20)
    assert rec["status"] == "SUCCESS" and rec["result"]["status"] == "completed", rec
    assert "survived" in rec["result"]["output"]
    assert time.monotonic() - t0 < 15
    time.sleep(1.0)
    assert watcher.terminal(tid) == ["SUCCESS"], watcher.statuses(tid)
    assert get_result(c, tid) == rec, "the terminal result was overwritten"
    assert_idle(c, w)
    assert c.scard(f"turnout:worker:{w.worker_name}:tags") == 0
    c.close()


def test_killed_worker_message_finished_by_other_after_visibility_timeout(
        redis_server, executor_factory, worker_factory, proxy_factory, watcher):
    ex = executor_factory()
    w1 = worker_factory(ex, VISIBILITY_TIMEOUT_S=3)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(2)\nprint('second worker')", timeout=30)
    tid = f"celery-{eid}"
    wait_result(c, tid, [w1.mp, ex.mp], states=("STARTED", "PROGRESS"), timeout=10)
    w1.kill()
    assert c.hlen("unacked") == 1
    w2 = worker_factory(ex, VISIBILITY_TIMEOUT_S=3)
    assert w2.worker_name != w1.worker_name
    # restore runs every 10 s (maintenance), after VISIBILITY_TIMEOUT_S
    rec = wait_result(c, tid, [w2.mp, ex.mp], timeout=40)
    assert rec["status"] == "SUCCESS" and rec["result"]["status"] == "completed", f"{rec}\n{w2.describe()}"
    assert "second worker" in rec["result"]["output"]
    time.sleep(0.5)
    assert watcher.terminal(tid) == ["SUCCESS"], watcher.statuses(tid)
    assert_idle(c, w2)
    c.close()


# --------------------------------------------------------------- 6. one terminal result

def test_message_with_terminal_result_is_acked_without_running(redis_server, executor_factory,
                                                              worker_factory):
    ex = executor_factory()
    c = redis_server.client()
    tid, env = make_message(code="print('must not run')")
    stored = json.dumps({"status": "SUCCESS", "result": {"marker": "original"}, "traceback": None,
                         "children": [], "date_done": "2026-01-01T00:00:00.000000", "task_id": tid})
    c.set(meta_key(tid), stored)
    c.lpush(DEFAULT_LIST, env)
    w = worker_factory(ex)
    wait_until(lambda: mval(w.metrics(), "turnout_worker_tasks_total", outcome="duplicate") == 1, 10,
               "tasks_total{outcome=duplicate} == 1", [w.mp])
    m = w.metrics()
    assert exec_calls(m) == 0, series(m, "turnout_worker_executor_requests_total")
    assert c.get(meta_key(tid)).decode() == stored, "the stored SUCCESS was changed"
    assert ex.capacity()["running"] == 0
    assert_idle(c, w)
    c.close()


@pytest.mark.parametrize("backend", ["same", "separate"])
def test_concurrency_bound_and_result_backend(backend, redis_server, executor_factory, worker_factory,
                                              proxy_factory):
    """The worker takes its next message while the last one's result is
    being stored, yet never runs more than CELERY_CONCURRENCY at once; with
    another result backend (db 1) results and the redelivery check use it,
    and every message is acked and its executor slot released."""
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=8)
    env = {}
    if backend == "separate":
        env["CELERY_RESULT_BACKEND"] = f"redis://127.0.0.1:{redis_server.port}/1"
    w = worker_factory(ex, CELERY_CONCURRENCY=2, **env)
    p = new_proxy(proxy_factory, **env)
    c = redis_server.client()
    rc = redis_server.client(db=1) if backend == "separate" else c
    # a redelivered message whose SUCCESS is already stored (in the result backend): never run
    tid, dup = make_message(code="print('must not run')")
    stored = json.dumps({"status": "SUCCESS", "result": {"marker": "original"}, "traceback": None,
                         "children": [], "date_done": "2026-01-01T00:00:00.000000", "task_id": tid})
    rc.set(meta_key(tid), stored)
    c.lpush(DEFAULT_LIST, dup)
    wait_until(lambda: mval(w.metrics(), "turnout_worker_tasks_total", outcome="duplicate") == 1, 10,
               "tasks_total{outcome=duplicate} == 1", [w.mp])
    with RunningSampler(ex, 0.01) as sampler:
        ids = [submit(p, "import time\ntime.sleep(0.2)\nprint('ok')") for _ in range(10)]

        def all_done():
            recs = [get_result(rc, f"celery-{e}") for e in ids]
            return recs if all(r and r["status"] in TERMINAL for r in recs) else None
        recs = wait_until(all_done, 30, "10 evals done", [w.mp, ex.mp], interval=0.05)
    nums = sampler.counts
    assert not sampler.errors, sampler.errors[:5]
    assert len(nums) > 50, f"only {len(nums)} samples"
    assert max(nums) <= 2, f"the executor ran {max(nums)} at once with CELERY_CONCURRENCY=2"
    assert max(nums) == 2, "never two at once"
    assert all(r["status"] == "SUCCESS" and r["result"]["status"] == "completed" for r in recs), recs
    assert rc.get(meta_key(tid)).decode() == stored, "the stored SUCCESS was changed"
    if backend == "separate":
        assert not [k for k in c.scan_iter("celery-task-meta-*")], "results written to the broker's db"
    m = w.metrics()
    assert mval(m, "turnout_worker_tasks_total", outcome="completed") == 10
    assert exec_calls(m) == 10, series(m, "turnout_worker_executor_requests_total")
    wait_until(lambda: c.zcard("turnout:pool:slots:0") == 0, 5, "executor slots released", [w.mp])
    wait_until(lambda: not [k for k in c.scan_iter("turnout:running:*")], 5, "running markers gone", [w.mp])
    assert_idle(c, w)
    if rc is not c:
        rc.close()
    c.close()


# --------------------------------------------------------------- 7. pool bound

def test_two_workers_respect_executor_capacity(redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=2)
    w1 = worker_factory(ex, CELERY_CONCURRENCY=4)
    w2 = worker_factory(ex, CELERY_CONCURRENCY=4)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    with RunningSampler(ex, 0.02) as sampler:
        ids = [submit(p, "import time\ntime.sleep(0.5)\nprint('ok')") for _ in range(12)]

        def all_done():
            recs = [get_result(c, f"celery-{e}") for e in ids]
            return recs if all(r and r["status"] in TERMINAL for r in recs) else None
        recs = wait_until(all_done, 30, "12 evals done", [w1.mp, w2.mp, ex.mp], interval=0.1)
    nums = sampler.counts
    assert not sampler.errors, sampler.errors[:5]
    assert len(nums) > 50, f"only {len(nums)} samples"
    assert max(nums) <= 2, f"executor ran {max(nums)} at once (max 2)"
    assert max(nums) == 2, "the pool never used both slots"
    assert all(r["status"] == "SUCCESS" and r["result"]["status"] == "completed" for r in recs), recs
    for w in (w1, w2):
        m = w.metrics()
        assert msum(m, "turnout_worker_executor_requests_total", outcome="busy") == 0, \
            f"{w.name} got 503s: the Redis slots should keep the bound\n{w.describe()}"
    done = sum(mval(w.metrics(), "turnout_worker_tasks_total", outcome="completed") for w in (w1, w2))
    assert done == 12
    assert c.zcard("turnout:pool:slots:0") == 0, c.zrange("turnout:pool:slots:0", 0, -1, withscores=True)
    assert_idle(c, w1, w2)
    c.close()


# --------------------------------------------------------------- 8. poison

def b64(obj):
    return base64.b64encode(json.dumps(obj).encode()).decode()


def test_poison_messages_are_dead_lettered(redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    c = redis_server.client()
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    poison = {}
    poison["not_json"] = (None, "this is {not json", "malformed")
    tid, env = make_message()
    e = json.loads(env)
    del e["headers"]
    poison["no_headers"] = (None, json.dumps(e), "malformed")
    tid, env = make_message(body="!!!% not base64 %!!!")
    poison["body_not_base64"] = (tid, env, "malformed")
    tid, env = make_message(body=b64([["x", "print(1)", "python"], {}]))
    poison["body_two_elements"] = (tid, env, "malformed")
    tid, env = make_message(task="tasks.no_such_task")
    poison["unknown_task"] = (tid, env, "unknown_task")
    tid, env = make_message(body=b64([{"eval_id": "x"}, {}, embed]))
    poison["args_not_a_list"] = (tid, env, "malformed")
    tid, env = make_message(args=[42, ["print(1)"], None])
    poison["args_wrong_types"] = (tid, env, "malformed")
    for _, env, _ in poison.values():
        c.lpush(DEFAULT_LIST, env)
    wait_until(lambda: c.zcard("turnout:dlq") == len(poison), 10,
               f"{len(poison)} DLQ entries (now {c.zcard('turnout:dlq')})", [w.mp])
    entries = [json.loads(c.get(f"turnout:dlq:entry:{t.decode()}") or "null")
               for t in c.zrange("turnout:dlq", 0, -1)]
    assert all(entries), entries
    problems, id_problems = [], []
    for name, (tid, env, reason) in poison.items():
        match = [x for x in entries if x.get("message") == env]
        if len(match) != 1:
            problems.append(f"{name}: {len(match)} DLQ entries carry the original message")
            continue
        x = match[0]
        if x["reason"] != reason:
            problems.append(f"{name}: reason {x['reason']!r}, want {reason!r}")
        if tid is not None:
            if x["task_id"] != tid:
                id_problems.append(f"{name}: entry task_id {x['task_id']!r}, want {tid!r}")
            rec = get_result(c, tid)
            if not rec or rec["status"] != "FAILURE":
                id_problems.append(f"{name}: result {rec}, want FAILURE")
    assert not problems, "\n".join(problems) + f"\nentries: {entries}\n{w.describe()}"
    # never loops: nothing comes back
    time.sleep(1.5)
    assert c.zcard("turnout:dlq") == len(poison)
    assert w.running(), w.describe()
    assert_idle(c, w)
    m = w.metrics()
    assert exec_calls(m) == 0
    assert (mval(m, "turnout_worker_tasks_total", outcome="malformed")
            + mval(m, "turnout_worker_tasks_total", outcome="dead_lettered")) == len(poison)
    # and keeps serving
    p = new_proxy(proxy_factory)
    eid = submit(p, "print('still serving')")
    rec = wait_result(c, f"celery-{eid}", [w.mp, ex.mp])
    assert rec["status"] == "SUCCESS" and rec["result"]["status"] == "completed", rec
    assert w.running()
    assert_idle(c, w)
    c.close()
    # A message whose headers are readable keeps its task id in the DLQ and
    # gets a FAILURE result (a producer waiting on AsyncResult must not hang).
    assert not id_problems, "\n".join(id_problems) + f"\nentries: {entries}\n{w.describe()}"


# --------------------------------------------------------------- 9. SIGTERM

def test_sigterm_lets_running_eval_finish(redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    w = worker_factory(ex, WORKER_SHUTDOWN_GRACE_S=10)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(1)\nprint('finished in grace')")
    tid = f"celery-{eid}"
    wait_until(lambda: ex.capacity()["running"] == 1, 10, "the eval running", [w.mp, ex.mp])
    t0 = time.monotonic()
    w.mp._signal(signal.SIGTERM)
    try:
        rc = w.mp.proc.wait(8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running 8 s after SIGTERM\n{w.describe()}")
    assert rc == 0, w.describe()
    assert time.monotonic() - t0 < 5
    rec = get_result(c, tid)
    assert rec and rec["status"] == "SUCCESS" and rec["result"]["status"] == "completed", rec
    assert "finished in grace" in rec["result"]["output"]
    assert_idle(c, w)
    c.close()


def test_sigterm_grace_over_returns_message(redis_server, executor_factory, worker_factory, proxy_factory):
    ex = executor_factory()
    w = worker_factory(ex, WORKER_SHUTDOWN_GRACE_S=1)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "import time\ntime.sleep(30)\nprint('x')", timeout=60)
    tid = f"celery-{eid}"
    wait_until(lambda: ex.capacity()["running"] == 1, 10, "the eval running", [w.mp, ex.mp])
    t0 = time.monotonic()
    w.mp._signal(signal.SIGTERM)
    try:
        rc = w.mp.proc.wait(8)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running 8 s after SIGTERM\n{w.describe()}")
    assert rc == 0, w.describe()
    assert time.monotonic() - t0 < 5
    assert unacked_state(c) == (0, 0), c.hgetall("unacked")
    lens = {k: c.llen(k) for k in (QUEUE, f"{QUEUE}{SEP}3")}
    assert sum(lens.values()) == 1, f"message not back on its queue: {lens}\n{w.describe()}"
    back = json.loads(c.lindex(QUEUE, 0) if lens[QUEUE] else c.lindex(f"{QUEUE}{SEP}3", 0))
    assert back["headers"]["id"] == tid
    rec = get_result(c, tid)
    assert rec is None or rec["status"] not in TERMINAL, rec
    assert c.scard(f"turnout:worker:{w.worker_name}:tags") == 0
    wait_until(lambda: ex.capacity()["running"] == 0, 5, "the abandoned execution killed", [ex.mp])


# --------------------------------------------------------------- 10. metrics and config

WORKER_METRICS = ["turnout_worker_tasks_total", "turnout_worker_task_duration_seconds",
                  "turnout_worker_in_flight", "turnout_worker_retries_total",
                  "turnout_worker_executor_requests_total", "turnout_worker_maintenance_runs_total"]


def test_worker_metrics_promtool_and_names(redis_server, executor_factory, worker_factory, proxy_factory,
                                           tmp_path):
    ex = executor_factory()
    w = worker_factory(ex)
    p = new_proxy(proxy_factory)
    c = redis_server.client()
    eid = submit(p, "print(1)")
    wait_result(c, f"celery-{eid}", [w.mp, ex.mp])
    wait_until(lambda: msum(w.metrics(), "turnout_worker_maintenance_runs_total") > 0, 5,
               "a maintenance run counted", [w.mp])
    text = w.metrics_text()
    r = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, f"promtool: {r.stdout.decode()} {r.stderr.decode()}\n{text[:3000]}"
    types = parse_metric_types(text)
    want = {"turnout_worker_tasks_total": "counter", "turnout_worker_task_duration_seconds": "histogram",
            "turnout_worker_in_flight": "gauge", "turnout_worker_retries_total": "counter",
            "turnout_worker_executor_requests_total": "counter",
            "turnout_worker_maintenance_runs_total": "counter"}
    for name, typ in want.items():
        fam = name[:-len("_total")] if name.endswith("_total") else name
        assert types.get(name, types.get(fam)) == typ, f"{name}: type {types.get(name, types.get(fam))}"
    m = w.metrics()
    for pol in ("default", "network_error"):
        mval(m, "turnout_worker_retries_total", policy=pol)
    assert mval(m, "turnout_worker_tasks_total", outcome="completed") == 1
    assert series(m, "turnout_worker_executor_requests_total", executor=ex.url, outcome="ok")
    assert msum(m, "turnout_worker_executor_requests_total", executor=ex.url, outcome="ok") >= 1
    assert mval(m, "turnout_worker_task_duration_seconds_count") == 1
    assert mval(m, "turnout_worker_in_flight") == 0
    assert w.healthz().status_code == 200
    c.close()


def check_config(**env):
    e = base_env()
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run([binary("turnout-worker"), "--check-config"], env=e, capture_output=True,
                          timeout=10, text=True)


@pytest.mark.parametrize("env,names", [
    ({"CELERY_CONCURRENCY": "0"}, ["CELERY_CONCURRENCY"]),
    ({"EXECUTOR_SERVICE_URL": "ftp://x"}, ["EXECUTOR_SERVICE_URL"]),
    ({"SOFT_TIME_LIMIT_S": "500", "TIME_LIMIT_S": "300"}, ["SOFT_TIME_LIMIT_S"]),
    ({"CELERY_CONCURRENCY": "0", "EXECUTOR_SERVICE_URL": "ftp://x", "SOFT_TIME_LIMIT_S": "500",
      "TIME_LIMIT_S": "300"}, ["CELERY_CONCURRENCY", "EXECUTOR_SERVICE_URL", "SOFT_TIME_LIMIT_S"]),
], ids=["concurrency", "executor_url", "soft_above_hard", "all_three"])
def test_check_config_rejects_bad_values(env, names):
    r = check_config(**env)
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"rc {r.returncode}: {out}"
    missing = [n for n in names if n not in out]
    assert not missing, f"--check-config output does not name {missing}:\n{out}"
    for v in env.values():
        if v in ("0", "ftp://x", "500"):
            assert v in out, f"the bad value {v!r} is not quoted:\n{out}"


def test_check_config_accepts_good_values():
    r = check_config(CELERY_CONCURRENCY=4, EXECUTOR_SERVICE_URL="http://127.0.0.1:1,http://127.0.0.1:2",
                     SOFT_TIME_LIMIT_S=10, TIME_LIMIT_S=20)
    assert r.returncode == 0, r.stdout + r.stderr
