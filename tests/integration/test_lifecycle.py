"""One evaluation followed wherever it went (issue 4): route records,
idempotent submissions, status and cancel on both paths (also after a proxy
restart), batches, queue status, per-path completion metrics, and records
written during a Redis outage.  Real redis-server, real turnout binaries.
Contracts: shared/DESIGN.md §3–§5, §9; docs/records.md."""
import re
import json
import time

import pytest

from fixtures_turnout import (
    Legacyd, expected_path, mval, msum, priority_lists, series, wait_until,
)

OUTCOMES = ("completed", "failed", "timeout", "cancelled")
STATUS_FIELDS = {"eval_id", "status", "path", "created_at", "completed_at", "output", "error",
                 "exit_code", "success"}


def route_record(r, eval_id):
    raw = r.get(f"turnout:route:{eval_id}")
    return json.loads(raw) if raw else None


def status_of(proxy, eval_id, want=200):
    resp = proxy.get(f"/api/eval-status/{eval_id}")
    assert resp.status_code == want, f"status {eval_id}: {resp.status_code} {resp.text}\n{proxy.log(30)}"
    body = resp.json()
    if want == 200:
        assert STATUS_FIELDS <= set(body), body
        assert body["eval_id"] == eval_id, body
        assert body["status"] in ("queued", "running", "retrying") + OUTCOMES, body
        # the other spelling answers the same
        other = proxy.get(f"/api/eval/{eval_id}")
        assert other.status_code == 200 and other.json()["path"] == body["path"], other.text
    return body


def wait_status(proxy, eval_id, statuses, timeout=30):
    return wait_until(lambda: (lambda b: b if b["status"] in statuses else None)(status_of(proxy, eval_id)),
                      timeout, f"{eval_id} reaches {statuses}", [proxy.mp])


# --------------------------------------------------------------- idempotency

@pytest.mark.parametrize("path", ["new", "legacy"])
def test_same_eval_id_twice_enqueues_once(proxy_factory, redis_server, legacyd, path):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1 if path == "new" else 0)
    r = redis_server.client()
    first = p.submit(eval_id=f"idem-{path}", code="print(1)")
    assert first.status_code == 202 and first.json()["path"] == path, first.text
    assert first.json()["duplicate"] is False
    rec = route_record(r, f"idem-{path}")
    assert rec["path"] == path and rec["eval_id"] == f"idem-{path}", rec
    assert abs(rec["submitted_at"] - time.time()) < 60 and rec["priority"] == 3, rec
    ttl = r.ttl(f"turnout:route:idem-{path}")
    assert 0 < ttl <= 604800, ttl
    for _ in range(3):
        again = p.submit(eval_id=f"idem-{path}", code="print(2)")
        assert again.status_code == 202, again.text
        body = again.json()
        assert body["duplicate"] is True and body["path"] == path, body
        assert again.headers["X-Turnout-Path"] == path
        assert body["created_at"].startswith(time.strftime("%Y-", time.gmtime())), body
    if path == "new":
        assert sum(redis_server.queue_lengths()) == 1
        assert r.zcard("turnout:inflight:new") == 1
    else:
        assert legacyd.status()["total_tasks"] == 1
        wait_until(lambda: r.zscore("turnout:inflight:legacy", "idem-legacy") is not None, 5,
                   "legacy eval tracked")
    m = p.metrics()
    assert mval(m, "turnout_duplicate_submissions_total", path=path) == 3
    assert msum(m, "turnout_routing_decisions_total") == 1, "duplicates are not routed again"
    r.close()


def test_duplicate_seen_by_another_proxy_and_legacy_conflict(proxy_factory, redis_server, legacyd):
    r = redis_server.client()
    p1 = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    p2 = proxy_factory(CELERY_ENABLED=False)  # would send it to legacy
    assert p1.submit(eval_id="shared-1").json()["path"] == "new"
    b = p2.submit(eval_id="shared-1").json()
    assert b["duplicate"] is True and b["path"] == "new", b
    assert legacyd.status()["total_tasks"] == 0
    # an eval the legacy service has but turnout never recorded: legacy says
    # 409, and that is a duplicate on the legacy path, recorded from now on
    resp = legacyd.session.post(legacyd.url + "/tasks", json={
        "eval_id": "direct-1", "code": "print(1)", "language": "python", "engine": "docker",
        "timeout": 30, "priority": "default"})
    assert resp.status_code == 201, resp.text
    b = p2.submit(eval_id="direct-1").json()
    assert b["duplicate"] is True and b["path"] == "legacy", b
    assert route_record(r, "direct-1")["path"] == "legacy"
    assert legacyd.status()["total_tasks"] == 1
    r.close()


def test_failed_legacy_call_releases_the_record(proxy_factory, redis_server, legacyd):
    r = redis_server.client()
    legacyd.stop()
    p = proxy_factory()
    resp = p.submit(eval_id="lost-1")
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"] == "legacy_error"
    assert r.get("turnout:route:lost-1") is None, "a submission that failed must not block a retry"
    legacyd.start()
    resp = p.submit(eval_id="lost-1")
    assert resp.status_code == 202 and resp.json()["duplicate"] is False, resp.text
    r.close()


# --------------------------------------------------------------- status and cancel

def test_status_and_cancel_on_both_paths_survive_a_proxy_restart(proxy_factory, redis_server, legacyd):
    r = redis_server.client()
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    assert p.submit(eval_id="n-1").json()["path"] == "new"
    assert p.submit(eval_id="n-2").json()["path"] == "new"
    p.stop()
    # the same Redis, a new process with everything going to legacy now
    p = proxy_factory(CELERY_ENABLED=False)
    assert p.submit(eval_id="l-1").json()["path"] == "legacy"
    assert p.submit(eval_id="l-2").json()["path"] == "legacy"
    p.stop()
    p = proxy_factory(CELERY_ENABLED=False)

    n1 = status_of(p, "n-1")
    assert n1["status"] == "queued" and n1["path"] == "new" and n1["success"] is None, n1
    assert n1["created_at"] and n1["completed_at"] is None and n1["priority"] == 3, n1
    l1 = status_of(p, "l-1")
    assert l1["status"] == "queued" and l1["path"] == "legacy" and l1["queue_position"] == 1, l1

    # cancel each path's queued eval
    c = p.post("/api/eval/n-1/cancel")
    assert c.status_code == 200 and c.json()["previous_status"] == "queued", c.text
    c = p.post("/api/eval/l-1/cancel")
    assert c.status_code == 200, c.text
    assert c.json() == {"eval_id": "l-1", "previous_status": "queued", "cancelled": True,
                        "message": "removed from the legacy queue; it will not run"}
    assert legacyd.task("l-1").json()["status"] == "cancelled"
    for eid, path in (("n-1", "new"), ("l-1", "legacy")):
        b = status_of(p, eid)
        assert b["status"] == "cancelled" and b["path"] == path and b["success"] is False, b
        assert b["completed_at"], b
        again = p.post(f"/api/eval/{eid}/cancel")
        assert again.status_code == 409, again.text
        assert again.json()["previous_status"] == "cancelled" and again.json()["cancelled"] is False
    assert route_record(r, "n-2")["path"] == "new"

    # metrics label the cancel and status requests with the eval's path
    m = p.metrics()
    assert mval(m, "turnout_requests_total", route="cancel", path="legacy", code="200") == 1
    assert mval(m, "turnout_requests_total", route="cancel", path="new", code="200") == 1
    assert mval(m, "turnout_requests_total", route="status", path="legacy", code="200") >= 2
    r.close()


def test_unknown_ids_and_lookups_without_a_record(proxy_factory, redis_server, legacyd):
    r = redis_server.client()
    p = proxy_factory()
    body = status_of(p, "nobody", want=404)
    assert body["error"] == "not_found" and "either path" in body["message"], body
    c = p.post("/api/eval/nobody/cancel")
    assert c.status_code == 404 and c.json()["error"] == "not_found", c.text
    assert r.get("turnout:revoked:celery-nobody") is None, "no revoke for an id nobody knows"
    # on legacy only (submitted around the proxy): found by asking legacy
    legacyd.session.post(legacyd.url + "/tasks", json={
        "eval_id": "around-1", "code": "print(1)", "language": "python", "engine": "docker",
        "timeout": 30, "priority": "default"})
    b = status_of(p, "around-1")
    assert b["path"] == "legacy" and b["status"] == "queued" and b["routed"] is False, b
    # on the new path only (a Celery result nobody routed): found in Redis
    r.set("celery-task-meta-celery-res-1", json.dumps({
        "status": "SUCCESS", "result": {"eval_id": "res-1", "status": "completed", "output": "hi\n",
                                        "error": None, "exit_code": 0, "executor": "x", "duration_s": 0.1},
        "traceback": None, "children": [], "date_done": "2026-11-22T08:42:30.022342",
        "task_id": "celery-res-1"}))
    b = status_of(p, "res-1")
    assert b == {**b, "path": "new", "status": "completed", "output": "hi\n", "exit_code": 0,
                 "success": True, "completed_at": "2026-11-22T08:42:30.022342"}, b
    # bad ids and methods
    bad = p.get("/api/eval-status/bad%20id")
    assert bad.status_code == 422 and "eval_id" in bad.json()["message"], bad.text
    assert p.post("/api/eval-status/x").status_code == 405
    r.close()


def test_legacy_running_cannot_be_cancelled(proxy_factory, redis_server, executor_factory, tmp_path):
    ex = executor_factory()
    busy = Legacyd(tmp_path / "busy", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
    try:
        p = proxy_factory(LEGACY_QUEUE_URL=busy.url)
        resp = p.submit(eval_id="slow-1", code="import time\ntime.sleep(20)\n", timeout=60)
        assert resp.json()["path"] == "legacy", resp.text
        wait_status(p, "slow-1", {"running"}, 15)
        for q in ("", "?terminate=true"):
            c = p.post(f"/api/eval/slow-1/cancel{q}")
            assert c.status_code == 409, c.text
            assert c.json()["error"] == "running" and "legacy" in c.json()["message"], c.text
        assert status_of(p, "slow-1")["status"] == "running"
    finally:
        err = busy.cleanup()
    assert err is None, err


# --------------------------------------------------------------- batch and queue status

def test_batch_of_100_splits_by_the_rule(proxy_factory, redis_server, legacyd):
    pct = 0.5
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    ids = [f"batch-{i}" for i in range(100)]
    items = [{"eval_id": e, "code": f"print({i})"} for i, e in enumerate(ids)]
    items[7]["priority"] = "high"
    resp = p.post("/api/eval-batch", json={"evaluations": items})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == 100 and body["accepted"] == 100 and body["rejected"] == 0, body
    want = {e: expected_path(e, pct) for e in ids}
    got = {res["eval_id"]: res["path"] for res in body["results"]}
    assert got == want
    assert [res["index"] for res in body["results"]] == list(range(100))
    n_new = sum(1 for v in want.values() if v == "new")
    assert body["paths"] == {"new": n_new, "legacy": 100 - n_new}, body
    assert 20 < n_new < 80
    # batch priority 9 unless the item says otherwise
    lens = dict(zip(priority_lists(), redis_server.queue_lengths()))
    high = 1 if want["batch-7"] == "new" else 0
    assert lens[priority_lists()[3]] == n_new - high and lens[priority_lists()[0]] == high, lens
    assert legacyd.status()["total_tasks"] == 100 - n_new
    # the same batch again: all duplicates, nothing enqueued
    again = p.post("/api/eval-batch", json={"evaluations": items}).json()
    assert again["duplicates"] == 100 and all(x["duplicate"] for x in again["results"]), again
    assert sum(redis_server.queue_lengths()) == n_new


def test_batch_validation_per_item_and_whole(proxy_factory):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    resp = p.post("/api/eval-batch", json={"evaluations": [
        {"code": "print(1)", "eval_id": "ok-1"}, {"code": ""}, 5, {"code": "x", "timeout": 0}]})
    assert resp.status_code == 200, resp.text
    res = resp.json()["results"]
    assert res[0]["status_code"] == 202 and res[0]["path"] == "new"
    assert res[1]["status_code"] == 422 and res[1]["field"] == "code", res[1]
    assert res[2]["status_code"] == 422 and "evaluations[2]" in res[2]["message"], res[2]
    assert res[3]["status_code"] == 422 and res[3]["field"] == "timeout", res[3]
    assert resp.json()["accepted"] == 1 and resp.json()["rejected"] == 3
    for bad in ({"evaluations": []}, {"evaluations": [{"code": "x"}] * 101}, {"items": []}, [1]):
        b = p.post("/api/eval-batch", json=bad)
        assert b.status_code == 422 and "evaluations" in b.json()["message"], b.text
    assert p.post("/api/eval-batch", data="{", headers={"Content-Type": "application/json"}).status_code == 400
    assert p.post("/api/eval-batch", data="x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert p.get("/api/eval-batch").status_code == 405
    m = p.metrics()
    assert mval(m, "turnout_requests_total", route="batch", path="none", code="422") == 4


def test_queue_status(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    for i, prio in enumerate(["high", "default", "default", "low"]):
        assert p.submit(eval_id=f"qs-{i}", priority=prio).status_code == 202
    p2 = proxy_factory()
    p2.submit(eval_id="qs-legacy")
    body = p.get("/api/queue-status").json()
    assert body["new"]["depth"] == {"0": 1, "3": 2, "6": 1, "9": 0}, body
    assert body["new"]["queued"] == 4 and body["new"]["queue"] == "evaluation", body
    assert body["new"]["unacked"] == 0 and body["new"]["dlq"] == 0, body
    assert body["legacy"]["queued"] == 1 and body["legacy"]["total_tasks"] == 1, body
    legacyd.stop()
    body = p.get("/api/queue-status")
    assert body.status_code == 200 and body.json()["legacy"]["error"] == "legacy_error", body.text
    assert body.json()["new"]["queued"] == 4


# --------------------------------------------------------------- completion metrics

def test_completion_metrics_count_every_finished_eval_on_both_paths(
        proxy_factory, redis_server, executor_factory, worker_factory, tmp_path):
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    leg = Legacyd(tmp_path / "legacy-run", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
    try:
        worker_factory(ex)
        p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, LEGACY_QUEUE_URL=leg.url,
                          COMPLETION_POLL_S=1)
        # a second proxy on the same Redis hears the same results: still counted once
        p2 = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, LEGACY_QUEUE_URL=leg.url,
                           COMPLETION_POLL_S=1)
        ids = [f"done-{i}" for i in range(24)]
        t0 = time.time()
        paths = {}
        for i, e in enumerate(ids):
            code = "raise SystemExit(3)" if i % 6 == 5 else f"print({i})"
            resp = (p if i % 2 else p2).submit(eval_id=e, code=code)
            assert resp.status_code == 202, resp.text
            paths[e] = resp.json()["path"]
        assert set(paths.values()) == {"new", "legacy"}
        want = {path: sum(1 for v in paths.values() if v == path) for path in ("new", "legacy")}

        def counted():
            ms = [p.metrics(), p2.metrics()]
            got = {path: sum(msum(m, "turnout_evals_completed_total", path=path) for m in ms)
                   for path in ("new", "legacy")}
            return (got, ms) if got == want else None
        got, ms = wait_until(counted, 60, f"completions {want}", [p.mp, p2.mp])
        elapsed = time.time() - t0
        failed = {path: sum(mval(m, "turnout_evals_completed_total", path=path, outcome="failed") for m in ms)
                  for path in ("new", "legacy")}
        want_failed = {path: sum(1 for i, e in enumerate(ids) if i % 6 == 5 and paths[e] == path)
                       for path in ("new", "legacy")}
        assert failed == want_failed, (failed, want_failed)
        for path in ("new", "legacy"):
            n = sum(mval(m, "turnout_eval_completion_seconds_count", path=path) for m in ms)
            s = sum(mval(m, "turnout_eval_completion_seconds_sum", path=path) for m in ms)
            assert n == want[path], (path, n)
            assert 0 < s / n < elapsed + 2, f"{path}: mean {s / n:.3f}s over {elapsed:.1f}s"
        # every status answers with its outcome, and nothing is left unfinished
        for i, e in enumerate(ids):
            b = status_of(p, e)
            assert b["status"] == ("failed" if i % 6 == 5 else "completed"), b
            assert b["path"] == paths[e]
            if b["status"] == "completed":
                assert b["output"].strip() == str(i) and b["success"] is True, b
        r = redis_server.client()
        assert r.zcard("turnout:inflight:new") == 0 and r.zcard("turnout:inflight:legacy") == 0
        for i, e in enumerate(ids):
            rec = route_record(r, e)
            assert rec["outcome"] == ("failed" if i % 6 == 5 else "completed"), rec
            assert rec["submitted_at"] <= rec["completed_at"] <= time.time() + 1, rec
        r.close()
        wait_until(lambda: msum(p.metrics(), "turnout_evals_unfinished") == 0, 10, "unfinished gauge 0")
        # the legacy service restarts and forgets everything: the records still answer
        leg.stop()
        leg.start()
        legacy_ids = [e for e in ids if paths[e] == "legacy"]
        for e in legacy_ids:
            b = status_of(p, e)
            assert b["path"] == "legacy" and b["status"] in ("completed", "failed") and b["completed_at"], b
            c = p.post(f"/api/eval/{e}/cancel")
            assert c.status_code == 409 and c.json()["previous_status"] == b["status"], c.text
    finally:
        err = leg.cleanup()
    assert err is None, err


def test_completion_sweep_finds_results_published_while_unheard(proxy_factory, redis_server):
    """A result written while no proxy listened is found by the sweep."""
    r = redis_server.client()
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, COMPLETION_POLL_S=1)
    assert p.submit(eval_id="quiet-1").status_code == 202
    p.stop()
    r.set("celery-task-meta-celery-quiet-1", json.dumps({
        "status": "FAILURE", "result": {"exc_type": "X", "exc_message": ["boom"], "exc_module": "m"},
        "traceback": None, "children": [], "date_done": time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime()),
        "task_id": "celery-quiet-1"}))
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, COMPLETION_POLL_S=1)
    wait_until(lambda: mval(p.metrics(), "turnout_evals_completed_total", path="new", outcome="failed") == 1,
               10, "swept completion", [p.mp])
    assert r.zcard("turnout:inflight:new") == 0
    b = status_of(p, "quiet-1")
    assert b["status"] == "failed" and b["error"] == "X: boom", b
    # the result expires before the route record: the record kept the outcome
    rec = route_record(r, "quiet-1")
    assert rec["outcome"] == "failed" and rec["completed_at"] > rec["submitted_at"] - 1, rec  # date_done in whole s
    assert r.ttl("turnout:route:quiet-1") > 0, "the record keeps its TTL"
    r.delete("celery-task-meta-celery-quiet-1")
    b = status_of(p, "quiet-1")
    assert b["status"] == "failed" and b["path"] == "new" and b["completed_at"] and b["success"] is False, b
    c = p.post("/api/eval/quiet-1/cancel")
    assert c.status_code == 409 and c.json()["previous_status"] == "failed", c.text
    assert r.get("celery-task-meta-celery-quiet-1") is None, "no REVOKED written over a finished eval"
    r.close()


# --------------------------------------------------------------- Redis outage

def test_records_written_during_a_redis_outage_appear_after_it(proxy_factory, redis_server, legacyd):
    # client-supplied eval_ids during an outage need ACCEPT_UNCHECKED_EVAL_IDS
    # (test_one_path.py covers the default, which refuses them)
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, REDIS_TIMEOUT_MS=300, ACCEPT_UNCHECKED_EVAL_IDS=True)
    assert p.submit(eval_id="before-1").json()["path"] == "new"
    redis_server.stop()
    ids = [f"outage-{i}" for i in range(5)]
    for e in ids:
        resp = p.submit(eval_id=e)
        assert resp.status_code == 202, resp.text
        assert resp.json()["path"] == "legacy" and resp.json()["reason"] == "fallback", resp.text
    # a resubmission during the same outage is answered from the held record
    again = p.submit(eval_id="outage-1")
    assert again.status_code == 202 and again.json()["duplicate"] is True and again.json()["path"] == "legacy", \
        again.text
    m = p.metrics()
    assert mval(m, "turnout_route_records_pending") == 5
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="fallback") == 5
    assert mval(m, "turnout_unchecked_submissions_total") == 5
    assert legacyd.status()["total_tasks"] == 5
    redis_server.start()  # same port, empty (no persistence in tests)
    r = redis_server.client()
    try:
        wait_until(lambda: all(route_record(r, e) for e in ids), 10, "held records written", [p.mp])
        for e in ids:
            rec = route_record(r, e)
            assert rec["path"] == "legacy" and rec["reason"] == "fallback", rec
            assert r.zscore("turnout:inflight:legacy", e) is not None
        wait_until(lambda: mval(p.metrics(), "turnout_route_records_pending") == 0, 5, "pending gauge 0")
        assert mval(p.metrics(), "turnout_route_records_dropped_total") == 0
        # and they answer for the evals now
        assert status_of(p, "outage-0")["path"] == "legacy"
        dup = p.submit(eval_id="outage-0").json()
        assert dup["duplicate"] is True and dup["path"] == "legacy", dup
    finally:
        r.close()


def test_held_records_are_bounded(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, REDIS_TIMEOUT_MS=300, ROUTE_PENDING_MAX=2)
    redis_server.stop()
    ids = []
    for i in range(4):
        r = p.submit()   # generated eval_ids: fresh, so they need no check
        assert r.status_code == 202, r.text
        ids.append(r.json()["eval_id"])
    m = p.metrics()
    assert mval(m, "turnout_route_records_pending") == 2
    assert mval(m, "turnout_route_records_dropped_total") == 2
    # each drop is logged with its eval_id and what it costs
    dropped = [e for e in ids if re.search(rf'msg="route record dropped[^"]*would run again\)"[^\n]*eval_id={e}', p.log(200))]
    assert dropped == ids[2:], p.log(40)
    assert len(series(m, "turnout_evals_completed_total")) == 8, "every path x outcome at zero"


def test_scripts_survive_a_script_flush(proxy_factory, redis_server):
    """Scripts go by SHA1; a Redis that forgot them (SCRIPT FLUSH, restart)
    gets the text once and the submission still succeeds."""
    r = redis_server.client()
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    assert p.submit(eval_id="sha-1").json()["path"] == "new"
    r.script_flush()
    b = p.submit(eval_id="sha-2").json()
    assert b["path"] == "new" and b["duplicate"] is False, b
    assert p.submit(eval_id="sha-2").json()["duplicate"] is True
    assert sum(redis_server.queue_lengths()) == 2
    r.close()


def test_every_script_goes_by_sha_once_known(proxy_factory, redis_server):
    """The first call of a script on a connection sends its text (which loads
    it, and keeps its place among pipelined commands); every later call goes
    by SHA1.  Repeated submissions on both paths, rollout changes and cancels
    add EVALSHA calls only."""
    r = redis_server.client()
    token = "sha-admin-token"
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, ADMIN_TOKEN=token)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def calls():
        st = r.info("commandstats")
        return (st.get("cmdstat_eval", {}).get("calls", 0), st.get("cmdstat_evalsha", {}).get("calls", 0))

    def round_(n):
        for i in range(10):
            assert p.submit(eval_id=f"sha-{n}-{i}").status_code == 202
        for pct in (0.25, 0.5):
            resp = p.session.put(p.url("/admin/rollout"), data=json.dumps({"percentage": pct, "reason": "sha"}),
                                 headers=auth, timeout=10)
            assert resp.status_code == 200, resp.text
        for i in range(10):
            assert p.post(f"/api/eval/sha-{n}-{i}/cancel").status_code in (200, 409)

    round_(0)  # every script this exercises is known on every connection now
    e0, s0 = calls()
    round_(1)
    e1, s1 = calls()
    assert e1 == e0, f"{e1 - e0} scripts sent as text again"
    assert s1 - s0 >= 12, f"only {s1 - s0} calls by SHA1"
    r.close()
