"""Each evaluation runs on exactly one path, whatever Redis does.

- Redis stalled (SIGSTOP) with submissions in flight: a submission whose
  reply never came is settled before it goes anywhere else, and the submit
  script, still in Redis's input buffer when it resumes, refuses to act past
  the deadline the proxy gave it. For every accepted eval the path told to
  the client, the route record and where the message actually is (the new
  queue or the legacy Queue Service) agree, once each.
- Redis down: a submission carrying its own eval_id cannot be told apart
  from a resubmission, so it is refused with 503 + Retry-After (the
  default), or sent to legacy unchecked with ACCEPT_UNCHECKED_EVAL_IDS=true
  (counted); a resubmission during the same outage is known from the
  records held in memory; generated eval_ids are fresh and go to legacy.
- A ceiling on the new queue (CELERY_QUEUE_MAX_DEPTH): beyond it a
  submission falls back (or gets 503 + Retry-After), counted.
The fault test tests/faults/test_redis_stalls.py counts executions at the
executor under repeated stalls."""
import json
import os
import signal
import threading
import time
import uuid

from fixtures_turnout import QUEUE, SEP, decode_celery_body, http_session, msum, mval, wait_until


def route_record(r, eval_id):
    raw = r.get(f"turnout:route:{eval_id}")
    return json.loads(raw) if raw else None


def queued_eval_ids(redis_server):
    out = []
    for msgs in redis_server.queue_messages().values():
        for env in msgs:
            out.append(decode_celery_body(env)[0][0])
    return out


def legacy_ids(legacyd, ids):
    """The ids among `ids` the legacy Queue Service knows."""
    return {e for e in ids if legacyd.session.get(f"{legacyd.url}/tasks/{e}", timeout=5).status_code == 200}


def test_a_redis_stall_never_runs_an_eval_on_both_paths(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, REDIS_TIMEOUT_MS=500)
    replies, errors, lock, stop = [], [], threading.Lock(), threading.Event()

    def client(k):
        s = http_session()
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            eid = f"st{k}-{n}-{uuid.uuid4().hex[:6]}"
            try:
                r = s.post(p.url("/api/eval"), json={"code": "print(1)", "eval_id": eid}, timeout=15)
            except Exception as e:  # noqa: BLE001 - a failed request is a finding
                errors.append(repr(e))
                continue
            with lock:
                replies.append((eid, r.status_code, r.json(), r.headers.get("Retry-After")))
            time.sleep(0.01)
        s.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(2):
            os.kill(redis_server.mp.pid, signal.SIGSTOP)
            time.sleep(0.9)   # well past REDIS_TIMEOUT_MS: in-flight scripts time out in Redis's buffer
            os.kill(redis_server.mp.pid, signal.SIGCONT)
            time.sleep(0.8)
    finally:
        os.kill(redis_server.mp.pid, signal.SIGCONT)
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:5]
    time.sleep(0.5)   # the last held records are written
    r = redis_server.client()
    accepted = {e: b for e, code, b, _ in replies if code == 202}
    refused = [(e, b, ra) for e, code, b, ra in replies if code != 202]
    for e, b, ra in refused:
        assert b.get("error") in ("outcome_unknown", "eval_id_unchecked") and ra, (e, b, ra)
    assert accepted, "nothing was accepted"
    queued = queued_eval_ids(redis_server)
    assert len(queued) == len(set(queued)), "a message was queued twice"
    on_legacy = legacy_ids(legacyd, [e for e, *_ in replies])
    wrong = []
    for e, b in accepted.items():
        rec = route_record(r, e)
        ran_new, ran_legacy = e in queued, e in on_legacy
        if not (rec and rec["path"] == b["path"] and ran_new == (b["path"] == "new")
                and ran_legacy == (b["path"] == "legacy")):
            wrong.append((e, b["path"], b.get("reason"), rec and rec["path"], ran_new, ran_legacy))
    assert not wrong, f"{len(wrong)} of {len(accepted)} accepted evals disagree (told, record, new, legacy): " \
                      f"{wrong[:10]}\n{p.log(40)}"
    # nothing that was refused ran anywhere
    ran_refused = [e for e, *_ in refused if e in queued or e in on_legacy]
    assert not ran_refused, ran_refused[:10]
    m = p.metrics()
    settled = msum(m, "turnout_new_path_outcome_checks_total")
    assert settled > 0, f"no submission had its lost reply settled: the stalls did not bite\n{p.log(40)}"
    assert mval(m, "turnout_in_flight_requests", path="new") == 0
    r.close()
    print(f"\nstalls: {len(replies)} replies, {len(accepted)} accepted "
          f"({sum(1 for b in accepted.values() if b['path'] == 'new')} new), {len(refused)} refused; "
          f"settled {settled:.0f}")


def test_client_eval_id_is_refused_while_redis_is_down_by_default(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, REDIS_TIMEOUT_MS=300)
    first = p.submit(eval_id="idem-1")
    assert first.status_code == 202 and first.json()["path"] == "new", first.text
    redis_server.stop()
    again = p.submit(eval_id="idem-1")
    assert again.status_code == 503, again.text
    assert again.json()["error"] == "eval_id_unchecked" and "ACCEPT_UNCHECKED_EVAL_IDS" in again.json()["message"]
    assert int(again.headers["Retry-After"]) >= 1
    fresh = p.submit(eval_id="idem-2")
    assert fresh.status_code == 503 and fresh.json()["error"] == "eval_id_unchecked", fresh.text
    # a generated eval_id cannot be a resubmission: it falls back to legacy
    gen = p.submit()
    assert gen.status_code == 202 and gen.json()["path"] == "legacy" and gen.json()["reason"] == "fallback", gen.text
    assert legacyd.status()["total_tasks"] == 1, "a refused submission reached legacy"
    m = p.metrics()
    assert mval(m, "turnout_rejected_requests_total", reason="eval_id_unchecked") == 2
    assert mval(m, "turnout_unchecked_submissions_total") == 0
    redis_server.start()
    wait_until(lambda: p.submit(eval_id="idem-1").json().get("duplicate") is True, 10,
               "the resubmission answered as a duplicate once Redis is back", [p.mp])
    dup = p.submit(eval_id="idem-1").json()
    assert dup["path"] == "new", dup


def test_accept_unchecked_eval_ids_prefers_availability(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, REDIS_TIMEOUT_MS=300, ACCEPT_UNCHECKED_EVAL_IDS=True)
    assert p.submit(eval_id="avail-1").json()["path"] == "new"
    redis_server.stop()
    again = p.submit(eval_id="avail-1")
    # documented: with availability chosen, an eval_id routed new before the
    # outage runs again on legacy
    assert again.status_code == 202 and again.json()["path"] == "legacy" and again.json()["duplicate"] is False
    # but a resubmission within the outage is known from the held records
    third = p.submit(eval_id="avail-1")
    assert third.status_code == 202 and third.json()["duplicate"] is True and third.json()["path"] == "legacy"
    assert legacyd.status()["total_tasks"] == 1
    assert mval(p.metrics(), "turnout_unchecked_submissions_total") == 1
    assert mval(p.metrics(), "turnout_rejected_requests_total", reason="eval_id_unchecked") == 0


def test_new_queue_ceiling_falls_back_and_is_counted(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, CELERY_QUEUE_MAX_DEPTH=3)
    paths = [p.submit(priority=pr).json() for pr in ("high", "default", "low", "default", "high")]
    assert [b["path"] for b in paths] == ["new", "new", "new", "legacy", "legacy"], paths
    assert all(b["reason"] == "fallback" for b in paths[3:]), paths
    assert sum(redis_server.queue_lengths()) == 3
    m = p.metrics()
    assert mval(m, "turnout_upstream_errors_total", path="new", reason="queue_full") == 2
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="fallback") == 2
    assert "CELERY_QUEUE_MAX_DEPTH" in p.log(100)


def test_new_queue_ceiling_without_fallback_is_503(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, CELERY_QUEUE_MAX_DEPTH=1, FALLBACK_TO_LEGACY=False)
    assert p.submit().status_code == 202
    r = p.submit()
    assert r.status_code == 503 and r.json()["error"] == "no_path_available", r.text
    assert "CELERY_QUEUE_MAX_DEPTH=1" in r.json()["message"] and int(r.headers["Retry-After"]) >= 1
    assert mval(p.metrics(), "turnout_rejected_requests_total", reason="no_path") == 1
    assert legacyd.status()["total_tasks"] == 0
    # a batch is held to the same ceiling, item by item
    b = p.post("/api/eval-batch", json={"evaluations": [{"code": "print(1)"}] * 3})
    assert b.status_code in (200, 202, 207, 503), b.text
    assert sum(redis_server.queue_lengths()) == 1


def test_a_duplicate_reply_carries_the_evals_state_now(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    first = p.submit(eval_id="dupst-1").json()
    assert first["path"] == "new" and first["status"] == "queued"
    again = p.submit(eval_id="dupst-1").json()
    assert again["duplicate"] is True and again["status"] == "queued", again
    r = redis_server.client()
    try:
        r.set("turnout:running:celery-dupst-1", "http://127.0.0.1:1")
        assert p.submit(eval_id="dupst-1").json()["status"] == "running"
        r.set("celery-task-meta-celery-dupst-1", json.dumps({
            "status": "SUCCESS", "task_id": "celery-dupst-1", "traceback": None, "children": [],
            "date_done": "2026-12-02T07:00:00.000000",
            "result": {"eval_id": "dupst-1", "status": "failed", "output": "", "error": "boom", "exit_code": 1}}))
        again = p.submit(eval_id="dupst-1")
        assert again.status_code == 202, again.text
        again = again.json()
        assert again["status"] == "failed" and again["duplicate"] is True, again
    finally:
        r.close()
    # legacy: the Queue Service says where it is
    p0 = proxy_factory(CELERY_ENABLED=False)
    assert p0.submit(eval_id="dupst-2").json()["path"] == "legacy"
    assert p0.submit(eval_id="dupst-2").json()["status"] == "queued"
    assert p0.post("/api/eval/dupst-2/cancel").status_code == 200
    again = p0.submit(eval_id="dupst-2").json()
    assert again["duplicate"] is True and again["status"] == "cancelled" and again["path"] == "legacy", again


def test_start_with_redis_unreachable_says_so(proxy_factory):
    p = proxy_factory(CELERY_BROKER_URL="redis://127.0.0.1:1/0", LEGACY_QUEUE_URL="http://127.0.0.1:1",
                      CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    wait_until(lambda: "redis unreachable" in p.log(50), 5, "the Redis warning", [p.mp])
    log = p.log(50)
    assert 'msg="redis unreachable; retrying until it answers" redis=broker address=127.0.0.1:1' in log, log
    assert log.count("redis unreachable; retrying until it answers\" redis=broker") == 1, "once per outage"
    r = p.get("/readyz")
    assert r.status_code == 503 and set(r.json()["down"]) == {"redis", "legacy"}, r.text


def test_a_legacy_call_that_may_have_acted_pins_the_eval_id_to_legacy(proxy_factory, redis_server, legacyd):
    """The legacy Queue Service stalls (SIGSTOP) past LEGACY_TIMEOUT_MS with
    the submission in its input buffer: the client gets 504, and legacy takes
    it when it resumes.  The route record stays (unconfirmed), so a
    resubmission, even after the rollout moved the eval_id's bucket to the
    new path, goes to legacy again, which already has it: a duplicate on
    legacy, never a second run on the new path."""
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0, LEGACY_TIMEOUT_MS=300, ADMIN_TOKEN="t")
    os.kill(legacyd.mp.pid, signal.SIGSTOP)
    try:
        r = p.submit(eval_id="pin-1")
    finally:
        os.kill(legacyd.mp.pid, signal.SIGCONT)
    assert r.status_code == 504 and r.json()["error"] == "legacy_timeout", r.text
    assert "may have been queued" in r.json()["message"] and "pin-1" in r.json()["message"]
    wait_until(lambda: legacy_ids(legacyd, ["pin-1"]), 5, "legacy took the stalled submission", [legacyd.mp])
    rc = redis_server.client()
    try:
        rec = route_record(rc, "pin-1")
        assert rec and rec["path"] == "legacy" and rec["unconfirmed"] is True, rec
    finally:
        rc.close()
    # the whole new path now
    assert p.session.put(p.url("/admin/rollout"), json={"percentage": 1, "enabled": True},
                         headers={"Authorization": "Bearer t"}, timeout=10).status_code == 200
    again = p.submit(eval_id="pin-1")
    assert again.status_code == 202, again.text
    assert again.json()["path"] == "legacy" and again.json()["duplicate"] is True, again.text
    assert sum(redis_server.queue_lengths()) == 0, "the eval_id ran on the new path as well"
    assert legacyd.status()["total_tasks"] == 1
    rc = redis_server.client()
    try:
        rec = route_record(rc, "pin-1")
        assert "unconfirmed" not in rec, rec   # confirmed by legacy's 409
        assert rc.zscore("turnout:inflight:legacy", "pin-1") is not None
    finally:
        rc.close()
    # a legacy call that never got out (connect refused) leaves nothing behind
    legacyd.stop()
    r = p.session.put(p.url("/admin/rollout"), json={"percentage": 0}, headers={"Authorization": "Bearer t"},
                      timeout=10)
    assert r.status_code == 200
    r = p.submit(eval_id="pin-2")
    assert r.status_code == 502 and "may have been queued" not in r.json()["message"], r.text
    rc = redis_server.client()
    try:
        assert route_record(rc, "pin-2") is None, "a refused connection kept its claim"
    finally:
        rc.close()
