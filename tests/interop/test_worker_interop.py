"""Interop: Python Celery 5.2 (Debian's python3-celery) as the producer and
client of turnout-worker (issue 3; WIRE.md §A-§D): a `send_task` from a
Celery app is run by turnout-worker and `AsyncResult.get()` reads its result;
Celery's `control.revoke` (the pidbox broadcast) stops a running evaluation
and a retry-pending one."""
import gc
import json
import time
import uuid

import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

from fixtures_turnout import free_port, wait_until

QUEUE = "evaluation"


@pytest.fixture
def celery_app(redis_server):
    app = Celery("interop-producer", broker=redis_server.url, backend=redis_server.url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True, result_extended=True)
    yield app
    # AsyncResult objects unsubscribe when collected: do it while the test's
    # redis still runs, or a later test waits on reconnect attempts.
    gc.collect()
    app.close()


def get_meta(redis_server, tid):
    c = redis_server.client()
    try:
        raw = c.get(f"celery-task-meta-{tid}")
        return json.loads(raw) if raw else None
    finally:
        c.close()


def test_send_task_runs_on_turnout_worker(celery_app, executor_factory, worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    eval_id = f"py-{uuid.uuid4().hex[:10]}"
    r = celery_app.send_task("tasks.evaluate_code", args=[eval_id, "print('from python celery')", "python"],
                             queue=QUEUE)
    try:
        res = r.get(timeout=20)
    except Exception as e:  # noqa: BLE001 - show the worker's log with it
        pytest.fail(f"AsyncResult.get() raised {e!r}\n{w.describe()}\n{ex.describe()}", pytrace=False)
    assert isinstance(res, dict), res
    assert res["eval_id"] == eval_id, res
    assert res["status"] == "completed", res
    assert "from python celery" in res["output"], res
    assert r.state == "SUCCESS" and r.successful()
    # kwargs and a priority from Celery are honoured too
    eval_id2 = f"py-{uuid.uuid4().hex[:10]}"
    r2 = celery_app.send_task("tasks.evaluate_code", args=[eval_id2, "raise KeyError('k')", "python"],
                              kwargs={"timeout": 10, "engine": "docker"}, queue=QUEUE, priority=6)
    res2 = r2.get(timeout=20)
    assert res2["status"] == "failed" and "KeyError" in res2["error"], res2


def test_celery_revoke_terminate_stops_running_eval(celery_app, redis_server, executor_factory,
                                                    worker_factory):
    ex = executor_factory()
    w = worker_factory(ex)
    eval_id = f"py-{uuid.uuid4().hex[:10]}"
    r = celery_app.send_task("tasks.evaluate_code",
                             args=[eval_id, "import time\ntime.sleep(30)\nprint('x')", "python"],
                             kwargs={"timeout": 60}, queue=QUEUE)
    wait_until(lambda: ex.capacity()["running"] == 1, 10, "the eval running on the executor", [w.mp, ex.mp])
    t0 = time.monotonic()
    celery_app.control.revoke(r.id, terminate=True)
    wait_until(lambda: (get_meta(redis_server, r.id) or {}).get("status") == "REVOKED", 5,
               f"REVOKED after control.revoke (now {get_meta(redis_server, r.id)})", [w.mp, ex.mp])
    assert time.monotonic() - t0 < 5
    assert r.state == "REVOKED"
    meta = get_meta(redis_server, r.id)
    assert meta["result"]["exc_message"] == ["terminated"], meta
    with pytest.raises(TaskRevokedError):
        r.get(timeout=5)
    wait_until(lambda: ex.capacity()["running"] == 0, 3, "the execution killed", [ex.mp])


def test_celery_revoke_of_retry_pending_eval(celery_app, redis_server, executor_factory, worker_factory):
    """A revoke broadcast while the eval waits for its retry: it ends REVOKED
    (as a Python worker stores it when the ETA comes) and never runs."""
    dead_port = free_port()
    w = worker_factory(f"http://127.0.0.1:{dead_port}", RETRY_NETWORK_BASE_S=1.5, RETRY_NETWORK_MAX=3,
                       RETRY_JITTER=False)
    eval_id = f"py-{uuid.uuid4().hex[:10]}"
    r = celery_app.send_task("tasks.evaluate_code", args=[eval_id, "print('must not run')", "python"],
                             queue=QUEUE)
    wait_until(lambda: r.state == "RETRY", 10, "RETRY state", [w.mp])
    celery_app.control.revoke(r.id)
    ex = executor_factory(port=dead_port)
    wait_until(lambda: (get_meta(redis_server, r.id) or {}).get("status") == "REVOKED", 8,
               f"REVOKED after control.revoke of a retry-pending task (now {get_meta(redis_server, r.id)})",
               [w.mp, ex.mp])
    time.sleep(1.0)
    assert get_meta(redis_server, r.id)["status"] == "REVOKED"
    m = w.metrics()
    assert sum(v for (n, ls), v in m.items()
               if n == "turnout_worker_executor_requests_total" and dict(ls).get("outcome") == "ok") == 0
