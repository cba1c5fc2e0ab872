"""turnout-legacyd, the reference legacy Queue Service (DESIGN §7), driven
over HTTP as a real process; its executor loop (DESIGN §8) against a
stand-in executor."""

import signal
import subprocess
import threading
import time

import pytest
from legacyd_helpers import (LEGACYD, Legacyd, StandInExecutor, clean_env, completed,
                             free_port, wait_until)

@pytest.fixture
def legacyd(tmp_path):
    with Legacyd(tmp_path) as d:
        yield d


def assert_error(r, status, code=None, mentions=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "message"}, body
    if code:
        assert body["error"] == code, body
    if mentions:
        assert mentions in body["message"], body
    return body


# ---------- the protocol ----------

def test_health_and_empty_status(legacyd):
    assert legacyd.get("/health").json() == {"status": "ok"}
    s = legacyd.get("/status").json()
    assert (s["queued"], s["processing"], s["queue_length"], s["total_tasks"]) == (0, 0, 0, 0)
    assert legacyd.get("/tasks/next").json() is None


def test_enqueue_positions_and_fifo(legacyd):
    for i in range(1, 4):
        r = legacyd.submit(f"e{i}", code=f"print({i})")
        assert r.status_code in (200, 201), r.text
        assert r.json()["eval_id"] == f"e{i}"
        assert r.json()["status"] == "queued"
        assert r.json()["position"] == i

    t = legacyd.task("e2").json()
    assert t["status"] == "queued" and t["position"] == 2
    assert t["queued_at"] and t["message"]
    s = legacyd.get("/status").json()
    assert (s["queued"], s["processing"], s["queue_length"], s["total_tasks"]) == (3, 0, 3, 3)

    first = legacyd.get("/tasks/next").json()
    assert first["eval_id"] == "e1"
    assert first["code"] == "print(1)"
    assert first["language"] == "python" and first["engine"] == "docker"
    assert first["timeout"] == 30 and first["priority"] == "default"
    assert legacyd.task("e1").json()["status"] == "processing"
    assert legacyd.task("e1").json()["position"] is None
    assert legacyd.task("e2").json()["position"] == 1
    assert legacyd.task("e3").json()["position"] == 2
    s = legacyd.get("/status").json()
    assert (s["queued"], s["processing"], s["total_tasks"]) == (2, 1, 3)

    assert legacyd.get("/tasks/next").json()["eval_id"] == "e2"
    assert legacyd.get("/tasks/next").json()["eval_id"] == "e3"
    assert legacyd.get("/tasks/next").json() is None


def test_complete_and_fail_keep_results(legacyd):
    legacyd.submit("ok1")
    legacyd.submit("bad1")
    assert legacyd.get("/tasks/next").json()["eval_id"] == "ok1"
    assert legacyd.get("/tasks/next").json()["eval_id"] == "bad1"

    r = legacyd.post("/tasks/ok1/complete", {"output": "1\n", "exit_code": 0})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    r = legacyd.post("/tasks/bad1/fail", {"error": "Traceback: boom"})
    assert r.status_code == 200, r.text

    ok = legacyd.task("ok1").json()
    assert ok["status"] == "completed"
    assert ok["output"] == "1\n" and ok["exit_code"] == 0 and ok["error"] is None
    assert ok["completed_at"]
    bad = legacyd.task("bad1").json()
    assert bad["status"] == "failed" and bad["error"] == "Traceback: boom"
    assert bad["completed_at"]

    s = legacyd.get("/status").json()
    assert (s["queued"], s["processing"], s["total_tasks"]) == (0, 0, 2)

    # A result is recorded once.
    assert_error(legacyd.post("/tasks/ok1/complete", {"output": "again"}), 409, "task_finished")
    assert_error(legacyd.post("/tasks/bad1/fail", {"error": "again"}), 409)
    # Finishing an unknown task.
    assert_error(legacyd.post("/tasks/nope/complete", {"output": ""}), 404, "not_found")


def test_complete_validates_fields(legacyd):
    legacyd.submit("v1")
    legacyd.get("/tasks/next")
    assert_error(legacyd.post("/tasks/v1/complete", {"exit_code": 0}), 422, mentions="output")
    assert_error(legacyd.post("/tasks/v1/complete", {"output": "x", "exit_code": "zero"}), 422,
                 mentions="exit_code")
    assert_error(legacyd.post("/tasks/v1/fail", {}), 422, mentions="error")
    assert_error(legacyd.post("/tasks/v1/fail", "{not json"), 400, "bad_json")
    assert legacyd.task("v1").json()["status"] == "processing"


def test_delete(legacyd):
    for i in range(1, 5):
        legacyd.submit(f"d{i}")
    assert legacyd.get("/tasks/next").json()["eval_id"] == "d1"  # d1 processing

    r = legacyd.delete("/tasks/d3")
    assert r.status_code == 200, r.text
    assert r.json()["eval_id"] == "d3" and r.json()["status"] == "cancelled"
    assert legacyd.task("d3").json()["status"] == "cancelled"
    assert legacyd.task("d4").json()["position"] == 2  # moved up past the cancelled one

    assert_error(legacyd.delete("/tasks/d1"), 409, "task_running", mentions="running")
    assert_error(legacyd.delete("/tasks/d3"), 409, "task_finished")
    legacyd.post("/tasks/d1/complete", {"output": ""})
    assert_error(legacyd.delete("/tasks/d1"), 409, "task_finished")
    assert_error(legacyd.delete("/tasks/unknown"), 404, "not_found")

    # The cancelled task is never handed out.
    assert legacyd.get("/tasks/next").json()["eval_id"] == "d2"
    assert legacyd.get("/tasks/next").json()["eval_id"] == "d4"
    assert legacyd.get("/tasks/next").json() is None


def test_unknown_task_is_404(legacyd):
    assert_error(legacyd.task("never-seen"), 404, "not_found")
    assert_error(legacyd.get("/nope"), 404)


def test_duplicate_eval_id_is_409(legacyd):
    assert legacyd.submit("dup").status_code in (200, 201)
    body = assert_error(legacyd.submit("dup"), 409, "duplicate_eval_id")
    assert "dup" in body["message"]
    # Still once in the queue.
    assert legacyd.get("/status").json()["queued"] == 1


def test_bad_json_is_400(legacyd):
    assert_error(legacyd.post("/tasks", "{nope", headers={"Content-Type": "application/json"}), 400,
                 "bad_json")
    assert_error(legacyd.post("/tasks", "[1, 2]"), 400, "bad_json")
    assert_error(legacyd.post("/tasks", ""), 400, "bad_json")


@pytest.mark.parametrize("body, field", [
    ({"code": "print(1)"}, "eval_id"),
    ({"eval_id": "", "code": "x"}, "eval_id"),
    ({"eval_id": "has space", "code": "x"}, "eval_id"),
    ({"eval_id": "x" * 129, "code": "x"}, "eval_id"),
    ({"eval_id": 7, "code": "x"}, "eval_id"),
    ({"eval_id": "m1"}, "code"),
    ({"eval_id": "m1", "code": ""}, "code"),
    ({"eval_id": "m1", "code": 5}, "code"),
    ({"eval_id": "m1", "code": "x", "language": 3}, "language"),
    ({"eval_id": "m1", "code": "x", "engine": ""}, "engine"),
    ({"eval_id": "m1", "code": "x", "timeout": 0}, "timeout"),
    ({"eval_id": "m1", "code": "x", "timeout": "30"}, "timeout"),
    ({"eval_id": "m1", "code": "x", "timeout": 1.5}, "timeout"),
    ({"eval_id": "m1", "code": "x", "priority": {"a": 1}}, "priority"),
])
def test_invalid_fields_are_422_naming_the_field(legacyd, body, field):
    r = legacyd.post("/tasks", body)
    err = assert_error(r, 422, "invalid_field", mentions=field)
    assert err.get("field") == field
    assert legacyd.get("/status").json()["total_tasks"] == 0


def test_defaults_for_optional_fields(legacyd):
    r = legacyd.post("/tasks", {"eval_id": "min", "code": "1"})
    assert r.status_code in (200, 201), r.text
    t = legacyd.get("/tasks/next").json()
    assert (t["language"], t["engine"], t["timeout"]) == ("python", "docker", 30)


def test_priority_kinds_are_kept(legacyd):
    for i, p in enumerate([True, "high", 3, None]):
        assert legacyd.submit(f"p{i}", priority=p).status_code in (200, 201)
    got = [legacyd.get("/tasks/next").json()["priority"] for _ in range(4)]
    assert got == [True, "high", 3, None]


def test_body_too_large_is_json_413(legacyd):
    big = {"eval_id": "big", "code": "x" * (3 * 1024 * 1024)}
    assert_error(legacyd.post("/tasks", big), 413, "body_too_large")


def test_wrong_method_is_405(legacyd):
    r = legacyd.get("/tasks")
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]


def test_queue_limit_is_503_with_retry_after(tmp_path):
    with Legacyd(tmp_path, LEGACYD_MAX_QUEUE=2) as d:
        assert d.submit("q1").status_code in (200, 201)
        assert d.submit("q2").status_code in (200, 201)
        r = d.submit("q3")
        assert_error(r, 503, "queue_full", mentions="LEGACYD_MAX_QUEUE")
        assert int(r.headers["Retry-After"]) > 0
        d.get("/tasks/next")  # room again
        assert d.submit("q3").status_code in (200, 201)


def test_results_expire_after_ttl(tmp_path):
    with Legacyd(tmp_path, LEGACYD_RESULT_TTL_S=1) as d:
        d.submit("ttl")
        d.get("/tasks/next")
        d.post("/tasks/ttl/complete", {"output": "done"})
        assert d.task("ttl").json()["status"] == "completed"
        wait_until(lambda: d.task("ttl").status_code == 404, timeout=5, what="result pruned")
        assert d.get("/status").json()["total_tasks"] == 0
        # The id is free again once forgotten.
        assert d.submit("ttl").status_code in (200, 201)


def test_many_tasks_stay_fast(legacyd):
    """DELETE and next are O(1): 2000 tasks, every other one cancelled."""
    s = legacyd.session
    for i in range(2000):
        assert s.post(legacyd.url + "/tasks", json={"eval_id": f"n{i}", "code": "x"}).status_code in (200, 201)
    t0 = time.monotonic()
    for i in range(0, 2000, 2):
        assert s.delete(f"{legacyd.url}/tasks/n{i}").status_code == 200
    assert legacyd.task("n1999").json()["position"] == 1000
    assert legacyd.get("/tasks/next").json()["eval_id"] == "n1"
    assert legacyd.task("n1999").json()["position"] == 999
    assert time.monotonic() - t0 < 10


# ---------- configuration and process ----------

def run_check(env):
    return subprocess.run([LEGACYD, "--check-config"], env=clean_env(env), capture_output=True,
                          text=True, timeout=10)


def test_check_config_reports_every_problem():
    r = run_check({"LEGACYD_LISTEN": "nope", "LEGACYD_CONCURRENCY": "-1",
                   "EXECUTOR_SERVICE_URL": "ftp://x", "LOG_LEVEL": "loud"})
    assert r.returncode == 2
    out = r.stdout + r.stderr
    for name in ("LEGACYD_LISTEN", "LEGACYD_CONCURRENCY", "EXECUTOR_SERVICE_URL", "LOG_LEVEL"):
        assert name in out, out
    assert '"nope"' in out and '"-1"' in out


def test_check_config_clean_is_0():
    r = run_check({"EXECUTOR_SERVICE_URL": "http://127.0.0.1:1, https://example.invalid/"})
    assert r.returncode == 0, r.stderr


def test_bad_config_at_start_exits_2():
    r = subprocess.run([LEGACYD], env=clean_env({"LEGACYD_RESULT_TTL_S": "soon"}),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert "LEGACYD_RESULT_TTL_S" in r.stderr


def test_version_and_help():
    r = subprocess.run([LEGACYD, "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.startswith("turnout-legacyd ")
    r = subprocess.run([LEGACYD, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    for name in ("LEGACYD_LISTEN", "EXECUTOR_SERVICE_URL", "LEGACYD_CONCURRENCY", "LEGACYD_MAX_QUEUE",
                 "LEGACYD_RESULT_TTL_S", "LOG_LEVEL", "LOG_FORMAT"):
        assert name in r.stdout
    r = subprocess.run([LEGACYD, "--print-config-markdown"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "`LEGACYD_LISTEN`" in r.stdout


def test_sigterm_exits_0(tmp_path):
    d = Legacyd(tmp_path)
    with d:
        d.submit("left-behind")
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 3
    assert "shutting down" in d.logs()


def test_sigint_exits_0(tmp_path):
    d = Legacyd(tmp_path)
    with d:
        assert d.stop(signal.SIGINT) == 0


def test_logs_name_the_eval_id(tmp_path):
    d = Legacyd(tmp_path, LOG_FORMAT="json")
    with d:
        d.submit("logged-1")
    assert '"eval_id":"logged-1"' in d.logs()


# ---------- the executor loop, against a stand-in executor ----------

def test_executor_completes_tasks_in_fifo_order(tmp_path):
    with StandInExecutor(completed) as ex, \
            Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url, LEGACYD_CONCURRENCY=1) as d:
        for i in range(5):
            d.submit(f"x{i}", code=f"print({i})", timeout=7)
        for i in range(5):
            t = d.wait_status(f"x{i}", "completed")
            assert t["output"] == f"ran print({i})"
            assert t["exit_code"] == 0
            assert t["outcome"] == "completed"
        assert ex.eval_ids() == [f"x{i}" for i in range(5)]
        path, req = ex.calls[0]
        assert path == "/execute"
        assert req == {"eval_id": "x0", "code": "print(0)", "language": "python", "timeout": 7}
        s = d.get("/status").json()
        assert (s["queued"], s["processing"], s["total_tasks"]) == (0, 0, 5)


def test_executor_failure_outcomes(tmp_path):
    def behave(path, req):
        kind = req["eval_id"].split("-")[0]
        if kind == "ok":
            return completed(path, req)
        return 200, {"eval_id": req["eval_id"], "status": kind, "output": "partial",
                     "error": f"{kind} happened" if kind != "killed" else "", "exit_code": 137}, {}

    with StandInExecutor(behave) as ex, Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url) as d:
        for kind in ("failed", "timeout", "killed", "ok"):
            d.submit(f"{kind}-1")
        f = d.wait_status("failed-1", ("completed", "failed"))
        assert f["status"] == "failed" and f["error"] == "failed happened" and f["outcome"] == "failed"
        t = d.wait_status("timeout-1", ("completed", "failed"))
        assert t["status"] == "failed" and t["outcome"] == "timeout"
        assert t["error"] == "timeout happened" and t["exit_code"] == 137
        k = d.wait_status("killed-1", ("completed", "failed"))
        assert k["status"] == "failed" and k["outcome"] == "killed" and "killed" in k["error"]
        assert d.wait_status("ok-1", ("completed", "failed"))["status"] == "completed"


def test_executor_503_puts_the_task_back_and_retries(tmp_path):
    busy = {"left": 2}

    def behave(path, req):
        if busy["left"] > 0:
            busy["left"] -= 1
            return 503, {"error": "at_capacity", "message": "busy"}, {"Retry-After": "0"}
        return completed(path, req)

    with StandInExecutor(behave) as ex, \
            Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url, LEGACYD_CONCURRENCY=1) as d:
        d.submit("b1")
        d.submit("b2")
        assert d.wait_status("b1", "completed")["output"] == "ran print(1)"
        d.wait_status("b2", "completed")
        # b1 kept its place at the head through both refusals.
        assert ex.eval_ids() == ["b1", "b1", "b1", "b2"]


def test_executor_unreachable_then_recovers(tmp_path):
    port = free_port()  # nothing listens here yet
    with Legacyd(tmp_path, EXECUTOR_SERVICE_URL=f"http://127.0.0.1:{port}") as d:
        d.submit("r1")
        time.sleep(1.0)
        t = d.task("r1").json()
        assert t["status"] in ("queued", "processing"), t  # not lost, not failed
        assert "unreachable" in d.logs()
        with StandInExecutor(completed, port=port):
            assert d.wait_status("r1", ("completed", "failed"), timeout=15)["status"] == "completed"


def test_executor_round_robin(tmp_path):
    with StandInExecutor(completed) as a, StandInExecutor(completed) as b, \
            Legacyd(tmp_path, EXECUTOR_SERVICE_URL=f"{a.url}, {b.url}/", LEGACYD_CONCURRENCY=1) as d:
        for i in range(4):
            d.submit(f"rr{i}")
        for i in range(4):
            d.wait_status(f"rr{i}", "completed")
        assert a.eval_ids() == ["rr0", "rr2"]
        assert b.eval_ids() == ["rr1", "rr3"]


def test_executor_concurrency_bound(tmp_path):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def behave(path, req):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        return completed(path, req)

    with StandInExecutor(behave) as ex, \
            Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url, LEGACYD_CONCURRENCY=3) as d:
        for i in range(9):
            d.submit(f"c{i}")
        for i in range(9):
            d.wait_status(f"c{i}", "completed")
        assert state["peak"] == 3


def test_cancelled_while_queued_never_reaches_the_executor(tmp_path):
    gate = threading.Event()

    def behave(path, req):
        gate.wait(5)
        return completed(path, req)

    with StandInExecutor(behave) as ex, \
            Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url, LEGACYD_CONCURRENCY=1) as d:
        d.submit("first")
        d.submit("second")
        wait_until(lambda: d.task("first").json()["status"] == "processing", what="first running")
        assert_error(d.delete("/tasks/first"), 409, "task_running")
        assert d.delete("/tasks/second").status_code == 200
        gate.set()
        d.wait_status("first", "completed")
        time.sleep(0.3)
        assert ex.eval_ids() == ["first"]


def test_sigterm_with_executor_call_in_flight(tmp_path):
    gate = threading.Event()

    def behave(path, req):
        gate.wait(5)
        return completed(path, req)

    with StandInExecutor(behave) as ex:
        d = Legacyd(tmp_path, EXECUTOR_SERVICE_URL=ex.url)
        with d:
            d.submit("inflight")
            wait_until(lambda: ex.calls, what="the executor call")
            t0 = time.monotonic()
            assert d.stop(signal.SIGTERM) == 0
            assert time.monotonic() - t0 < 3
        gate.set()


def test_sighup_rereads_env_file_and_keeps_old_settings_when_bad(tmp_path):
    envfile = tmp_path / "legacyd.env"
    envfile.write_text("LEGACYD_MAX_QUEUE=1\n")
    d = Legacyd(tmp_path, TURNOUT_ENV_FILE=str(envfile))
    with d:
        assert d.submit("h1").status_code in (200, 201)
        assert_error(d.submit("h2"), 503, "queue_full")

        envfile.write_text("# bigger queue\nLEGACYD_MAX_QUEUE=3\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "settings reloaded" in d.logs(), what="the reload")
        assert d.submit("h2").status_code in (200, 201)

        envfile.write_text("LEGACYD_MAX_QUEUE=lots\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.logs(), what="the refused reload")
        assert "LEGACYD_MAX_QUEUE" in d.logs()
        assert d.submit("h3").status_code in (200, 201)  # still 3
        assert_error(d.submit("h4"), 503, "queue_full")
