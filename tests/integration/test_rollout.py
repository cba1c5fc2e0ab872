"""Live rollout control (issue 5): the shared state every proxy on one Redis
obeys within a second, the environment's kill switch that beats it, the
admin token, the audit list, SIGHUP reloads.  Real redis-server, real
turnout-proxy processes.  Contracts: shared/DESIGN.md §3, §4, §9."""
import json
import signal
import time

import pytest

from fixtures_turnout import expected_path, mval, wait_until

TOKEN = "rollout-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def put(p, body, headers=AUTH, raw=None):
    h = {"Content-Type": "application/json", **(headers or {})}
    return p.session.put(p.url("/admin/rollout"), data=raw if raw is not None else json.dumps(body),
                         headers=h, timeout=10)


def state(p):
    r = p.get("/admin/rollout")
    assert r.status_code == 200, r.text
    return r.json()


def path_of(p, eval_id):
    r = p.submit(eval_id=eval_id)
    assert r.status_code == 202, r.text
    return r.json()["path"]


def test_env_is_the_start_state_and_a_put_reaches_every_proxy_within_a_second(proxy_factory, redis_server):
    p1 = proxy_factory(CELERY_ENABLED=False, ADMIN_TOKEN=TOKEN)
    p2 = proxy_factory(CELERY_ENABLED=False, ADMIN_TOKEN=TOKEN)
    s = state(p2)
    assert s["source"] == "env" and s["enabled"] is False and s["percentage"] == 0, s
    assert s["version"] == 0 and s["shared"] is None and s["force_legacy_source"] is None, s
    assert path_of(p2, "before-1") == "legacy"

    t0 = time.monotonic()
    r = put(p1, {"enabled": True, "percentage": 1.0, "reason": "step to 100%"},
            headers={**AUTH, "X-Turnout-Actor": "alice"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["enabled"] is True and b["percentage"] == 1.0 and b["source"] == "redis", b
    assert b["version"] == 1 and b["updated_by"] == "admin (alice)" and b["reason"] == "step to 100%", b
    assert b["updated_at"].startswith(time.strftime("%Y-", time.gmtime())), b
    wait_until(lambda: state(p2)["version"] == 1, 1.0, "p2 applies the change within 1 s", [p2.mp])
    assert time.monotonic() - t0 < 1.5
    assert path_of(p2, "after-1") == "new"
    m = p2.metrics()
    assert mval(m, "turnout_rollout_percentage") == 1.0 and mval(m, "turnout_celery_enabled") == 1

    # a partial change keeps the rest; sticky buckets follow the new percentage
    r = put(p2, {"percentage": 0.3})
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["version"] == 2, r.text
    wait_until(lambda: state(p1)["percentage"] == 0.3, 1.0, "p1 at 0.3", [p1.mp])
    for i in range(20):
        assert path_of(p1, f"mid-{i}") == expected_path(f"mid-{i}", 0.3)

    # the audit list: newest first, who, when, from -> to, why
    h = p1.get("/admin/rollout/history").json()["entries"]
    assert [e["version"] for e in h] == [2, 1], h
    assert h[1]["by"] == "admin (alice)" and h[1]["reason"] == "step to 100%", h[1]
    assert h[1]["from"]["enabled"] is False and h[1]["to"]["percentage"] == 1.0, h[1]
    assert h[0]["from"]["percentage"] == 1.0 and h[0]["to"]["percentage"] == 0.3 and h[0]["by"] == "admin", h[0]
    assert p1.get("/admin/rollout/history?limit=1").json()["entries"][0]["version"] == 2
    assert p1.get("/admin/rollout/history?limit=0").status_code == 422


def test_env_kill_switch_beats_the_shared_state_in_that_proxy_only(proxy_factory):
    p1 = proxy_factory(ADMIN_TOKEN=TOKEN)
    killed = proxy_factory(FORCE_LEGACY_QUEUE=True, ADMIN_TOKEN=TOKEN)
    assert put(p1, {"enabled": True, "percentage": 1.0}).status_code == 200
    wait_until(lambda: state(killed)["version"] == 1, 1.0, "version 1 seen")
    s = state(killed)
    assert s["force_legacy"] is True and s["force_legacy_source"] == "env", s
    assert s["shared"]["force_legacy"] is False and s["percentage"] == 1.0, s
    assert path_of(killed, "k-1") == "legacy" and path_of(p1, "k-2") == "new"
    assert mval(killed.metrics(), "turnout_force_legacy") == 1
    assert mval(killed.metrics(), "turnout_routing_decisions_total", path="legacy", reason="forced") == 1
    # the shared kill switch reaches everyone, and lifting it restores the split
    assert put(killed, {"force_legacy": True, "reason": "incident 42"}).status_code == 200
    wait_until(lambda: state(p1)["force_legacy"] is True, 1.0, "shared kill switch on p1")
    assert state(p1)["force_legacy_source"] == "redis"
    assert path_of(p1, "k-3") == "legacy"
    assert put(p1, {"force_legacy": False}).status_code == 200
    wait_until(lambda: state(p1)["force_legacy"] is False, 1.0, "kill switch lifted")
    assert path_of(p1, "k-4") == "new"
    assert state(killed)["force_legacy"] is True, "the environment still wins there"


def test_admin_token_checks_and_validation(proxy_factory, redis_server):
    p = proxy_factory(ADMIN_TOKEN=TOKEN)
    r = put(p, {"percentage": 0.5}, headers={})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    r = put(p, {"percentage": 0.5}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    off = proxy_factory(ADMIN_TOKEN=None)
    r = put(off, {"percentage": 0.5})
    assert r.status_code == 403 and r.json()["error"] == "admin_disabled" and "ADMIN_TOKEN" in r.json()["message"]
    for body, field in (({"percentage": 50}, "percentage"), ({"percentage": "0.5"}, "percentage"),
                        ({"enabled": "yes"}, "enabled"), ({"mode": "round-robin"}, "mode"),
                        ({"colour": "red"}, "colour"), ({"reason": "x"}, "nothing to change"),
                        ({"percentage": 0.1, "reason": "x" * 501}, "reason")):
        r = put(p, body)
        assert r.status_code == 422 and field in r.json()["message"], (body, r.text)
    assert put(p, None, raw="{").status_code == 400
    r = put(p, {"percentage": 0.1}, headers={**AUTH, "X-Turnout-Actor": "bad actor!"})
    assert r.status_code == 422 and "X-Turnout-Actor" in r.json()["message"]
    assert p.post("/admin/rollout").status_code == 405
    assert state(p)["version"] == 0, "nothing was written by refused requests"
    assert redis_server.client().get("turnout:rollout") is None
    m = p.metrics()
    assert mval(m, "turnout_requests_total", route="admin", path="none", code="401") == 1
    assert mval(m, "turnout_requests_total", route="admin", path="none", code="403") == 1


def test_state_changed_behind_its_back_is_read_again(proxy_factory, redis_server):
    """A change whose notice was lost (written without PUBLISH) or a deleted
    key is picked up by the one-second re-read."""
    p = proxy_factory(ADMIN_TOKEN=TOKEN, CELERY_ENABLED=False)
    r = redis_server.client()
    r.set("turnout:rollout", json.dumps({"enabled": True, "percentage": 1, "force_legacy": False,
                                         "mode": "sticky", "version": 7, "updated_at": time.time(),
                                         "updated_by": "ops", "reason": "manual"}))
    wait_until(lambda: state(p)["version"] == 7, 2.5, "re-read")
    assert path_of(p, "bb-1") == "new"
    r.set("turnout:rollout", json.dumps({"enabled": "garbage"}))
    time.sleep(1.5)
    assert state(p)["version"] == 7, "a malformed state is ignored"
    r.delete("turnout:rollout")
    wait_until(lambda: state(p)["source"] == "env", 2.5, "back to the environment")
    assert path_of(p, "bb-2") == "legacy"
    # Redis restarts empty: the proxy reconnects and re-reads
    put_r = put(p, {"enabled": True, "percentage": 1})
    assert put_r.status_code == 200
    redis_server.stop()
    r2 = put(p, {"percentage": 0.5})
    assert r2.status_code == 503 and "FORCE_LEGACY_QUEUE" in r2.json()["message"], r2.text
    assert int(r2.headers["Retry-After"]) >= 1
    redis_server.start()
    wait_until(lambda: state(p)["source"] == "env", 5, "re-read after reconnect")
    r.close()


def test_sighup_reloads_the_env_file_and_keeps_old_settings_when_invalid(proxy_factory, tmp_path):
    envf = tmp_path / "turnout.env"
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=0\n")
    p = proxy_factory(TURNOUT_ENV_FILE=str(envf), CELERY_ENABLED=True, CELERY_PERCENTAGE=0)
    assert path_of(p, "h-1") == "legacy"
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: state(p)["percentage"] == 1.0, 5, "reloaded", [p.mp])
    assert path_of(p, "h-2") == "new"
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=50\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "CELERY_PERCENTAGE" in p.log(20) and "keeping the old settings" in p.log(20), 5,
               "reload refused", [p.mp])
    assert state(p)["percentage"] == 1.0 and path_of(p, "h-3") == "new"
    # the kill switch by reload wins over everything
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\nFORCE_LEGACY_QUEUE=true\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: state(p)["force_legacy"] is True, 5, "kill switch by reload", [p.mp])
    assert path_of(p, "h-4") == "legacy"
    assert p.proc.poll() is None


def test_sighup_names_what_needs_a_restart_and_applies_the_rest(proxy_factory, redis_server, tmp_path):
    envf = tmp_path / "turnout.env"
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\n")
    p = proxy_factory(TURNOUT_ENV_FILE=str(envf))
    assert path_of(p, "rl-1") == "new"
    # a live setting (the new queue's ceiling) and two that need a restart
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\nCELERY_QUEUE_MAX_DEPTH=1\n"
                    "REDIS_TIMEOUT_MS=1234\nCELERY_QUEUE=elsewhere\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: 'msg=reloaded' in p.log(20), 5, "reloaded", [p.mp])
    log = p.log(20)
    assert "change only on restart" in log and "REDIS_TIMEOUT_MS" in log and "CELERY_QUEUE" in log, log
    assert "CELERY_QUEUE_MAX_DEPTH" not in log.split("change only on restart")[1].split("\n")[0], log
    # the ceiling is in force: one message is queued already
    r = p.submit(eval_id="rl-2")
    assert r.json()["path"] == "legacy" and r.json()["reason"] == "fallback", r.text
    assert redis_server.queue_lengths() == [0, 1, 0, 0], "the queue name did not change without a restart"
    # a storm of reloads is harmless
    for _ in range(50):
        p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: p.get("/healthz").status_code == 200, 5, "alive after the storm", [p.mp])
    assert p.proc.poll() is None
