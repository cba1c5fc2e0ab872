"""Integration tests of turnout-proxy (issue 2) against real redis-server, real
turnout-legacyd and the real proxy binary. Contracts: shared/DESIGN.md §2-§5,
§7, §9; Celery wire format: shared/WIRE.md §A-§B."""
import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from fixtures_turnout import (
    DURATION_BUCKETS, EVAL_ID_GENERATED_RE, HTTP_TIMEOUT_S, SEP,
    VERSION, Legacyd, base_env, binary, bucket, decode_celery_body, expected_path,
    free_port, http_session, msum, mval, parse_metric_types, parse_metrics,
    priority_lists, series, tool, wait_until,
)

SUBMIT_FIELDS = {"eval_id", "status", "path", "message", "queue_position"}


# --------------------------------------------------------------- helpers

def assert_queued(r, eval_id=None, path=None, proxy=None):
    """A 202 submission reply as DESIGN §4 and §3 describe it."""
    ctx = f"\n{proxy.log(40)}" if proxy is not None else ""
    assert r.status_code == 202, f"want 202, got {r.status_code}: {r.text[:500]}{ctx}"
    body = r.json()
    missing = SUBMIT_FIELDS - set(body)
    assert not missing, f"reply lacks {sorted(missing)}: {body}"
    assert body["status"] == "queued", body
    assert body["path"] in ("legacy", "new"), body
    assert r.headers.get("X-Turnout-Path") == body["path"], \
        f"X-Turnout-Path {r.headers.get('X-Turnout-Path')!r} != body path {body['path']!r}"
    assert isinstance(body["message"], str), body
    if eval_id is not None:
        assert body["eval_id"] == eval_id, body
    if path is not None:
        assert body["path"] == path, f"eval {body['eval_id']}: want path {path}, got {body}"
    return body


def assert_error(r, status, field=None):
    """An error reply: the status and JSON {error, message}, message naming field."""
    assert r.status_code == status, f"want {status}, got {r.status_code}: {r.text[:500]}"
    assert "json" in r.headers.get("Content-Type", ""), \
        f"error reply Content-Type {r.headers.get('Content-Type')!r}, want JSON: {r.text[:300]}"
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], f"no error code: {body}"
    assert isinstance(body.get("message"), str) and body["message"], f"no message: {body}"
    if field is not None:
        assert field in body["message"], f"message does not name {field!r}: {body}"
    return body


def submit_many(proxy, eval_ids, threads=8, headers=None, payload=None):
    """POST /api/eval for each id on keep-alive sessions, threads in parallel.
    Returns [(eval_id, response)] in the order of eval_ids."""
    local = threading.local()

    def one(eid):
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = http_session()
        body = dict(payload or {"code": "print(1)", "language": "python"})
        body["eval_id"] = eid
        return eid, s.post(proxy.url("/api/eval"), json=body, headers=headers or {},
                           timeout=HTTP_TIMEOUT_S)

    with ThreadPoolExecutor(max_workers=threads) as ex:
        return list(ex.map(one, eval_ids))


def find_message(redis_server, task_id, queue="evaluation"):
    """(list name, envelope) of the message with headers.id == task_id."""
    for lst, msgs in redis_server.queue_messages(queue).items():
        for env in msgs:
            if env.get("headers", {}).get("id") == task_id:
                return lst, env
    return None, None


class StubServer:
    """A tiny HTTP server in a thread (a stand-in upstream or legacy service).
    handler(req) -> (status, headers dict, body bytes); req has method, path,
    headers, body. Every request is recorded in .requests."""

    def __init__(self, handler):
        self.handler = handler
        self.requests = []
        self.received = threading.Event()
        stub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = type("Req", (), {})()
                req.method, req.path, req.headers, req.body = self.command, self.path, self.headers, body
                stub.requests.append(req)
                stub.received.set()
                status, hdrs, out = stub.handler(req)
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub_server():
    made = []

    def make(handler):
        s = StubServer(handler)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def legacy_queued_reply(req, delay=0.0):
    time.sleep(delay)
    eid = None
    try:
        eid = json.loads(req.body or b"{}").get("eval_id")
    except ValueError:
        pass
    return 200, {"Content-Type": "application/json"}, json.dumps(
        {"eval_id": eid, "status": "queued", "position": 1}).encode()


# --------------------------------------------------------------- routing

def test_health_and_ready_when_everything_is_up(proxy_factory):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)
    assert p.get("/healthz").status_code == 200
    r = wait_until(lambda: (lambda x: x if x.status_code == 200 else None)(p.get("/readyz")),
                   10, "/readyz -> 200 with redis and legacy up", [p.mp])
    assert r.status_code == 200


def test_2000_submissions_split_30_percent_exactly_by_formula(proxy_factory, redis_server, legacyd):
    pct = 0.3
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    ids = [f"split-{i:05d}" for i in range(2000)]
    results = submit_many(p, ids)
    wrong, paths = [], {}
    for eid, r in results:
        body = assert_queued(r, eval_id=eid, proxy=p)
        paths[eid] = body["path"]
        want = expected_path(eid, pct)
        if body["path"] != want:
            wrong.append((eid, bucket(eid), body["path"], want))
    assert not wrong, (f"{len(wrong)} of 2000 eval_ids not on the DESIGN §3 path, "
                       f"first (eval_id, bucket, got, want): {wrong[:10]}")
    n_new = sum(1 for v in paths.values() if v == "new")
    n_legacy = len(ids) - n_new
    share = n_new / len(ids)
    assert 0.27 <= share <= 0.33, f"new-path share {share:.3f}, want 0.30 ± 0.03"
    lens = redis_server.queue_lengths()
    assert sum(lens) == n_new, (f"{n_new} replies said new, but the priority lists "
                                f"{priority_lists()} hold {lens}")
    # no priority given -> default -> "<queue>\x06\x163"
    assert lens[1] == n_new, f"absent priority must go to evaluation{SEP!r}3: {lens}"
    st = legacyd.status()
    assert st["queued"] == n_legacy, f"{n_legacy} replies said legacy, legacyd /status: {st}"


def test_raising_percentage_only_moves_buckets_from_legacy_to_new(proxy_factory, legacyd, redis_server):
    ids = [f"mono-{i}" for i in range(300)]
    got = {}
    for pct in (0.2, 0.6):
        # fresh backends for each run, so the same eval_ids are new to both
        legacyd.stop()
        legacyd.start()
        redis_server.client().flushall()
        p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
        got[pct] = {eid: assert_queued(r, eid, proxy=p)["path"] for eid, r in submit_many(p, ids)}
        p.stop()
    moved_back = [e for e in ids if got[0.2][e] == "new" and got[0.6][e] != "new"]
    assert not moved_back, f"raising 0.2 -> 0.6 moved these from new to legacy: {moved_back}"
    assert any(got[0.2][e] == "legacy" and got[0.6][e] == "new" for e in ids)


def test_same_eval_id_takes_the_same_path_in_every_proxy(proxy_factory, tmp_path):
    """Issue 2: same eval_id -> same path, whichever proxy process decides.
    Two proxies at 50 % (each with its own legacy service, so a legacy-path
    id is new to both) must agree on every id, and agree with the formula.
    (Idempotent re-submission, `duplicate: true`, comes with route records.)"""
    other_legacy = Legacyd(tmp_path / "legacy2").start()
    try:
        p1 = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE="0.5")
        p2 = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE="0.5", LEGACY_QUEUE_URL=other_legacy.url)
        ids = [f"same-{i}" for i in range(60)]
        paths = {}
        for eid in ids:
            a, b = p1.submit(eval_id=eid), p2.submit(eval_id=eid)
            assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
            assert a.headers["X-Turnout-Path"] == b.headers["X-Turnout-Path"] == expected_path(eid, 0.5), eid
            paths[eid] = a.json()["path"]
        assert set(paths.values()) == {"new", "legacy"}, "the sample should cover both paths"
    finally:
        err = other_legacy.cleanup()
    assert err is None, err


def test_sticky_key_header_decides_the_bucket(proxy_factory):
    pct = 0.5
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    keys = ["user-42"] + [f"user-{i}" for i in range(1, 40)]
    # keys on both paths, and eval_ids whose own bucket disagrees with the key
    assert {expected_path("", pct, sticky_key=k) for k in keys} == {"new", "legacy"}
    disagreeing = 0
    for k in keys:
        want = expected_path("", pct, sticky_key=k)
        ids = [f"sticky-{k}-{i}" for i in range(6)]
        disagreeing += sum(expected_path(e, pct) != want for e in ids)
        for eid in ids:
            r = p.submit(eval_id=eid, headers={"X-Turnout-Sticky-Key": k})
            assert_queued(r, eid, path=want, proxy=p)
    assert disagreeing >= 50, "test vectors do not separate key from eval_id"


def test_sticky_salt_changes_buckets(proxy_factory):
    pct, salt = 0.5, "another-salt"
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct, ROLLOUT_SALT=salt)
    ids = [f"salted-{i}" for i in range(100)]
    for eid, r in submit_many(p, ids):
        assert_queued(r, eid, path=expected_path(eid, pct, salt=salt), proxy=p)
    assert any(expected_path(e, pct, salt=salt) != expected_path(e, pct) for e in ids)


def test_random_mode_gives_roughly_the_percentage(proxy_factory, redis_server):
    pct, n = 0.5, 2000
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct, ROUTING_MODE="random")
    ids = [f"rand-{i:04d}" for i in range(n)]
    paths = {eid: assert_queued(r, eid, proxy=p)["path"] for eid, r in submit_many(p, ids)}
    n_new = sum(v == "new" for v in paths.values())
    # ±5 points; over 2000 that is 4.5 sigma, so this does not flake
    assert abs(n_new / n - pct) <= 0.05, f"random mode at 0.5: {n_new}/{n} on new"
    # random means not the sticky hash: about half of the ids disagree with it
    disagree = sum(paths[e] != expected_path(e, pct) for e in ids)
    assert disagree >= 0.3 * n, f"random mode followed the sticky hash for {n - disagree}/{n}"
    assert sum(redis_server.queue_lengths()) == n_new
    m = p.metrics()
    assert mval(m, "turnout_routing_decisions_total", path="new", reason="percentage") == n_new
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="percentage") == n - n_new


@pytest.mark.parametrize("pct,want", [("0", "legacy"), ("1", "new"), ("1.0", "new"), ("0.0", "legacy")])
def test_percentage_extremes(proxy_factory, pct, want):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    for eid, r in submit_many(p, [f"ext-{pct}-{i}" for i in range(100)]):
        assert_queued(r, eid, path=want, proxy=p)


def test_generated_eval_id(proxy_factory):
    pct = 0.5
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    seen = set()
    for _ in range(20):
        body = assert_queued(p.submit(), proxy=p)
        eid = body["eval_id"]
        assert EVAL_ID_GENERATED_RE.match(eid), f"generated eval_id {eid!r}"
        assert body["path"] == expected_path(eid, pct), (eid, body)
        seen.add(eid)
    assert len(seen) == 20, f"generated eval_ids repeat: {sorted(seen)}"


@pytest.mark.parametrize("bad", ["bad id!", "x" * 129, "", "a/b", "ünï", 123, None, ["a"]],
                         ids=["space-bang", "129-chars", "empty", "slash", "non-ascii",
                              "number", "null", "list"])
def test_invalid_eval_id_is_422(proxy_factory, legacyd, redis_server, bad):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)
    r = p.post("/api/eval", json={"code": "print(1)", "eval_id": bad})
    if bad is None:
        # explicit null may be read as "absent" (generated id) or refused
        if r.status_code == 202:
            assert EVAL_ID_GENERATED_RE.match(r.json()["eval_id"]), r.text
            return
    assert_error(r, 422, "eval_id")
    assert sum(redis_server.queue_lengths()) == 0
    assert legacyd.status()["queued"] == 0


def test_valid_eval_id_edges(proxy_factory):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)
    for eid in ["x" * 128, "A", "Az09_.:-", "eval_20250101_120000_deadbeef"]:
        assert_queued(p.submit(eval_id=eid), eid, path=expected_path(eid, 0.5), proxy=p)


def test_force_legacy_beats_everything(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, FORCE_LEGACY_QUEUE=True)
    ids = [f"forced-{i}" for i in range(100)]
    for eid, r in submit_many(p, ids):
        assert_queued(r, eid, path="legacy", proxy=p)
    assert sum(redis_server.queue_lengths()) == 0
    assert legacyd.status()["queued"] == 100
    m = p.metrics()
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="forced") == 100
    assert msum(m, "turnout_routing_decisions_total", path="new") == 0
    assert mval(m, "turnout_force_legacy") == 1


def test_celery_disabled_sends_everything_to_legacy(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=False, CELERY_PERCENTAGE=1)
    for eid, r in submit_many(p, [f"disabled-{i}" for i in range(50)]):
        assert_queued(r, eid, path="legacy", proxy=p)
    assert sum(redis_server.queue_lengths()) == 0
    assert legacyd.status()["queued"] == 50
    m = p.metrics()
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="disabled") == 50
    assert mval(m, "turnout_celery_enabled") == 0


# --------------------------------------------------------------- outages

def _poll_submit_until_new(p, prefix, timeout=10.0):
    """Submit every 0.2 s until one lands on the new path; returns it."""
    n = [0]

    def attempt():
        n[0] += 1
        r = p.submit(eval_id=f"{prefix}-{n[0]}")
        if r.status_code == 202 and r.json()["path"] == "new":
            return r
        return None
    return wait_until(attempt, timeout, "a submission on the new path after redis came back",
                      [p.mp], interval=0.2)


def test_redis_down_falls_back_to_legacy_then_recovers(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)   # FALLBACK_TO_LEGACY default true
    assert_queued(p.submit(eval_id="before-outage"), "before-outage", path="new", proxy=p)
    assert redis_server.queue_lengths()[1] == 1

    redis_server.stop()
    # generated eval_ids (fresh, so nothing to check): legacy takes them
    for _ in range(20):
        assert_queued(p.submit(), path="legacy", proxy=p)
    assert legacyd.status()["queued"] == 20
    assert p.get("/healthz").status_code == 200

    def not_ready():
        r = p.get("/readyz")
        return r if r.status_code == 503 else None
    r = wait_until(not_ready, 10, "/readyz -> 503 with redis down", [p.mp])
    assert "redis" in r.text.lower(), f"/readyz does not name redis: {r.text}"

    m = p.metrics()
    assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="fallback") == 20
    assert mval(m, "turnout_routing_decisions_total", path="new", reason="percentage") == 1

    redis_server.start()   # same port, empty (no persistence)
    t0 = time.monotonic()
    r = _poll_submit_until_new(p, "after-outage")
    eid = r.json()["eval_id"]
    lst, env = find_message(redis_server, f"celery-{eid}")
    assert env is not None, f"new-path reply for {eid} but no message in redis ({time.monotonic()-t0:.1f}s)"
    wait_until(lambda: p.get("/readyz").status_code == 200, 10, "/readyz -> 200 after redis restart", [p.mp])


def test_redis_down_without_fallback_is_503_with_retry_after(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, FALLBACK_TO_LEGACY=False)
    assert_queued(p.submit(eval_id="nf-before"), "nf-before", path="new", proxy=p)
    redis_server.stop()
    for i in range(5):
        r = p.submit(eval_id=f"nf-down-{i}")
        assert_error(r, 503)
        assert r.headers.get("Retry-After", "").strip(), f"503 without Retry-After: {dict(r.headers)}"
    assert legacyd.status()["queued"] == 0, "FALLBACK_TO_LEGACY=false but something went to legacy"
    redis_server.start()
    r = _poll_submit_until_new(p, "nf-after")
    assert find_message(redis_server, f"celery-{r.json()['eval_id']}")[1] is not None


def test_redis_down_does_not_affect_legacy_routed_submissions(proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0, FALLBACK_TO_LEGACY=False)
    redis_server.stop()
    for i in range(5):
        assert_queued(p.submit(), path="legacy", proxy=p)
    # a client's own eval_id cannot be checked for a resubmission meanwhile:
    # refused by default (test_one_path.py has both settings)
    r = p.submit(eval_id="legacy-only-x")
    assert_error(r, 503)
    assert r.json()["error"] == "eval_id_unchecked" and r.headers.get("Retry-After")
    assert legacyd.status()["queued"] == 5


def test_legacy_down_is_502_and_readyz_names_legacy(proxy_factory, legacyd, redis_server):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0)
    assert_queued(p.submit(eval_id="leg-up"), "leg-up", path="legacy", proxy=p)
    before = p.metrics()
    legacyd.stop()
    r = p.submit(eval_id="leg-down")
    assert r.status_code in (502, 504), f"legacy down: want 502/504, got {r.status_code} {r.text}"
    assert_error(r, r.status_code)
    assert p.get("/healthz").status_code == 200

    def not_ready():
        x = p.get("/readyz")
        return x if x.status_code == 503 else None
    rr = wait_until(not_ready, 10, "/readyz -> 503 with legacy down", [p.mp])
    assert "legacy" in rr.text.lower(), f"/readyz does not name legacy: {rr.text}"
    after = p.metrics()
    assert (msum(after, "turnout_upstream_errors_total", path="legacy")
            - msum(before, "turnout_upstream_errors_total", path="legacy")) >= 1, \
        "legacy failure not counted in turnout_upstream_errors_total{path=legacy}"
    # the new path still works with legacy down
    p2 = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    assert_queued(p2.submit(eval_id="leg-down-new"), "leg-down-new", path="new", proxy=p2)
    # and legacy service resumes when legacyd is back
    legacyd.start()
    r = wait_until(lambda: (lambda x: x if x.status_code == 202 else None)(p.submit()),
                   10, "legacy submissions succeed after legacyd restart", [p.mp], interval=0.2)
    assert_queued(r, path="legacy", proxy=p)


def test_legacy_error_reply_is_502(proxy_factory, stub_server):
    bad = stub_server(lambda req: (500, {"Content-Type": "text/plain"}, b"boom"))
    p = proxy_factory(LEGACY_QUEUE_URL=bad.url)
    assert_error(p.submit(eval_id="leg-500"), 502)
    garbage = stub_server(lambda req: (200, {"Content-Type": "application/json"}, b"not json{"))
    p2 = proxy_factory(LEGACY_QUEUE_URL=garbage.url)
    assert_error(p2.submit(eval_id="leg-garbage"), 502)
    assert p2.get("/healthz").status_code == 200


def test_legacy_timeout_is_504(proxy_factory, stub_server):
    # LEGACY_TIMEOUT_MS is the proxy's documented deadline knob (--help)
    slow = stub_server(lambda req: legacy_queued_reply(req, delay=2.0))
    p = proxy_factory(LEGACY_QUEUE_URL=slow.url, LEGACY_TIMEOUT_MS=300)
    t0 = time.monotonic()
    r = p.submit(eval_id="leg-slow")
    took = time.monotonic() - t0
    assert_error(r, 504)
    assert took < 1.8, f"504 took {took:.2f}s with LEGACY_TIMEOUT_MS=300"


def test_legacy_request_follows_queue_service_protocol(proxy_factory, stub_server):
    stub = stub_server(legacy_queued_reply)
    p = proxy_factory(LEGACY_QUEUE_URL=stub.url)
    body = assert_queued(p.submit(eval_id="proto-1", code="print(2)", timeout=42, priority="low"),
                         "proto-1", path="legacy", proxy=p)
    assert len(stub.requests) == 1
    req = stub.requests[0]
    assert (req.method, req.path) == ("POST", "/tasks"), (req.method, req.path)
    sent = json.loads(req.body)
    for k in ("eval_id", "code", "language", "engine", "timeout", "priority"):
        assert k in sent, f"POST /tasks lacks {k}: {sent}"
    assert (sent["eval_id"], sent["code"], sent["language"], sent["timeout"]) == \
        ("proto-1", "print(2)", "python", 42), sent
    assert body["eval_id"] == "proto-1"


# --------------------------------------------------------------- input validation

@pytest.fixture
def vproxy(proxy_factory):
    return proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)


BAD_FIELDS = [
    ({}, "code"),
    ({"code": ""}, "code"),
    ({"code": "   \n\t "}, "code"),
    ({"code": 123}, "code"),
    ({"code": "print(1)", "language": "cobol"}, "language"),
    ({"code": "print(1)", "language": 5}, "language"),
    ({"code": "print(1)", "timeout": 0}, "timeout"),
    ({"code": "print(1)", "timeout": 901}, "timeout"),
    ({"code": "print(1)", "timeout": "abc"}, "timeout"),
    ({"code": "print(1)", "timeout": -5}, "timeout"),
    ({"code": "print(1)", "priority": "urgent"}, "priority"),
    ({"code": "print(1)", "priority": 10}, "priority"),
    ({"code": "print(1)", "priority": -1}, "priority"),
    ({"code": "print(1)", "priority": [1]}, "priority"),
]


def test_bad_inputs_each_get_status_and_message(vproxy, redis_server, legacyd):
    p = vproxy
    failures = []

    def check(desc, fn):
        try:
            fn()
        except AssertionError as e:
            failures.append(f"{desc}: {e}")

    url = p.url("/api/eval")
    s = p.session
    check("invalid JSON -> 400", lambda: assert_error(
        s.post(url, data=b'{"code": "print(1)",', headers={"Content-Type": "application/json"},
               timeout=HTTP_TIMEOUT_S), 400))
    check("empty body -> 400", lambda: assert_error(
        s.post(url, data=b"", headers={"Content-Type": "application/json"}, timeout=HTTP_TIMEOUT_S), 400))
    check("text/plain -> 415", lambda: assert_error(
        s.post(url, data=b'{"code": "print(1)"}', headers={"Content-Type": "text/plain"},
               timeout=HTTP_TIMEOUT_S), 415))
    check("form -> 415", lambda: assert_error(
        s.post(url, data={"code": "print(1)"}, timeout=HTTP_TIMEOUT_S), 415))

    def not_object():
        r = s.post(url, json=[1, 2], timeout=HTTP_TIMEOUT_S)
        assert r.status_code in (400, 422), f"JSON array body: {r.status_code} {r.text}"
        assert_error(r, r.status_code)
        n_422[0] += r.status_code == 422
    n_422 = [len(BAD_FIELDS)]
    check("JSON array -> 400/422", not_object)
    for payload, field in BAD_FIELDS:
        check(f"{payload} -> 422 naming {field}",
              lambda payload=payload, field=field: assert_error(
                  s.post(url, json=payload, timeout=HTTP_TIMEOUT_S), 422, field))
    assert not failures, "bad inputs answered wrongly:\n" + "\n".join(failures)
    assert sum(redis_server.queue_lengths()) == 0, "a rejected submission reached redis"
    assert legacyd.status()["queued"] == 0, "a rejected submission reached legacy"
    # still serving after all of that
    assert_queued(p.submit(eval_id="after-bad"), "after-bad", proxy=p)
    m = p.metrics()
    assert msum(m, "turnout_requests_total", route="submit", code="422") == n_422[0]


@pytest.mark.parametrize("priority", [True, False, "high", "default", "low"] + list(range(10)),
                         ids=lambda v: repr(v))
def test_valid_priorities_accepted(vproxy, priority):
    eid = f"prio-ok-{str(priority).lower()}"
    assert_queued(vproxy.submit(eval_id=eid, priority=priority), eid, proxy=vproxy)


def test_valid_edges_accepted(vproxy):
    p = vproxy
    for i, extra in enumerate([{"timeout": 1}, {"timeout": 900}, {"language": "python"},
                               {"engine": "docker"}, {"code": "x"}]):
        assert_queued(p.submit(eval_id=f"edge-{i}", **extra), f"edge-{i}", proxy=p)
    r = p.session.post(p.url("/api/eval"), data=json.dumps({"code": "print(1)", "eval_id": "cs"}),
                       headers={"Content-Type": "application/json; charset=utf-8"},
                       timeout=HTTP_TIMEOUT_S)
    assert_queued(r, "cs", proxy=p)


def test_allowed_languages_list(proxy_factory):
    p = proxy_factory(ALLOWED_LANGUAGES="python,javascript")
    assert_queued(p.submit(eval_id="js", language="javascript"), "js", proxy=p)
    assert_error(p.submit(eval_id="rb", language="ruby"), 422, "language")


def test_body_over_max_body_bytes_is_413(proxy_factory, legacyd):
    p = proxy_factory(MAX_BODY_BYTES=1024)
    big = json.dumps({"code": "#" * 2000, "eval_id": "too-big"})
    assert len(big) > 2000
    assert_error(p.session.post(p.url("/api/eval"), data=big,
                                headers={"Content-Type": "application/json"},
                                timeout=HTTP_TIMEOUT_S), 413)
    small = json.dumps({"code": "#" * 900, "eval_id": "fits"})
    assert len(small) <= 1024
    assert_queued(p.session.post(p.url("/api/eval"), data=small,
                                 headers={"Content-Type": "application/json"},
                                 timeout=HTTP_TIMEOUT_S), "fits", proxy=p)
    # far beyond any ceiling: still a 413 and the proxy survives
    huge = b'{"code": "' + b"#" * (8 << 20) + b'"}'
    try:
        r = http_session().post(p.url("/api/eval"), data=huge,
                                headers={"Content-Type": "application/json"}, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 413, r.status_code
    except requests.ConnectionError:
        pass   # the server may answer and close before the client finished sending
    assert p.get("/healthz").status_code == 200
    assert legacyd.status()["queued"] == 1


def test_code_over_1_mib_is_422(proxy_factory, redis_server):
    p = proxy_factory(MAX_BODY_BYTES=4 << 20, CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    assert_error(p.submit(eval_id="code-too-big", code="#" * 1048577), 422, "code")
    assert_queued(p.submit(eval_id="code-1mib", code="#" * 1048576), "code-1mib", path="new", proxy=p)
    lst, env = find_message(redis_server, "celery-code-1mib")
    assert env is not None
    assert decode_celery_body(env)[0][1] == "#" * 1048576


# --------------------------------------------------------------- new path message

# (priority as sent, index into priority_lists()); a list, since True == 1 as a dict key
PRIORITY_LIST = [(True, 0), ("high", 0), (0, 0), (1, 0), (2, 0),
                 (False, 1), ("default", 1), (3, 1), (4, 1), (5, 1), (None, 1),
                 ("low", 2), (6, 2), (7, 2), (8, 2),
                 (9, 3)]


def test_priority_placement_on_kombu_lists(proxy_factory, redis_server):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    lists = priority_lists()
    want = {}
    for i, (prio, idx) in enumerate(PRIORITY_LIST):
        eid = f"place-{i}"
        fields = {} if prio is None else {"priority": prio}
        assert_queued(p.submit(eval_id=eid, **fields), eid, path="new", proxy=p)
        want[eid] = (prio, lists[idx])
    wrong = []
    for eid, (prio, lst) in want.items():
        got, _ = find_message(redis_server, f"celery-{eid}")
        if got != lst:
            wrong.append(f"priority {prio!r}: in {got!r}, want {lst!r}")
    assert not wrong, "\n".join(wrong)
    assert sum(redis_server.queue_lengths()) == len(PRIORITY_LIST)


HEADERS_V2 = ["lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
              "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
              "origin", "ignore_result"]


def test_celery_message_is_protocol_v2(proxy_factory, redis_server):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    code = 'print("héllo ✓ \\"quoted\\"")\nfor i in range(3):\n\tprint(i)\n'
    eid = "wire-1"
    assert_queued(p.submit(eval_id=eid, code=code, timeout=45, engine="docker", priority="low"),
                  eid, path="new", proxy=p)
    assert_queued(p.submit(eval_id="wire-2"), "wire-2", path="new", proxy=p)
    c = redis_server.client()
    raw = c.lrange(priority_lists()[2], 0, -1)
    assert len(raw) == 1, raw
    env = json.loads(raw[0].decode("utf-8"))
    assert env["content-type"] == "application/json", env
    assert env["content-encoding"] == "utf-8", env
    h = env["headers"]
    missing = [k for k in HEADERS_V2 if k not in h]
    assert not missing, f"headers lack {missing}: {h}"
    assert h["lang"] == "py"
    assert h["task"] == "tasks.evaluate_code"
    assert h["id"] == f"celery-{eid}"
    for k in ("shadow", "eta", "expires", "group", "group_index", "parent_id"):
        assert h[k] is None, f"header {k} = {h[k]!r}, want null"
    assert h["retries"] == 0
    assert isinstance(h["timelimit"], list) and len(h["timelimit"]) == 2, h["timelimit"]
    assert h["root_id"] in (h["id"], None), h["root_id"]
    assert isinstance(h["argsrepr"], str) and isinstance(h["kwargsrepr"], str)
    assert isinstance(h["origin"], str) and h["origin"], h["origin"]
    assert h["ignore_result"] is False
    props = env["properties"]
    assert props["delivery_info"] == {"exchange": "", "routing_key": "evaluation"}, props
    assert isinstance(props.get("delivery_tag"), str) and props["delivery_tag"], props
    assert props["body_encoding"] == "base64"
    body = decode_celery_body(env)
    assert isinstance(body, list) and len(body) == 3, body
    args, kwargs, embed = body
    assert args == [eid, code, "python"], args
    assert set(kwargs) == {"timeout", "engine", "priority"}, kwargs
    assert kwargs["timeout"] == 45 and kwargs["engine"] == "docker", kwargs
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}, embed
    # delivery tags are unique
    _, env2 = find_message(redis_server, "celery-wire-2")
    assert env2["properties"]["delivery_tag"] != props["delivery_tag"]
    assert decode_celery_body(env2)[1]["timeout"] == 30, "default timeout is 30"


def test_custom_queue_and_task_name(proxy_factory, redis_server):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, CELERY_QUEUE="q2",
                      CELERY_TASK_NAME="other.task")
    assert_queued(p.submit(eval_id="cq", priority=9), "cq", path="new", proxy=p)
    assert redis_server.queue_lengths("q2") == [0, 0, 0, 1]
    assert sum(redis_server.queue_lengths()) == 0
    lst, env = find_message(redis_server, "celery-cq", queue="q2")
    assert env["headers"]["task"] == "other.task"
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q2"}


# --------------------------------------------------------------- passthrough

def test_passthrough_to_upstream(proxy_factory, stub_server):
    def echo(req):
        status = int(req.headers.get("X-Want-Status") or 200)
        out = json.dumps({"method": req.method, "path": req.path,
                          "custom": req.headers.get("X-Custom"),
                          "body": req.body.decode(errors="replace")}).encode()
        return status, {"Content-Type": "application/json", "X-Upstream": "yes"}, out
    up = stub_server(echo)
    p = proxy_factory(UPSTREAM_API_URL=up.url)
    r = p.get("/api/other?x=1", headers={"X-Custom": "abc"})
    assert r.status_code == 200, r.text
    assert r.headers.get("X-Upstream") == "yes", dict(r.headers)
    assert r.json() == {"method": "GET", "path": "/api/other?x=1", "custom": "abc", "body": ""}
    r = p.post("/some/path", data=b"payload-bytes \x00\x01",
               headers={"X-Custom": "def", "X-Want-Status": "418",
                        "Content-Type": "application/octet-stream"})
    assert r.status_code == 418, r.text
    got = r.json()
    assert (got["method"], got["path"], got["custom"]) == ("POST", "/some/path", "def"), got
    assert got["body"] == "payload-bytes \x00\x01", got
    assert up.requests[-1].body == b"payload-bytes \x00\x01"
    r = p.session.put(p.url("/x/y"), data=b"z", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200 and r.json()["method"] == "PUT", r.text
    r = p.session.delete(p.url("/x/y"), headers={"X-Want-Status": "404"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 404 and r.json()["method"] == "DELETE", r.text
    assert len(up.requests) == 4
    m = p.metrics()
    assert msum(m, "turnout_requests_total", route="passthrough") == 4
    assert msum(m, "turnout_requests_total", route="submit") == 0
    # the proxy's own paths are not passed through
    assert p.get("/healthz").status_code == 200
    assert len(up.requests) == 4


def test_unknown_path_without_upstream_is_404_json(proxy_factory):
    p = proxy_factory()
    for path in ("/api/other?x=1", "/nope", "/"):
        assert_error(p.get(path), 404)
    assert_error(p.post("/some/path", data=b"x"), 404)


def test_upstream_down_is_502(proxy_factory):
    p = proxy_factory(UPSTREAM_API_URL=f"http://127.0.0.1:{free_port()}")
    r = p.get("/api/other")
    assert r.status_code in (502, 504), r.text
    assert_error(r, r.status_code)


# --------------------------------------------------------------- metrics

def promtool_check(text):
    r = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(),
                       capture_output=True, timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace").strip()
    assert r.returncode == 0 and not out, f"promtool check metrics: rc={r.returncode}\n{out}"


def test_metrics_at_startup(proxy_factory):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.3)
    text = p.metrics_text()
    promtool_check(text)
    m = parse_metrics(text)
    types = parse_metric_types(text)
    want_types = {
        "turnout_requests_total": "counter",
        "turnout_request_duration_seconds": "histogram",
        "turnout_routing_decisions_total": "counter",
        "turnout_upstream_errors_total": "counter",
        "turnout_in_flight_requests": "gauge",
        "turnout_rollout_percentage": "gauge",
        "turnout_celery_enabled": "gauge",
        "turnout_force_legacy": "gauge",
        "turnout_build_info": "gauge",
    }
    wrong = {k: types.get(k) for k, v in want_types.items() if types.get(k) != v}
    assert not wrong, f"# TYPE wrong or missing (want {want_types}): {wrong}"

    for path in ("legacy", "new"):
        s = series(m, "turnout_requests_total", route="submit", path=path)
        assert s and all(v == 0 for _, v in s), f"requests_total{{submit,{path}}} at start: {s}"
        les = sorted(float(ls["le"]) for ls, _ in
                     series(m, "turnout_request_duration_seconds_bucket", route="submit", path=path))
        assert les == DURATION_BUCKETS, f"buckets of path={path}: {les}"
        assert mval(m, "turnout_request_duration_seconds_count", route="submit", path=path) == 0
        assert mval(m, "turnout_request_duration_seconds_sum", route="submit", path=path) == 0
        assert mval(m, "turnout_in_flight_requests", path=path) == 0
    # every histogram series has the same bucket set
    by_series = {}
    for ls, _ in series(m, "turnout_request_duration_seconds_bucket"):
        key = tuple(sorted((k, v) for k, v in ls.items() if k != "le"))
        by_series.setdefault(key, []).append(float(ls["le"]))
    odd = {k: sorted(v) for k, v in by_series.items() if sorted(v) != DURATION_BUCKETS}
    assert not odd, f"histogram series with other buckets: {odd}"
    for path, reason in [("legacy", "forced"), ("legacy", "disabled"), ("legacy", "percentage"),
                         ("new", "percentage"), ("legacy", "fallback")]:
        assert mval(m, "turnout_routing_decisions_total", path=path, reason=reason) == 0
    assert abs(mval(m, "turnout_rollout_percentage") - 0.3) < 1e-9
    assert mval(m, "turnout_celery_enabled") == 1
    assert mval(m, "turnout_force_legacy") == 0
    assert mval(m, "turnout_build_info", version=VERSION) == 1
    # label values (last, so the checks above report first)
    labels = [(name, dict(ls)) for name, ls in m]
    routes = {ls["route"] for _, ls in labels if "route" in ls}
    allowed = {"submit", "status", "cancel", "batch", "dlq", "admin", "passthrough"}
    assert routes <= allowed, f"route labels outside DESIGN §9's fixed set: {sorted(routes - allowed)}"
    paths = {ls["path"] for _, ls in labels if "path" in ls}
    assert paths <= {"legacy", "new", "none"}, f"path labels outside DESIGN §9: {paths}"


def test_metrics_count_exactly_what_was_served(proxy_factory):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)
    before = p.metrics()
    ids = [f"count-{i}" for i in range(60)]
    got = {eid: assert_queued(r, eid, proxy=p)["path"] for eid, r in submit_many(p, ids)}
    for i in range(3):
        assert_error(p.submit(eval_id=f"count-bad-{i}", language="cobol"), 422, "language")
    text = p.metrics_text()
    promtool_check(text)
    after = parse_metrics(text)

    def d(name, **labels):
        return msum(after, name, **labels) - msum(before, name, **labels)
    n = {path: sum(v == path for v in got.values()) for path in ("legacy", "new")}
    assert n["new"] and n["legacy"]
    assert d("turnout_requests_total", route="submit") == 63
    assert d("turnout_requests_total", route="submit", code="202") == 60
    assert d("turnout_requests_total", route="submit", code="422") == 3
    for path in ("legacy", "new"):
        assert d("turnout_requests_total", route="submit", path=path, code="202") == n[path], path
        assert d("turnout_routing_decisions_total", path=path, reason="percentage") == n[path], path
        assert d("turnout_request_duration_seconds_count", route="submit", path=path) == n[path], path
        assert d("turnout_request_duration_seconds_bucket", route="submit", path=path,
                 le="+Inf") == n[path], path
        assert d("turnout_request_duration_seconds_sum", route="submit", path=path) > 0
        assert mval(after, "turnout_in_flight_requests", path=path) == 0
    assert d("turnout_routing_decisions_total") == 60
    # buckets are cumulative
    for path in ("legacy", "new"):
        vals = [v for _, v in sorted(((float(ls["le"]), v) for ls, v in series(
            after, "turnout_request_duration_seconds_bucket", route="submit", path=path)))]
        assert vals == sorted(vals), f"non-cumulative buckets for {path}: {vals}"


# --------------------------------------------------------------- CLI and signals

def run_cli(args, env_extra=None, timeout=10):
    env = base_env()
    env.update(env_extra or {})
    return subprocess.run([binary("turnout-proxy")] + args, env=env, capture_output=True,
                          timeout=timeout, text=True)


def test_check_config_reports_every_bad_variable_at_once():
    r = run_cli(["--check-config"], {"CELERY_PERCENTAGE": "50", "ROUTING_MODE": "foo",
                                     "PROXY_LISTEN": "nope"})
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"rc={r.returncode}, want 2\n{out}"
    for needle in ['CELERY_PERCENTAGE="50"', "must be between 0 and 1",
                   'ROUTING_MODE="foo"', 'PROXY_LISTEN="nope"']:
        assert needle in out, f"--check-config output lacks {needle!r}:\n{out}"


@pytest.mark.parametrize("var,value", [("CELERY_PERCENTAGE", "-0.1"), ("CELERY_PERCENTAGE", "abc"),
                                       ("CELERY_PERCENTAGE", "1.01"), ("CELERY_ENABLED", "maybe"),
                                       ("FALLBACK_TO_LEGACY", "perhaps"), ("MAX_BODY_BYTES", "-1"),
                                       ("CELERY_BROKER_URL", "http://x"), ("LOG_LEVEL", "loud")])
def test_check_config_rejects(var, value):
    r = run_cli(["--check-config"], {var: value})
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"{var}={value!r}: rc={r.returncode}\n{out}"
    assert var in out, out


def test_check_config_clean_env_and_good_values():
    r = run_cli(["--check-config"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(["--check-config"], {"CELERY_PERCENTAGE": "0.3", "CELERY_ENABLED": "true",
                                     "ROUTING_MODE": "random", "PROXY_LISTEN": "127.0.0.1:9999",
                                     "FORCE_LEGACY_QUEUE": "false"})
    assert r.returncode == 0, r.stdout + r.stderr


def test_version_and_help():
    r = run_cli(["--version"])
    assert r.returncode == 0 and VERSION in r.stdout, (r.returncode, r.stdout, r.stderr)
    r = run_cli(["--help"])
    assert r.returncode == 0, r.stderr
    for var in ["PROXY_LISTEN", "CELERY_ENABLED", "CELERY_PERCENTAGE", "FORCE_LEGACY_QUEUE",
                "ROUTING_MODE", "ROLLOUT_SALT", "FALLBACK_TO_LEGACY", "CELERY_BROKER_URL",
                "CELERY_RESULT_BACKEND", "CELERY_QUEUE", "CELERY_TASK_NAME", "LEGACY_QUEUE_URL",
                "UPSTREAM_API_URL", "ADMIN_TOKEN", "MAX_BODY_BYTES", "ALLOWED_LANGUAGES",
                "LOG_LEVEL", "LOG_FORMAT", "PROXY_TLS_CERT", "PROXY_TLS_KEY"]:
        assert var in r.stdout, f"--help does not document {var}"


def test_bad_config_at_startup_exits_2(redis_server, legacyd):
    r = run_cli([], {"CELERY_PERCENTAGE": "1.5", "PROXY_LISTEN": f"127.0.0.1:{free_port()}",
                     "CELERY_BROKER_URL": redis_server.url, "LEGACY_QUEUE_URL": legacyd.url})
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "CELERY_PERCENTAGE" in r.stdout + r.stderr


def test_sigterm_idle_exits_0(proxy_factory):
    p = proxy_factory()
    p.stop()


def test_sigterm_drains_request_in_flight(proxy_factory, stub_server):
    slow = stub_server(lambda req: legacy_queued_reply(req, delay=1.5))
    p = proxy_factory(LEGACY_QUEUE_URL=slow.url)
    box = {}

    def call():
        try:
            box["r"] = http_session().post(p.url("/api/eval"), json={"code": "print(1)",
                                                                     "eval_id": "drain-1"},
                                           timeout=HTTP_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001
            box["e"] = e
    t = threading.Thread(target=call)
    t.start()
    assert slow.received.wait(5), f"legacy stand-in never got the request\n{p.log()}"
    p.proc.send_signal(signal.SIGTERM)
    t.join(HTTP_TIMEOUT_S + 2)
    assert "e" not in box, f"in-flight request failed during drain: {box.get('e')!r}\n{p.log()}"
    assert_queued(box["r"], "drain-1", path="legacy", proxy=p)
    rc = p.proc.wait(15)
    assert rc == 0, f"exit {rc} after SIGTERM with a request in flight\n{p.log()}"
