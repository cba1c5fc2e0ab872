"""Cross-site policy (proxy/xsite.c) and the sensitive reads, against the
real turnout-proxy, redis-server and turnout-legacyd:

- a state-changing request to an endpoint the proxy owns, sent by a browser
  page of another origin (Origin not the proxy's own nor in
  ALLOWED_ORIGINS, Origin: null, Sec-Fetch-Site cross-site/same-site), is
  refused 403 cross_origin and counted; curl-like clients (no Origin, no
  Sec-Fetch-Site) keep working;
- a body must be declared Content-Type: application/json (415);
- ALLOWED_HOSTS refuses other Host names on every request (421);
- the dashboard cannot be framed, JSON replies carry nosniff;
- DLQ args/kwargs/message and shadow outputs need READ_TOKEN or ADMIN_TOKEN;
- a real headless Chromium page on another origin cannot submit or cancel.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fixtures_turnout import HTTP_TIMEOUT_S, free_port, msum, mval, wait_until
from test_tls_security import certs, tls_proxy  # noqa: F401  (fixtures, found by name)

ADMIN = "xs-admin-token"
READ = "xs-read-token"
SECRET_CODE = "SECRET='hunter2'\nprint(SECRET)"


def port_of(p):
    return int(p.base.rsplit(":", 1)[1])


def rejected(p, reason):
    return mval(p.metrics(), "turnout_rejected_requests_total", reason=reason)


def routed(p):
    return msum(p.metrics(), "turnout_routing_decisions_total")


def post_eval(p, eval_id, headers=None, path="/api/eval"):
    h = {"Content-Type": "application/json", **(headers or {})}
    return p.session.post(p.url(path), data=json.dumps({"code": "print(1)", "eval_id": eval_id}),
                          headers=h, timeout=HTTP_TIMEOUT_S)


def assert_error(resp, status, code, *names):
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["Content-Type"] == "application/json", resp.headers
    assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.headers
    body = resp.json()
    assert body["error"] == code, body
    for n in names:
        assert n in body["message"], (n, body)
    return body


# --------------------------------------------------------------- Origin

def test_origin_rules_for_writes(proxy_factory, legacyd):
    p = proxy_factory(ALLOWED_ORIGINS="https://app.example.com, http://localhost:3000")
    own = f"http://127.0.0.1:{port_of(p)}"
    before = rejected(p, "cross_origin")

    # curl, SDKs: neither Origin nor Sec-Fetch-Site
    assert post_eval(p, "o-plain").status_code == 202
    # the proxy's own origin (the dashboard), and fetch metadata saying so
    assert post_eval(p, "o-own", {"Origin": own}).status_code == 202
    assert post_eval(p, "o-own-sfs", {"Origin": own, "Sec-Fetch-Site": "same-origin"}).status_code == 202
    assert post_eval(p, "o-sfs-none", {"Sec-Fetch-Site": "none"}).status_code == 202
    # listed origins, whatever the fetch metadata
    assert post_eval(p, "o-listed", {"Origin": "https://app.example.com",
                                     "Sec-Fetch-Site": "cross-site"}).status_code == 202
    assert post_eval(p, "o-listed2", {"Origin": "http://LOCALHOST:3000"}).status_code == 202
    assert rejected(p, "cross_origin") == before

    refused = [
        {"Origin": "http://evil.example"},
        {"Origin": "https://app.example.com.evil.example"},
        {"Origin": "http://app.example.com"},                       # other scheme than listed
        {"Origin": f"http://localhost:{port_of(p)}"},                # same port, other host name
        {"Origin": f"https://127.0.0.1:{port_of(p)}"},               # the listener is not TLS
        {"Origin": f"http://127.0.0.1:{free_port()}"},               # another port = another origin
        {"Origin": "null"},                                          # sandboxed frame, file:, data:
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"},  # Origin is what counts
    ]
    for i, h in enumerate(refused):
        resp = post_eval(p, f"o-bad-{i}", h)
        body = assert_error(resp, 403, "cross_origin", "ALLOWED_ORIGINS")
        if "Origin" in h:
            assert h["Origin"] in body["message"], body
        assert legacyd.task(f"o-bad-{i}").status_code == 404, "a refused submission must not be queued"
    assert rejected(p, "cross_origin") == before + len(refused)
    assert legacyd.status()["queued"] == 6

    # every owned write, not only submissions
    for method, path in [("POST", "/api/eval-batch"), ("PUT", "/admin/rollout"), ("POST", "/admin/canary/start"),
                         ("POST", "/api/dlq/celery-x/retry"), ("DELETE", "/api/dlq/celery-x"),
                         ("POST", "/api/eval/o-plain/cancel"), ("POST", "/healthz")]:
        resp = p.session.request(method, p.url(path), headers={"Origin": "http://evil.example"},
                                 timeout=HTTP_TIMEOUT_S)
        assert_error(resp, 403, "cross_origin")
    assert rejected(p, "cross_origin") == before + len(refused) + 7
    # reads are not writes: a page may GET (CORS keeps it from reading the answer)
    assert p.get("/api/queue-status", headers={"Origin": "http://evil.example"}).status_code == 200
    assert p.get("/api/eval/o-plain", headers={"Origin": "null"}).status_code == 200
    # no CORS is granted: a preflight gets the endpoint's 405, no Access-Control-* header
    resp = p.session.options(p.url("/api/eval"), headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "POST",
                                                          "Access-Control-Request-Headers": "content-type"},
                             timeout=HTTP_TIMEOUT_S)
    assert_error(resp, 405, "method_not_allowed")
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")], resp.headers
    # a path the proxy does not own is the upstream API's business (404: no upstream here)
    resp = p.post("/users/1", headers={"Origin": "http://evil.example"}, data=b"x")
    assert_error(resp, 404, "not_found")
    assert rejected(p, "cross_origin") == before + len(refused) + 7
    assert p.get("/healthz").status_code == 200


def test_cross_origin_cancel_without_body_is_refused(proxy_factory, legacyd):
    p = proxy_factory()
    assert post_eval(p, "victim").status_code == 202
    before = rejected(p, "cross_origin")
    resp = p.post("/api/eval/victim/cancel?terminate=true", headers={"Origin": "http://evil.example"})
    assert_error(resp, 403, "cross_origin")
    assert rejected(p, "cross_origin") == before + 1
    assert legacyd.task("victim").json()["status"] == "queued"
    # the same call from curl: cancelled (the refusal above was the Origin's)
    resp = p.post("/api/eval/victim/cancel?terminate=true")
    assert resp.status_code == 200, resp.text
    assert legacyd.task("victim").json()["status"] == "cancelled"


def test_own_origin_follows_the_listeners_scheme(tls_proxy, legacyd):
    """Over TLS the proxy's own origin is https://<Host>; http:// is another origin."""
    tp = tls_proxy()
    body = {"code": "print(1)"}
    r = tp.request("POST", "/api/eval", json={**body, "eval_id": "tls-own"},
                   headers={"Origin": f"https://127.0.0.1:{tp.port}"})
    assert r.status_code == 202, r.text
    r = tp.request("POST", "/api/eval", json={**body, "eval_id": "tls-http"},
                   headers={"Origin": f"http://127.0.0.1:{tp.port}"})
    assert r.status_code == 403 and r.json()["error"] == "cross_origin", r.text
    assert "https://<Host>" in r.json()["message"], r.text
    assert legacyd.task("tls-own").status_code == 200 and legacyd.task("tls-http").status_code == 404
    assert mval(tp.metrics(), "turnout_rejected_requests_total", reason="cross_origin") == 1


def test_allowed_origins_setting_refuses_wildcards(proxy_factory):
    p = proxy_factory(ALLOWED_ORIGINS="*", wait=False)
    rc = p.mp.proc.wait(10)
    assert rc == 2, p.log()
    log = p.log()
    assert 'ALLOWED_ORIGINS: "*" a wildcard would let any web page send writes' in log, log


# --------------------------------------------------------------- Content-Type

def test_bodies_must_be_declared_json(proxy_factory, legacyd):
    p = proxy_factory(ADMIN_TOKEN=ADMIN)
    before = rejected(p, "media_type")
    body = json.dumps({"code": "print(1)", "eval_id": "ct-x"})
    url = p.url("/api/eval")
    s = p.session
    # no Content-Type: what a page's fetch of a Blob sends, and what was accepted before
    resp = s.post(url, data=body.encode(), timeout=HTTP_TIMEOUT_S)
    assert "Content-Type" not in resp.request.headers
    assert_error(resp, 415, "unsupported_media_type", "Content-Type: application/json")
    for ct in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
               "multipart/form-data; boundary=x", "application/jsonp"):
        resp = s.post(url, data=body, headers={"Content-Type": ct}, timeout=HTTP_TIMEOUT_S)
        assert_error(resp, 415, "unsupported_media_type", ct, "Content-Type: application/json")
    assert legacyd.task("ct-x").status_code == 404
    assert rejected(p, "media_type") == before + 6
    # JSON with parameters, any case
    for i, ct in enumerate(("application/json; charset=utf-8", "Application/JSON")):
        resp = s.post(url, data=json.dumps({"code": "print(1)", "eval_id": f"ct-ok{i}"}),
                      headers={"Content-Type": ct}, timeout=HTTP_TIMEOUT_S)
        assert resp.status_code == 202, resp.text
    # every owned endpoint that takes a body
    auth = {"Authorization": f"Bearer {ADMIN}"}
    for method, path in [("POST", "/api/eval-batch"), ("PUT", "/admin/rollout"), ("POST", "/admin/canary/start")]:
        resp = s.request(method, p.url(path), data=b'{"percentage": 0.5}', headers={**auth, "Content-Type": "text/plain"},
                         timeout=HTTP_TIMEOUT_S)
        assert_error(resp, 415, "unsupported_media_type")
    assert p.get("/admin/rollout").json()["version"] == 0, "nothing changed"
    assert rejected(p, "media_type") == before + 9
    # a write without a body needs no Content-Type (cancel, canary controls)
    resp = p.post("/api/eval/ct-ok0/cancel")
    assert resp.status_code == 200, resp.text
    assert rejected(p, "media_type") == before + 9


# --------------------------------------------------------------- Host

class Upstream:
    """A recording upstream API on loopback."""

    def __init__(self):
        self.seen = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(self.path)
                body = b'{"upstream": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


def test_allowed_hosts_on_every_request(proxy_factory, upstream):
    p = proxy_factory(ALLOWED_HOSTS="127.0.0.1, .example.test, [::1]", UPSTREAM_API_URL=upstream.url)
    port = port_of(p)
    before = rejected(p, "host")
    ok_hosts = [f"127.0.0.1:{port}", "127.0.0.1", "example.test", f"api.example.test:{port}",
                "A.B.EXAMPLE.TEST", "[::1]:8080"]
    for h in ok_hosts:
        assert p.get("/healthz", headers={"Host": h}).status_code == 200, h
    assert p.get("/users/1", headers={"Host": "x.example.test"}).json() == {"upstream": True}
    assert upstream.seen == ["/users/1"]
    bad_hosts = ["evil.test", "notexample.test", "example.test.evil.test", "localhost", f"127.0.0.2:{port}",
                 "127.0.0.1:", "[::2]"]
    paths = ["/dashboard", "/api/dlq/list", "/healthz", "/metrics", "/api/stats", "/users/2", "/api/eval/x"]
    for h, path in zip(bad_hosts, paths):
        resp = p.get(path, headers={"Host": h})
        body = assert_error(resp, 421, "host_not_allowed", "ALLOWED_HOSTS")
        assert h in body["message"], body
    # writes too, before any other check
    resp = p.session.post(p.url("/api/eval"), data=b"x", headers={"Host": "evil.test"}, timeout=HTTP_TIMEOUT_S)
    assert_error(resp, 421, "host_not_allowed")
    assert upstream.seen == ["/users/1"], "a refused pass-through must not reach the upstream"
    assert rejected(p, "host") == before + len(bad_hosts) + 1
    assert msum(p.metrics(), "turnout_requests_total", route="passthrough", code="4xx") >= 1
    assert p.get("/healthz").status_code == 200


def test_hosts_default_to_any(proxy_factory):
    p = proxy_factory()
    for h in ("evil.test", "localhost:1", "[::1]"):
        assert p.get("/healthz", headers={"Host": h}).status_code == 200
    assert rejected(p, "host") == 0


# --------------------------------------------------------------- framing, nosniff

def test_dashboard_cannot_be_framed_and_json_is_nosniff(proxy_factory):
    p = proxy_factory()
    r = p.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = [d.strip() for d in r.headers["Content-Security-Policy"].split(";")]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/healthz", "/api/queue-status", "/api/eval/nope", "/api/dlq/stats", "/nowhere"):
        resp = p.get(path)
        assert resp.headers["Content-Type"] == "application/json", (path, resp.headers)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", (path, resp.headers)


# --------------------------------------------------------------- DLQ and shadow reads

def seed_dlq(r, eval_id, at):
    tid = f"celery-{eval_id}"
    entry = {"task_id": tid, "eval_id": eval_id, "task": "tasks.evaluate_code", "queue": "evaluation",
             "priority": 3, "args": [eval_id, SECRET_CODE, "python"],
             "kwargs": {"timeout": 30, "engine": "docker", "priority": 3},
             "exception_class": "ExecutorUnavailable", "exception_message": "connect refused",
             "traceback": "connect refused", "retries": 5, "policy": "network_error",
             "first_failure_at": at - 1, "last_failure_at": at, "reason": "retries_exhausted",
             "message": json.dumps({"body": "W1siaWQiLCAiU0VDUkVUPSdodW50ZXIyJyJdXQ==", "note": "hunter2"})}
    r.set(f"turnout:dlq:entry:{tid}", json.dumps(entry))
    r.zadd("turnout:dlq", {tid: at})
    r.hincrby("turnout:dlq:classes", "ExecutorUnavailable", 1)
    return tid, entry


def test_dlq_reads_redacted_without_a_token(proxy_factory, redis_server):
    p = proxy_factory(ADMIN_TOKEN=ADMIN, READ_TOKEN=READ)
    r = redis_server.client()
    tid, entry = seed_dlq(r, "d1", 1795337000.0)
    r.zadd("turnout:dlq", {"celery-bad": 1795337001.0})
    r.set("turnout:dlq:entry:celery-bad", "SECRET='hunter2' not json{")

    # no token: the list answers, without what was submitted, and says so
    for path in ("/api/dlq/list", "/api/dlq/list?eval_id=d1", f"/api/dlq/{tid}"):
        resp = p.get(path)
        assert resp.status_code == 200, resp.text
        assert "hunter2" not in resp.text, resp.text
        b = resp.json()
        assert "READ_TOKEN" in b["redacted"] and "Authorization: Bearer" in b["redacted"], b
        e = b if path.startswith("/api/dlq/celery") else b["entries"][-1]
        assert e["task_id"] == tid and e["exception_class"] == "ExecutorUnavailable", e
        assert "args" not in e and "kwargs" not in e and "message" not in e, e
        assert e["redacted_fields"] == ["args", "kwargs", "message"], e
    bad = p.get("/api/dlq/list").json()["entries"][0]
    assert bad["task_id"] == "celery-bad" and bad["malformed"] is True and "malformed_entry" not in bad, bad
    # another scheme (a front proxy's Basic) is not a token of ours: redacted, not refused
    resp = p.get(f"/api/dlq/{tid}", headers={"Authorization": "Basic dTpw"})
    assert resp.status_code == 200 and "args" not in resp.json(), resp.text

    # READ_TOKEN or ADMIN_TOKEN: the whole entry
    for token in (READ, ADMIN):
        h = {"Authorization": f"Bearer {token}"}
        resp = p.get(f"/api/dlq/{tid}", headers=h)
        assert resp.status_code == 200, resp.text
        assert resp.json() == entry
        lst = p.get("/api/dlq/list", headers=h).json()
        assert "redacted" not in lst, lst
        assert lst["entries"][1]["args"][1] == SECRET_CODE
        assert lst["entries"][0]["malformed_entry"].startswith("SECRET='hunter2'")

    # a wrong token is refused, never silently redacted
    for h in ({"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {READ}x"}, {"Authorization": "Bearer"}):
        for path in ("/api/dlq/list", f"/api/dlq/{tid}"):
            body = assert_error(p.get(path, headers=h), 403, "forbidden", "READ_TOKEN")
            assert "hunter2" not in json.dumps(body)
    # the read token is not an admin token
    resp = p.session.delete(p.url(f"/api/dlq/{tid}"), headers={"Authorization": f"Bearer {READ}"},
                            timeout=HTTP_TIMEOUT_S)
    assert_error(resp, 403, "forbidden", "ADMIN_TOKEN")
    # the public summaries stay public (the dashboard reads these)
    assert p.get("/api/dlq/stats").json()["count"] == 2
    newest = p.get("/api/stats").json()["queue"]["dlq_newest"]
    assert any(e.get("exception_message") == "connect refused" for e in newest), newest
    assert "hunter2" not in json.dumps(newest)
    r.close()


def test_dlq_without_any_token_configured(proxy_factory, redis_server):
    p = proxy_factory()
    r = redis_server.client()
    tid, _ = seed_dlq(r, "d2", 1795337000.0)
    assert "args" not in p.get(f"/api/dlq/{tid}").json()
    assert_error(p.get(f"/api/dlq/{tid}", headers={"Authorization": "Bearer anything"}), 403, "forbidden")
    r.close()


def test_shadow_mismatch_outputs_need_a_token(proxy_factory, redis_server):
    p = proxy_factory(ADMIN_TOKEN=ADMIN, READ_TOKEN=READ)
    r = redis_server.client()
    m = {"eval_id": "s1", "at": time.time(), "differs": ["output"],
         "legacy": {"status": "completed", "output": "hunter2\n", "exit_code": 0},
         "new": {"status": "completed", "output": "hunter3\n", "exit_code": 0}}
    r.lpush("turnout:shadow:mismatches", json.dumps(m))
    resp = p.get("/admin/shadow/mismatches")
    assert resp.status_code == 200, resp.text
    assert "hunter" not in resp.text, resp.text
    b = resp.json()
    assert "READ_TOKEN" in b["redacted"], b
    got = b["mismatches"][0]
    assert got["differs"] == ["output"] and got["output_redacted"] is True, got
    assert got["legacy"] == {"status": "completed", "exit_code": 0}, got
    assert got["new"] == {"status": "completed", "exit_code": 0}, got
    assert "comparisons_here" in b
    resp = p.get("/admin/shadow/mismatches", headers={"Authorization": f"Bearer {READ}"})
    assert resp.status_code == 200 and "redacted" not in resp.json(), resp.text
    assert resp.json()["mismatches"][0]["legacy"]["output"] == "hunter2\n"
    assert_error(p.get("/admin/shadow/mismatches", headers={"Authorization": "Bearer x"}), 403, "forbidden")
    # the rollout history has nothing to hide: no token asked, nothing redacted
    h = p.get("/admin/rollout/history", headers={"Authorization": "Bearer x"})
    assert h.status_code == 200 and "redacted" not in h.json(), h.text
    r.close()


# --------------------------------------------------------------- a real browser on another origin

class Site:
    """The attacker's site: one page, served on another loopback port."""

    def __init__(self, html):
        page = html.encode()

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


ATTACK = """<!doctype html><html><head><meta charset="utf-8"><title>cute cats</title></head><body>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="PROXY/api/eval" enctype="text/plain" target="sink">
<input type="hidden" name='{"code":"print(666)","eval_id":"csrf-form","pad":"' value='"}'>
</form>
<script>
const P = "PROXY";
async function go() {
  const sent = [];
  sent.push(fetch(P + "/api/eval", {method: "POST", mode: "no-cors",
    body: JSON.stringify({code: "print(666)", eval_id: "csrf-text"})}).catch(e => e));
  /* a Blob without a type: the request has no Content-Type at all */
  sent.push(fetch(P + "/api/eval", {method: "POST", mode: "no-cors",
    body: new Blob([JSON.stringify({code: "print(666)", eval_id: "csrf-blob"})])}).catch(e => e));
  sent.push(fetch(P + "/api/eval/VICTIM/cancel?terminate=true", {method: "POST", mode: "no-cors"}).catch(e => e));
  await Promise.all(sent);
  document.getElementById("f").submit();
  document.body.dataset.sent = "1";
}
go();
</script></body></html>"""


def answered(p):
    m = p.metrics()
    return msum(m, "turnout_requests_total", route="submit") + msum(m, "turnout_requests_total", route="cancel")


def test_headless_chromium_on_another_origin_cannot_submit_or_cancel(proxy_factory, legacyd, tmp_path):
    from test_dashboard_page import browser
    p = proxy_factory()
    assert post_eval(p, "victim-b").status_code == 202
    assert legacyd.task("victim-b").json()["status"] == "queued"
    m = p.metrics()
    before_co = msum(m, "turnout_rejected_requests_total", reason="cross_origin")
    before_routed, before_answered = routed(p), answered(p)
    # another origin, another site: the page is on localhost, the proxy on 127.0.0.1
    site = Site(ATTACK.replace("PROXY", p.base).replace("VICTIM", "victim-b"))
    d = browser(tmp_path)
    try:
        d.set_page_load_timeout(20)
        d.get(f"http://localhost:{site.port}/")
        wait_until(lambda: d.find_element("tag name", "body").get_attribute("data-sent") == "1", 15,
                   "the page sent its requests")
        # three fetches and the form reached the proxy and were answered
        wait_until(lambda: answered(p) >= before_answered + 4, 15, "the page's 4 requests answered", [p.mp])
        time.sleep(0.5)
        assert answered(p) == before_answered + 4
    finally:
        d.quit()
        site.close()
    # what the page wanted did not happen (before the cross-origin check, the
    # Blob fetch was queued and the cancel ran)
    assert legacyd.task("victim-b").json()["status"] == "queued", "the page's cancel must not have run"
    for eid in ("csrf-text", "csrf-blob", "csrf-form"):
        assert legacyd.task(eid).status_code == 404, f"{eid} was queued from another origin"
    assert routed(p) == before_routed, "no submission from the page was routed"
    assert legacyd.status()["queued"] == 1
    # each refused for its Origin, and counted
    m = p.metrics()
    assert msum(m, "turnout_rejected_requests_total", reason="cross_origin") == before_co + 4
    assert mval(m, "turnout_requests_total", route="submit", path="none", code="403") == 3
    assert mval(m, "turnout_requests_total", route="cancel", path="none", code="403") == 1
