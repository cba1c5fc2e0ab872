"""The legacy Queue Service misbehaving (issue 7, fault tests): nothing
listening, too slow, answering garbage. LEGACY_QUEUE_URL points at small
loopback servers written here (faultlib.RawHTTPServer); every submission goes
to legacy (CELERY_ENABLED=false). Checks: the documented JSON error (502
legacy_error / 504 legacy_timeout), the failure counted in
turnout_upstream_errors_total{path="legacy",reason}, MAX_IN_FLIGHT bounding
what waits on a slow legacy (the excess is 503 overloaded + Retry-After,
turnout_in_flight_requests never above it), and the proxy serving normally
afterwards."""
import threading
import time
import uuid

import pytest
from faultlib import http_reply, json_error, legacy_ok_reply, retry_after_ok, scale
from fixtures_turnout import free_port, http_session, msum, mval


def legacy_errors(p, reason):
    return mval(p.metrics(), "turnout_upstream_errors_total", path="legacy", reason=reason)


def eid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_serves_normally(p):
    """A normal submission still gets its 202 and the probes answer."""
    assert p.mp.running(), f"the proxy died\n{p.log()}"
    assert p.get("/healthz").status_code == 200
    r = p.submit(eval_id=eid("after"))
    assert r.status_code == 202 and r.json()["path"] == "legacy", f"{r.status_code} {r.text}\n{p.log(30)}"


# --------------------------------------------------------------- (a) nothing listening

def test_legacy_not_listening_is_502_counted_as_connect(proxy_factory):
    dead = free_port()   # nothing listens there
    p = proxy_factory(LEGACY_QUEUE_URL=f"http://127.0.0.1:{dead}")
    n = scale(5, 200)
    before = legacy_errors(p, "connect")
    t0 = time.monotonic()
    for i in range(n):
        r = p.submit(eval_id=eid("dead"))
        json_error(r, 502, "legacy_error")
        assert r.headers.get("X-Turnout-Path") in (None, "legacy"), dict(r.headers)
    took = time.monotonic() - t0
    assert legacy_errors(p, "connect") - before == n, p.metrics_text()
    assert took < 2.0 + 0.05 * n, f"{n} refused connections took {took:.1f}s (should fail fast)"
    assert p.mp.running() and p.get("/healthz").status_code == 200


# --------------------------------------------------------------- (b) slow

def slow_handler(delay):
    """Answers after delay (longer than LEGACY_TIMEOUT_MS), or gives up as
    soon as the proxy hangs up, so `active` counts only calls the proxy
    still waits on."""
    def h(srv, method, path, headers, body):
        if srv.wait_or_hangup(delay):
            return None
        return legacy_ok_reply(body)
    return h


def test_slow_legacy_is_504_counted_as_timeout(proxy_factory, raw_server):
    slow = raw_server(slow_handler(3.0))
    p = proxy_factory(LEGACY_QUEUE_URL=slow.url, LEGACY_TIMEOUT_MS=400)
    before = legacy_errors(p, "timeout")
    t0 = time.monotonic()
    r = p.submit(eval_id=eid("slow"))
    took = time.monotonic() - t0
    json_error(r, 504, "legacy_timeout")
    assert 0.35 <= took < 2.0, f"504 after {took:.2f}s with LEGACY_TIMEOUT_MS=400"
    assert legacy_errors(p, "timeout") - before == 1
    assert msum(p.metrics(), "turnout_in_flight_requests") == 0


def test_slow_legacy_in_flight_bounded_by_max_in_flight(proxy_factory, raw_server):
    bound = 20
    clients = scale(60, 100)   # a burst far beyond ~100 new connections overflows evhttp's listen backlog (128)
    rounds = scale(1, 10)
    timeout_ms = 2500
    slow = raw_server(slow_handler(10.0), max_conns=clients + 50)
    p = proxy_factory(LEGACY_QUEUE_URL=slow.url, LEGACY_TIMEOUT_MS=timeout_ms, MAX_IN_FLIGHT=bound)
    base = p.metrics()
    stop = threading.Event()
    gauge_peak = [0.0]
    gauge_samples = [0]

    def sample():
        s = http_session()
        try:
            while not stop.is_set():
                try:
                    m = s.get(p.url("/metrics"), timeout=2).text
                except Exception:  # noqa: BLE001 - keep sampling
                    continue
                v = sum(float(line.rsplit(" ", 1)[1]) for line in m.splitlines()
                        if line.startswith("turnout_in_flight_requests{"))
                gauge_peak[0] = max(gauge_peak[0], v)
                gauge_samples[0] += 1
                time.sleep(0.02)
        finally:
            s.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    replies = []
    lock = threading.Lock()
    try:
        for rnd in range(rounds):
            barrier = threading.Barrier(clients)

            def one(i):
                s = http_session()
                try:
                    barrier.wait(10)
                    t0 = time.monotonic()
                    r = s.post(p.url("/api/eval"), json={"code": "print(1)", "eval_id": eid(f"burst{rnd}")},
                               timeout=15)
                    with lock:
                        replies.append((r, time.monotonic() - t0))
                finally:
                    s.close()
            ts = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert not any(t.is_alive() for t in ts), "a client got no reply within 30 s"
    finally:
        stop.set()
        sampler.join(5)
    assert len(replies) == clients * rounds
    timeouts = [(r, d) for r, d in replies if r.status_code == 504]
    overloaded = [(r, d) for r, d in replies if r.status_code == 503]
    other = [(r.status_code, r.text[:200]) for r, _ in replies if r.status_code not in (503, 504)]
    assert not other, f"replies other than 504/503: {other[:5]}"
    for r, _ in timeouts:
        json_error(r, 504, "legacy_timeout")
    for r, d in overloaded:
        json_error(r, 503, "overloaded")
        assert retry_after_ok(r), f"503 overloaded without Retry-After: {dict(r.headers)}"
        assert d < 1.0, f"an overloaded refusal took {d:.2f}s: it should not wait on the backend"
    # all clients of a round arrive together, well within one LEGACY_TIMEOUT_MS
    assert len(timeouts) == bound * rounds, (len(timeouts), len(overloaded))
    assert slow.max_active <= bound, f"legacy saw {slow.max_active} requests at once (MAX_IN_FLIGHT={bound})"
    assert gauge_samples[0] > 5, "the in-flight gauge was hardly sampled"
    assert gauge_peak[0] <= bound, f"turnout_in_flight_requests reached {gauge_peak[0]} > {bound}"
    m = p.metrics()
    assert (mval(m, "turnout_rejected_requests_total", reason="overload")
            - mval(base, "turnout_rejected_requests_total", reason="overload")) == len(overloaded)
    assert (mval(m, "turnout_upstream_errors_total", path="legacy", reason="timeout")
            - mval(base, "turnout_upstream_errors_total", path="legacy", reason="timeout")) == len(timeouts)
    assert msum(m, "turnout_in_flight_requests") == 0
    assert p.mp.running() and p.get("/healthz").status_code == 200


# --------------------------------------------------------------- (c) garbage

BIG = 9 * 1024 * 1024   # over the 8 MiB the legacy client reads by default (LEGACY_MAX_REPLY_BYTES)

GARBAGE = {
    # case: (raw reply, the reason it must be counted under)
    "non_json_200": (http_reply(201, b"queued, thanks!", ctype="text/plain"), "bad_reply"),
    "truncated_json": (http_reply(201, b'{"eval_id": "x", "status": "que'), "bad_reply"),
    "json_array_200": (http_reply(201, b'[{"eval_id": "x", "status": "queued"}]'), "bad_reply"),
    "json_string_200": (http_reply(200, b'"queued"'), "bad_reply"),
    "html_500": (http_reply(500, b"<html><body><h1>500 Internal Server Error</h1></body></html>",
                            ctype="text/html"), "bad_status"),
    "enormous_200": (http_reply(201, b'{"eval_id": "x", "pad": "' + b"A" * BIG + b'"}'), "bad_reply"),
}

# an enormous reply is a bad reply (it was once counted as a connect failure)


@pytest.mark.parametrize("case", [
    c for c in GARBAGE])
def test_legacy_garbage_is_502_counted_and_proxy_keeps_serving(case, proxy_factory, raw_server):
    reply, reason = GARBAGE[case]
    mode = {"bad": True}

    def h(srv, method, path, headers, body):
        if method == "POST" and path == "/tasks" and mode["bad"]:
            return reply
        if path == "/health":
            return http_reply(200, b'{"status":"ok"}')
        return legacy_ok_reply(body)
    srv = raw_server(h)
    p = proxy_factory(LEGACY_QUEUE_URL=srv.url, LEGACY_TIMEOUT_MS=3000)
    base = p.metrics()
    n = scale(3, 50)
    for _ in range(n):
        r = p.submit(eval_id=eid(case))
        json_error(r, 502, "legacy_error")
    m = p.metrics()
    counted = (msum(m, "turnout_upstream_errors_total", path="legacy")
               - msum(base, "turnout_upstream_errors_total", path="legacy"))
    assert counted == n, f"{case}: {counted} legacy errors counted for {n} failures"
    # the failed submissions released their route records: the same id works once legacy is sane
    mode["bad"] = False
    assert_serves_normally(p)
    assert msum(p.metrics(), "turnout_in_flight_requests") == 0
    by_reason = {rs: mval(m, "turnout_upstream_errors_total", path="legacy", reason=rs)
                 - mval(base, "turnout_upstream_errors_total", path="legacy", reason=rs)
                 for rs in ("timeout", "connect", "bad_status", "bad_reply")}
    assert by_reason[reason] == n, f"{case}: want reason={reason}, counted {by_reason}"


def test_legacy_closing_without_a_reply_is_502(proxy_factory, raw_server):
    """A legacy service that accepts and hangs up (or sends half a reply)."""
    mode = {"n": 0}

    def h(srv, method, path, headers, body):
        if method == "POST" and path == "/tasks" and mode["n"] < 2:
            mode["n"] += 1
            if mode["n"] == 1:
                return None   # close, nothing sent
            return b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 500\r\n" \
                   b"Connection: close\r\n\r\n{\"eval_id\":"   # then close mid-body
        return legacy_ok_reply(body)
    srv = raw_server(h)
    p = proxy_factory(LEGACY_QUEUE_URL=srv.url)
    base = p.metrics()
    for _ in range(2):
        json_error(p.submit(eval_id=eid("hangup")), 502, "legacy_error")
    counted = (msum(p.metrics(), "turnout_upstream_errors_total", path="legacy")
               - msum(base, "turnout_upstream_errors_total", path="legacy"))
    assert counted == 2
    assert_serves_normally(p)
