"""The automatic canary: walks ROLLOUT_STEPS while the gates hold, rolls
back by itself within one step interval when the new path starts failing
programs that pass on legacy, holds on too little traffic, never rolls back
a healthy path whose users' programs fail at random, keeps system errors
apart from program verdicts, and is steered through the admin API.  The
whole stack is real: redis-server, turnout-executor x2 (one per path),
turnout-legacyd, turnout-worker, turnout-proxy.  The judge's statistics are
pinned by tests/unit/test_gates.c and tests/sim (README "The canary
judge")."""
import threading
import time

import pytest

from fixtures_turnout import Legacyd, http_session, mval, wait_until

TOKEN = "canary-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# exits 3 once the file BROKEN sits next to the executor's run directories
CODE = "import os, sys\nsys.exit(3 if os.path.exists('../BROKEN') else 0)\n"


# fails at random, 30 % of the time, on whichever path runs it
RANDOM_FAIL = "import random, sys\nsys.exit(1 if random.random() < 0.3 else 0)\n"


class Load:
    """Submissions at a steady pace from a thread, until stopped."""

    def __init__(self, proxy, per_s=20, prefix="load", code=CODE):
        self.proxy, self.per_s, self.prefix, self.code = proxy, per_s, prefix, code
        self.stop_ev = threading.Event()
        self.sent = 0
        self.errors = []
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        s = http_session()
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            try:
                r = s.post(self.proxy.url("/api/eval"), json={"eval_id": f"{self.prefix}-{i}", "code": self.code},
                           timeout=5)
                if r.status_code != 202:
                    self.errors.append(r.text)
                self.sent += 1
            except Exception as e:  # noqa: BLE001 - recorded and asserted on
                self.errors.append(repr(e))
            self.stop_ev.wait(1.0 / self.per_s)
        s.close()

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.t.join(10)


@pytest.fixture
def stack(redis_server, executor_factory, worker_factory, proxy_factory, tmp_path):
    """make(**proxy_env) -> (proxy, new-path executor). Legacy and new
    paths run on executors of their own."""
    legacies = []

    def make(**env):
        ex_legacy = executor_factory(EXECUTOR_MAX_CONCURRENT=8)
        ex_new = executor_factory(EXECUTOR_MAX_CONCURRENT=8)
        leg = Legacyd(tmp_path / f"legacyd{len(legacies)}", env={"EXECUTOR_SERVICE_URL": ex_legacy.url}).start()
        legacies.append(leg)
        worker_factory(ex_new, CELERY_CONCURRENCY=8)
        # The fail margins are the defaults.  The latency gate is off: the two
        # paths here are different machinery sharing two cores (the new one
        # takes a few times legacy's ~50 ms on programs this short), not a
        # migration's twins; tests/sim and test_gates.c cover that gate.  The
        # pass margins are wide so that a step passes on the few dozen evals
        # a test can afford (a real canary keeps the defaults).
        full = dict(LEGACY_QUEUE_URL=leg.url, ADMIN_TOKEN=TOKEN, COMPLETION_POLL_S=1,
                    ROLLOUT_STEPS="0.25,0.5,1.0", ROLLOUT_STEP_INTERVAL_S=2, GATE_MIN_SAMPLES=20,
                    GATE_LATENCY_MARGIN=1, GATE_LATENCY_PASS_MARGIN=1, GATE_SYSTEM_ERROR_PASS_MARGIN=0.4,
                    GATE_PROGRAM_FAILURE_PASS_MARGIN=0.4)
        full.update(env)
        return proxy_factory(**full), ex_new

    yield make
    errs = [e for e in (leg.cleanup() for leg in legacies) if e]
    assert not errs, errs


def canary(p):
    r = p.get("/admin/canary")
    assert r.status_code == 200, r.text
    return r.json()


def act(p, action, headers=AUTH):
    return p.post(f"/admin/canary/{action}", headers=headers)


def history(p):
    return p.get("/admin/rollout/history?limit=100").json()["entries"]


def test_canary_walks_every_step_while_the_new_path_is_healthy(stack, proxy_factory):
    p, _ = stack()
    env = dict(p.env)
    env.pop("PROXY_LISTEN")
    follower = proxy_factory(env=env)  # a second proxy on the same Redis follows the shared state
    c = canary(p)
    assert c["status"] == "idle" and c["step"] == 0 and c["configured_steps"] == [0.25, 0.5, 1.0], c
    with Load(p) as load:
        r = act(p, "start", headers={**AUTH, "X-Turnout-Actor": "carol"})
        assert r.status_code == 200, r.text
        wait_until(lambda: canary(p)["step"] == 1 and p.get("/admin/rollout").json()["percentage"] == 0.25, 3,
                   "step 1 in force", [p.mp])
        assert mval(p.metrics(), "turnout_rollout_step") == 1
        seen = set()

        def walked():
            c = canary(p)
            seen.add(c["step"])
            return c if c["status"] == "completed" else None
        c = wait_until(walked, 90, "canary completed", [p.mp], interval=0.2)
    assert not load.errors, load.errors[:3]
    assert {1, 2, 3} <= seen, seen
    ro = p.get("/admin/rollout").json()
    assert ro["percentage"] == 1.0 and ro["enabled"] is True and ro["updated_by"] == "canary", ro
    wait_until(lambda: follower.get("/admin/rollout").json()["percentage"] == 1.0, 1.5, "the follower agrees")
    # the proxy that wrote it shows it at once; the others within a second
    wait_until(lambda: canary(follower)["status"] == "completed", 1.5, "the follower's canary completed")
    checks = sum(mval(x.metrics(), "turnout_rollout_gate_checks_total", gate=g, result="pass")
                 for x in (p, follower) for g in ("system_errors", "program_failures", "latency"))
    assert checks >= 9, "one of the two led and judged: every gate passed at every step"
    lc = c["last_check"]
    assert lc["verdict"] == "pass" and lc["n_new"] >= 20, c
    for g in ("system_errors", "program_failures", "latency"):
        gate = lc["gates"][g]
        assert gate["verdict"] == "pass" and gate["diff_high"] <= gate["pass_margin"], (g, gate)
        assert gate["new"]["trials"] >= 20 and gate["legacy"]["trials"] >= 20, (g, gate)
        assert gate["new"]["low"] <= gate["new"]["ratio"] <= gate["new"]["high"], (g, gate)
    assert lc["baseline"] is True, "the last step (100 %) compared with the step before's legacy window"
    h = history(p)
    by_canary = [e for e in h if e["by"] == "canary" and "to" in e and isinstance(e["to"], dict)
                 and "percentage" in e["to"]]
    assert [e["to"]["percentage"] for e in reversed(by_canary)] == [0.5, 1.0], h[:6]
    starts = [e for e in h if e.get("kind") == "canary" and e["to"] == "running" and e["from"] == "idle"]
    assert starts and starts[0]["by"] == "admin (carol)", h[:8]
    first = [e for e in h if isinstance(e.get("to"), dict) and e["to"].get("percentage") == 0.25]
    assert first and first[0]["by"] == "admin (carol)" and "canary started" in first[0]["reason"], h[-3:]
    for x in (p, follower):
        m = x.metrics()
        for g in ("system_errors", "program_failures", "latency"):
            assert mval(m, "turnout_rollout_gate_checks_total", gate=g, result="fail") == 0
            assert mval(m, "turnout_rollout_rollbacks_total", reason=g) == 0
        assert mval(m, "turnout_rollout_step") == 0


@pytest.mark.parametrize("rollback_to,back", [("zero", 0), ("last_good", 0.3)])
def test_canary_rolls_back_when_the_new_paths_executor_starts_failing(stack, rollback_to, back):
    p, ex_new = stack(ROLLOUT_STEPS="0.3,0.6,1.0", ROLLOUT_STEP_INTERVAL_S=4, ROLLOUT_ROLLBACK_TO=rollback_to)
    with Load(p, prefix="rb"):
        assert act(p, "start").status_code == 200
        wait_until(lambda: canary(p)["step"] == 2, 40, "first step passed", [p.mp], interval=0.2)
        broke = time.monotonic()
        (ex_new.dir / "runs" / "BROKEN").write_text("the new path's executor is broken now\n")
        c = wait_until(lambda: (lambda c: c if c["status"] == "rolled_back" else None)(canary(p)), 15,
                       "rolled back", [p.mp], interval=0.2)
        took = time.monotonic() - broke
    assert took <= 4 + 3, f"rollback took {took:.1f}s, more than one step interval (+ poll slack)"
    # the programs fail on the new path only: an environment difference,
    # seen by the program-failure gate; the path itself stays healthy
    lc = c["last_check"]
    assert "program_failures" in c["reason"] and lc["gates"]["program_failures"]["verdict"] == "fail", c
    assert lc["gates"]["program_failures"]["diff_low"] > lc["gates"]["program_failures"]["margin"], lc
    assert lc["gates"]["system_errors"]["verdict"] != "fail", lc
    ro = p.get("/admin/rollout").json()
    assert ro["percentage"] == back and ro["updated_by"] == "canary" and "rolled back" in ro["reason"], ro
    m = p.metrics()
    assert mval(m, "turnout_rollout_rollbacks_total", reason="program_failures") == 1
    assert mval(m, "turnout_rollout_gate_checks_total", gate="program_failures", result="fail") >= 1
    assert mval(m, "turnout_eval_verdicts_total", path="new", verdict="failed") >= 1
    # it stays there until a person resumes
    time.sleep(2.5)
    assert canary(p)["status"] == "rolled_back" and p.get("/admin/rollout").json()["percentage"] == back
    (ex_new.dir / "runs" / "BROKEN").unlink()
    r = act(p, "resume")
    assert r.status_code == 200, r.text
    wait_until(lambda: canary(p)["status"] == "running" and p.get("/admin/rollout").json()["percentage"] == 0.6,
               3, "resumed at the failed step")


def test_too_little_traffic_holds_the_step(stack):
    p, _ = stack(ROLLOUT_STEP_INTERVAL_S=1, GATE_MIN_SAMPLES=50)
    assert act(p, "start").status_code == 200
    time.sleep(4)
    c = canary(p)
    assert c["status"] == "running" and c["step"] == 1, c
    lc = c["last_check"]
    assert lc["verdict"] == "hold" and "needs about 50 more on the new path" in lc["why"], c
    assert lc["gates"]["system_errors"]["needs"] == {"new": 50, "legacy": 50}, lc
    assert p.get("/admin/rollout").json()["percentage"] == 0.25
    m = p.metrics()
    assert mval(m, "turnout_rollout_gate_checks_total", gate="system_errors", result="hold") >= 2
    assert mval(m, "turnout_rollout_gate_checks_total", gate="system_errors", result="pass") == 0
    # pause and abort through the API
    assert act(p, "pause").status_code == 200
    wait_until(lambda: canary(p)["status"] == "paused", 3, "paused")
    assert act(p, "pause").status_code == 409
    assert act(p, "abort").status_code == 200
    wait_until(lambda: canary(p)["status"] == "aborted", 3, "aborted")
    assert p.get("/admin/rollout").json()["percentage"] == 0


def test_programs_failing_at_random_on_both_paths_never_roll_back(stack):
    """The A/A canary: 30 % of programs fail, on either path alike (the same
    population goes to both).  Judged every second with the default fail
    margins, it walks every step; the failures are counted as verdicts,
    not as errors of a path."""
    p, _ = stack(ROLLOUT_STEPS="0.5,1.0")
    with Load(p, prefix="aa", code=RANDOM_FAIL) as load:
        assert act(p, "start").status_code == 200
        seen = []

        def walked():
            c = canary(p)
            seen.append(c["status"])
            assert c["status"] != "rolled_back", c
            return c if c["status"] == "completed" else None
        c = wait_until(walked, 120, "canary completed", [p.mp], interval=0.5)
    assert not load.errors, load.errors[:3]
    lc = c["last_check"]
    pf = lc["gates"]["program_failures"]
    assert pf["verdict"] == "pass" and 0.1 < pf["new"]["ratio"] < 0.5 and 0.1 < pf["legacy"]["ratio"] < 0.5, pf
    m = p.metrics()
    for path in ("legacy", "new"):
        failed = mval(m, "turnout_eval_verdicts_total", path=path, verdict="failed")
        done = mval(m, "turnout_eval_verdicts_total", path=path, verdict="completed")
        assert failed >= 5 and done >= 10, (path, failed, done)
        # a program failing is the path doing its job
        assert mval(m, "turnout_eval_path_outcomes_total", path=path, outcome="system_error") == 0, path
        assert mval(m, "turnout_eval_path_outcomes_total", path=path, outcome="ok") >= failed + done - 0.5, path
    assert mval(m, "turnout_rollout_rollbacks_total", reason="program_failures") == 0
    stats = p.get("/api/stats").json()["paths"]
    for path in ("legacy", "new"):
        assert stats[path]["system_error_ratio"] == 0, stats[path]
        assert 0.05 < stats[path]["program_failure_ratio"] < 0.6, stats[path]
        assert stats[path]["verdicts"]["failed"] >= 5, stats[path]


def test_system_errors_are_counted_apart_from_verdicts(redis_server, executor_factory, worker_factory,
                                                      proxy_factory, tmp_path):
    """An executor that cannot be reached is the path's error (class
    executor), counted as such; a program that fails there is a verdict.
    Both show in the metrics and /api/stats with their classes."""
    ex = executor_factory()
    leg = Legacyd(tmp_path / "legacyd", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
    try:
        # the new path's worker has no executor to talk to: every eval there
        # ends dead-lettered after its retries
        worker_factory("http://127.0.0.1:9", RETRY_NETWORK_MAX=1, RETRY_NETWORK_BASE_S=0.2, RETRY_NETWORK_CAP_S=0.2)
        p = proxy_factory(LEGACY_QUEUE_URL=leg.url, CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, COMPLETION_POLL_S=1)
        s = http_session()
        for i in range(40):
            r = s.post(p.url("/api/eval"), json={"eval_id": f"se-{i}", "code": "import sys\nsys.exit(2)\n"}, timeout=5)
            assert r.status_code == 202, r.text

        def counted():
            m = p.metrics()
            leg_failed = mval(m, "turnout_eval_verdicts_total", path="legacy", verdict="failed")
            new_exec = mval(m, "turnout_eval_system_errors_total", path="new", **{"class": "executor"})
            return (m, leg_failed, new_exec) if leg_failed + new_exec >= 40 else None
        m, leg_failed, new_exec = wait_until(counted, 60, "every eval counted", [p.mp])
        assert leg_failed >= 5 and new_exec >= 5, (leg_failed, new_exec)
        assert mval(m, "turnout_eval_path_outcomes_total", path="new", outcome="system_error") == new_exec
        assert mval(m, "turnout_eval_verdicts_total", path="new", verdict="failed") == 0, "no verdict without a run"
        assert mval(m, "turnout_eval_system_errors_total", path="legacy", **{"class": "executor"}) == 0
        assert mval(m, "turnout_eval_path_outcomes_total", path="legacy", outcome="ok") == leg_failed
        st = p.get("/api/stats").json()["paths"]
        assert st["new"]["system_errors"]["executor"] == new_exec and st["new"]["system_error_ratio"] == 1, st["new"]
        assert st["legacy"]["system_error_ratio"] == 0 and st["legacy"]["program_failure_ratio"] == 1, st["legacy"]
    finally:
        err = leg.cleanup()
        assert not err, err


class HungExecutor:
    """An executor that says it has room (GET /capacity) and then never
    answers a POST /execute: the executor's failure, whatever the program."""

    def __init__(self):
        import http.server
        import socketserver

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{"max_concurrent": 4, "running": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.server.stop.wait(30)

            def log_message(self, *a):
                pass

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        self.srv.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.stop.set()
        self.srv.shutdown()
        self.srv.server_close()


def test_an_executor_that_hangs_is_a_system_error_not_a_timeout_verdict(redis_server, worker_factory,
                                                                        proxy_factory):
    """The worker's hard limit ends an eval whose executor never answered:
    its status reads timeout, but the path, not the program, ended it."""
    hung = HungExecutor()
    try:
        w = worker_factory(hung.url, SOFT_TIME_LIMIT_S=1, TIME_LIMIT_S=2)
        p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, COMPLETION_POLL_S=1)
        r = http_session().post(p.url("/api/eval"), json={"eval_id": "hung-1", "code": "print(1)", "timeout": 60},
                                timeout=5)
        assert r.status_code == 202 and r.json()["path"] == "new", r.text
        m = wait_until(lambda: (lambda m: m if mval(m, "turnout_eval_system_errors_total", path="new",
                                                      **{"class": "executor"}) == 1 else None)(p.metrics()),
                       20, "the hung eval counted as an executor error", [p.mp, w.mp])
        assert mval(m, "turnout_evals_completed_total", path="new", outcome="timeout") == 1, "what the user sees"
        assert mval(m, "turnout_eval_verdicts_total", path="new", verdict="timeout") == 0, "no verdict on the program"
        assert mval(w.metrics(), "turnout_worker_tasks_total", outcome="hard_time_limit") == 1
        st = p.get("/api/eval/hung-1").json()
        assert st["status"] == "timeout", st
    finally:
        hung.close()


def test_retired_gate_settings_say_what_replaced_them(proxy_factory, tmp_path):
    env_file = tmp_path / "old.env"
    env_file.write_text("GATE_ERROR_DELTA=0.05\n")
    bad = proxy_factory(wait=False, TURNOUT_ENV_FILE=str(env_file))
    assert bad.proc.wait(10) == 2
    log = bad.log(20)
    assert "GATE_ERROR_DELTA is no longer read" in log and "GATE_SYSTEM_ERROR_MARGIN" in log, log
    crossed = proxy_factory(wait=False, GATE_SYSTEM_ERROR_MARGIN=0.05, GATE_SYSTEM_ERROR_PASS_MARGIN=0.01)
    assert crossed.proc.wait(10) == 2
    assert "GATE_SYSTEM_ERROR_PASS_MARGIN=0.01: must be at least GATE_SYSTEM_ERROR_MARGIN=0.05" in crossed.log(20)


def test_canary_api_refusals(proxy_factory):
    p = proxy_factory(ADMIN_TOKEN=TOKEN)
    assert act(p, "start", headers={}).status_code == 401
    assert act(p, "start", headers={"Authorization": "Bearer x"}).status_code == 403
    r = act(p, "start")
    assert r.status_code == 409 and "ROLLOUT_STEPS" in r.json()["message"], r.text
    assert act(p, "pause").status_code == 409
    assert act(p, "resume").status_code == 409
    assert act(p, "jump").status_code == 404
    assert p.get("/admin/canary/start").status_code == 405
    assert p.post("/admin/canary").status_code == 405
    killed = proxy_factory(ADMIN_TOKEN=TOKEN, ROLLOUT_STEPS="0.5,1", FORCE_LEGACY_QUEUE=True)
    r = act(killed, "start")
    assert r.status_code == 409 and r.json()["error"] == "kill_switch_on", r.text
    bad = proxy_factory(wait=False, ROLLOUT_STEPS="0.5,0.2")
    assert bad.proc.wait(10) == 2
    assert "ROLLOUT_STEPS" in bad.log(10)


def test_canary_controls_see_their_own_writes(proxy_factory):
    """The proxy that makes a change applies it before answering: the very
    next read shows it, and the next action builds on it (no 409 for a
    state this proxy itself just wrote)."""
    p = proxy_factory(ADMIN_TOKEN=TOKEN, ROLLOUT_STEPS="0.2,0.6,1", ROLLOUT_STEP_INTERVAL_S=3600)
    for _ in range(3):   # the whole cycle, several times in a row, without pause
        r = act(p, "start")
        assert r.status_code == 200, r.text
        assert r.json()["canary"]["status"] == "running"
        view = p.get("/admin/canary").json()
        assert view["status"] == "running" and view["step"] == 1, view
        assert p.get("/admin/rollout").json()["percentage"] == 0.2
        r = act(p, "pause")
        assert r.status_code == 200, r.text
        assert p.get("/admin/canary").json()["status"] == "paused"
        r = act(p, "resume")
        assert r.status_code == 200, r.text
        assert p.get("/admin/canary").json()["status"] == "running"
        r = act(p, "abort")
        assert r.status_code == 200, r.text
        view = p.get("/admin/canary").json()
        assert view["status"] == "aborted" and view["percentage"] == 0, view
        assert p.get("/admin/rollout").json()["percentage"] == 0
        assert mval(p.metrics(), "turnout_rollout_percentage") == 0


def test_abort_works_at_once_from_another_proxy(proxy_factory):
    """A proxy whose copy of the canary state is a version behind (another
    proxy just changed it) re-reads it on the version conflict and acts on
    what is there: abort succeeds at once."""
    a = proxy_factory(ADMIN_TOKEN=TOKEN, ROLLOUT_STEPS="0.2,1", ROLLOUT_STEP_INTERVAL_S=3600)
    b = proxy_factory(ADMIN_TOKEN=TOKEN, ROLLOUT_STEPS="0.2,1", ROLLOUT_STEP_INTERVAL_S=3600)
    assert act(a, "start").status_code == 200
    wait_until(lambda: b.get("/admin/canary").json()["status"] == "running", 5, "b sees the canary", [b.mp])
    for _ in range(3):
        assert act(a, "pause").status_code == 200
        r = act(b, "resume")   # b may not have read the pause yet
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            assert r.json()["error"] == "not_paused", r.text   # b's own stale view, re-read: decided afresh
        r = act(b, "abort")
        assert r.status_code == 200, r.text
        assert b.get("/admin/canary").json()["status"] == "aborted"
        assert act(a, "start").status_code == 200, "a restarts after b's abort"
        wait_until(lambda: b.get("/admin/canary").json()["status"] == "running", 5, "b sees the restart", [b.mp])
    assert act(a, "abort").status_code == 200
