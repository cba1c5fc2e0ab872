"""Interop: a real Celery 5.2 worker (Debian's python3-celery, prefork pool)
runs the messages turnout-proxy LPUSHed, stores SUCCESS in
celery-task-meta-celery-<eval_id>, and honours the kombu priority lists
(WIRE.md §A-§C; DESIGN §5)."""
import json
import signal
from pathlib import Path

import pytest

from fixtures_turnout import ManagedProcess, base_env, mval, priority_lists, wait_until

HERE = Path(__file__).resolve().parent
RESULT_WAIT_S = 60


@pytest.fixture
def celery_worker(redis_server, tmp_path):
    """start() -> ManagedProcess of a real Celery worker on queue `evaluation`
    (prefork, one process), in its own session so the whole group can be
    stopped: SIGTERM (warm shutdown), then SIGKILL of the group."""
    started = []

    def start(name="interop"):
        env = base_env()
        env.update({"BROKER": redis_server.url, "BACKEND": redis_server.url,
                    "PYTHONDONTWRITEBYTECODE": "1", "C_FORCE_ROOT": "1"})
        argv = ["/usr/bin/python3", "-m", "celery", "-A", "tasks_eval", "worker",
                "-Q", "evaluation", "-P", "prefork", "-c", "1", "--loglevel=info",
                "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat"]
        mp = ManagedProcess(f"celery-worker:{name}", argv, env,
                            tmp_path / f"worker-{name}.log", cwd=str(HERE),
                            new_session=True).start()
        started.append(mp)
        return mp

    yield start
    for mp in started:
        mp.stop(signal.SIGTERM, 10)
        mp.forget()


def wait_results(redis_server, eval_ids, worker, timeout=RESULT_WAIT_S):
    """{eval_id: result record} once every celery-task-meta-celery-<id> is ready."""
    c = redis_server.client()

    def all_ready():
        out = {}
        for eid in eval_ids:
            raw = c.get(f"celery-task-meta-celery-{eid}")
            if raw is None:
                return None
            rec = json.loads(raw)
            if rec.get("status") not in ("SUCCESS", "FAILURE", "REVOKED"):
                return None
            out[eid] = rec
        return out
    try:
        return wait_until(all_ready, timeout,
                          f"Celery results for {len(eval_ids)} evals {eval_ids[:5]}...",
                          [worker], interval=0.2)
    finally:
        c.close()


def submit_new(p, eval_id, **fields):
    body = {"code": "print('hi')", "language": "python", "eval_id": eval_id}
    body.update(fields)
    r = p.post("/api/eval", json=body)
    assert r.status_code == 202, f"{eval_id}: {r.status_code} {r.text}\n{p.log(40)}"
    assert r.json()["path"] == "new", r.json()
    return r.json()


def test_real_celery_worker_runs_proxy_messages(proxy_factory, redis_server, celery_worker):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    evals = {
        "interop-1": {"code": "print('hi')"},
        "interop-2": {"code": 'print("héllo ✓")\n', "timeout": 45, "priority": "high"},
        "interop-3": {"code": "x = 1\n" * 100, "priority": "low", "engine": "docker"},
        "interop-4": {"code": "pass", "priority": 9, "timeout": 900},
        "interop-5": {"code": "import sys\nprint(sys.version)", "priority": False},
    }
    for eid, fields in evals.items():
        submit_new(p, eid, **fields)
    assert sum(redis_server.queue_lengths()) == len(evals)

    worker = celery_worker()
    results = wait_results(redis_server, list(evals), worker)
    for eid, fields in evals.items():
        rec = results[eid]
        assert rec["status"] == "SUCCESS", f"{eid}: {rec}\n{worker.describe()}"
        assert rec["task_id"] == f"celery-{eid}", rec
        code = fields["code"]
        assert rec["result"] == {
            "eval_id": eid, "status": "completed", "output": f"ran {len(code)} bytes",
            "language": "python", "timeout": fields.get("timeout", 30),
            "engine": fields.get("engine", "docker"),
        }, rec
    assert sum(redis_server.queue_lengths()) == 0
    assert worker.running(), f"worker died\n{worker.describe()}"
    log = worker.log(0)
    for bad in ("Unrecoverable error", "Received unregistered task", "InvalidTaskError"):
        assert bad not in log, f"worker log has {bad!r}\n{worker.describe()}"
    # a worker that is already running takes new submissions too
    submit_new(p, "interop-late")
    rec = wait_results(redis_server, ["interop-late"], worker)["interop-late"]
    assert rec["status"] == "SUCCESS", rec
    # the results Celery itself wrote and published feed the proxy's status
    # and its completion metrics (issue 4)
    codes = {**{eid: fields["code"] for eid, fields in evals.items()}, "interop-late": "print('hi')"}
    for eid, code in codes.items():
        st = p.get(f"/api/eval-status/{eid}").json()
        assert st["status"] == "completed" and st["path"] == "new" and st["success"] is True, st
        assert st["output"] == f"ran {len(code)} bytes", st
    wait_until(lambda: mval(p.metrics(), "turnout_evals_completed_total", path="new", outcome="completed")
               == len(evals) + 1, 10, "Celery completions counted", [p.mp])
    assert mval(p.metrics(), "turnout_eval_completion_seconds_count", path="new") == len(evals) + 1


def test_backlog_runs_high_then_default_then_low(proxy_factory, redis_server, celery_worker):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    c = redis_server.client()
    c.delete("interop:order")
    order = [("low-1", "low"), ("default-1", "default"), ("high-1", "high"),
             ("low-2", "low"), ("high-2", "high"), ("default-2", "default")]
    for eid, prio in order:
        submit_new(p, eid, priority=prio)
    lens = redis_server.queue_lengths()
    assert lens == [2, 2, 2, 0], f"lists {priority_lists()} hold {lens}"

    worker = celery_worker()
    results = wait_results(redis_server, [e for e, _ in order], worker)
    bad = {e: r for e, r in results.items() if r["status"] != "SUCCESS"}
    assert not bad, f"{bad}\n{worker.describe()}"
    ran = [x.decode() for x in c.lrange("interop:order", 0, -1)]
    assert ran == ["high-1", "high-2", "default-1", "default-2", "low-1", "low-2"], \
        f"run order {ran}\n{worker.describe()}"
    c.close()


def test_generated_eval_id_result_is_published(proxy_factory, redis_server, celery_worker):
    """A generated eval_id makes a valid task id too, and the SUCCESS record
    is published on the channel named like the key (WIRE.md §C)."""
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    r = p.post("/api/eval", json={"code": "print(3)"})
    assert r.status_code == 202 and r.json()["path"] == "new", r.text
    eid = r.json()["eval_id"]
    c = redis_server.client()
    ps = c.pubsub()
    ps.subscribe(f"celery-task-meta-celery-{eid}")
    worker = celery_worker()
    rec = wait_results(redis_server, [eid], worker)[eid]
    assert rec["status"] == "SUCCESS" and rec["result"]["eval_id"] == eid, rec
    got = None
    for _ in range(50):
        m = ps.get_message(timeout=0.1)
        if m and m["type"] == "message":
            got = json.loads(m["data"])
            break
    assert got is not None and got["status"] == "SUCCESS", got
    ps.close()
    c.close()
