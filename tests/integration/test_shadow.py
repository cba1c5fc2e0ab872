"""Shadow comparison (issue 5): legacy-routed submissions also run on the
new path as shadow-<eval_id>; deterministic programs match, a program that
answers differently on each run mismatches; shadows never reach the client
or the eval's own result, and never slow or fail the real request.  Real
redis-server, turnout-executor, turnout-legacyd, turnout-worker,
turnout-proxy."""
import json

import pytest

from fixtures_turnout import Legacyd, mval, msum, wait_until

READ_TOKEN = "shadow-read-token"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


@pytest.fixture
def shadow_stack(redis_server, executor_factory, worker_factory, proxy_factory, tmp_path):
    legs = []

    def make(**env):
        ex = executor_factory(EXECUTOR_MAX_CONCURRENT=6)
        leg = Legacyd(tmp_path / f"legacyd{len(legs)}", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
        legs.append(leg)
        worker_factory(ex, CELERY_CONCURRENCY=4)
        full = dict(LEGACY_QUEUE_URL=leg.url, SHADOW_PERCENTAGE=1, COMPLETION_POLL_S=1, CELERY_ENABLED=False,
                    READ_TOKEN=READ_TOKEN)
        full.update(env)
        return proxy_factory(**full)

    yield make
    errs = [e for e in (leg.cleanup() for leg in legs) if e]
    assert not errs, errs


def test_shadow_counts_matches_and_mismatches(shadow_stack, redis_server):
    p = shadow_stack()
    r = redis_server.client()
    same = {f"sh-same-{i}": f"print({i})\nprint('  trailing   ')   \n" for i in range(6)}
    diff = {f"sh-diff-{i}": "import random\nprint(random.random())\n" for i in range(3)}
    for eid, code in {**same, **diff}.items():
        resp = p.submit(eval_id=eid, code=code)
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["path"] == "legacy" and "shadow" not in json.dumps(body), body
    wait_until(lambda: msum(p.metrics(), "turnout_shadow_comparisons_total") == len(same) + len(diff), 40,
               "every shadow compared", [p.mp])
    m = p.metrics()
    assert mval(m, "turnout_shadow_comparisons_total", result="match") == len(same)
    assert mval(m, "turnout_shadow_comparisons_total", result="mismatch") == len(diff)
    assert mval(m, "turnout_shadow_comparisons_total", result="error") == 0
    mm = p.get("/admin/shadow/mismatches", headers=READ).json()   # the outputs need the read token
    assert sorted(x["eval_id"] for x in mm["mismatches"]) == sorted(diff), mm
    one = mm["mismatches"][0]
    assert one["differs"] == ["output"], one
    assert one["legacy"]["status"] == "completed" and one["new"]["status"] == "completed", one
    assert one["legacy"]["output"] != one["new"]["output"], one
    assert p.get("/admin/shadow/mismatches?limit=1").json()["mismatches"][0]["eval_id"] == mm["mismatches"][0]["eval_id"]
    # the client's eval is the legacy one, untouched; the shadow has its own result
    for eid in same:
        st = p.get(f"/api/eval-status/{eid}").json()
        assert st["path"] == "legacy" and st["status"] == "completed", st
        assert r.get(f"celery-task-meta-celery-{eid}") is None, "a shadow never writes the eval's result"
        assert json.loads(r.get(f"celery-task-meta-shadow-{eid}"))["status"] == "SUCCESS"
    # completions count the real runs only
    assert mval(m, "turnout_evals_completed_total", path="new", outcome="completed") == 0
    wait_until(lambda: msum(p.metrics(), "turnout_evals_completed_total", path="legacy") == len(same) + len(diff),
               10, "legacy completions")
    assert r.zcard("turnout:inflight:shadow") == 0
    assert not r.keys("turnout:shadow:sh-*"), "compared pairs are removed"
    r.close()


def test_shadow_never_slows_or_fails_the_real_request(shadow_stack, redis_server):
    p = shadow_stack(REDIS_TIMEOUT_MS=300)
    redis_server.stop()
    resp = p.submit()   # a generated eval_id: a client's own would be refused while Redis is away
    assert resp.status_code == 202 and resp.json()["path"] == "legacy", resp.text
    assert resp.elapsed.total_seconds() < 1.0
    assert msum(p.metrics(), "turnout_shadow_comparisons_total") == 0


def test_shadow_percentage_zero_runs_nothing(shadow_stack, redis_server):
    p = shadow_stack(SHADOW_PERCENTAGE=0)
    for i in range(5):
        assert p.submit(eval_id=f"noshadow-{i}").status_code == 202
    r = redis_server.client()
    assert sum(redis_server.queue_lengths()) == 0 and r.zcard("turnout:inflight:shadow") == 0
    r.close()
