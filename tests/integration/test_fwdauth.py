"""Forward auth (AUTH_URL): every request to an endpoint turnout answers is
first checked by a real small auth server; 2xx lets it through with the
vouched headers (never the client's own), 401/403 come back as the auth
server sent them, anything else is 503 (fail closed), decisions may be
cached, and probes and pass-through paths are not checked."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from fixtures_turnout import bucket, free_port, mval, wait_until


class AuthServer:
    """Answers by the Authorization it gets; records every call."""

    def __init__(self):
        self.calls = []   # (path, {header: value})
        me = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                me.calls.append((self.path, dict(self.headers.items())))
                if not self.path.startswith("/check"):
                    return self._send(200, b'{"upstream":true}', [("Content-Type", "application/json")])
                authz = self.headers.get("Authorization", "")
                if authz == "Bearer good" or "session=ok" in self.headers.get("Cookie", ""):
                    self._send(200, b"", [("X-User-Id", "u-42"), ("X-Team", "t1"), ("X-Other", "no")])
                elif authz == "Bearer nope":
                    self._send(401, b'{"detail":"log in first"}', [
                        ("Content-Type", "application/json"), ("WWW-Authenticate", 'Bearer realm="api"'),
                        ("Set-Cookie", "next=/api/eval"), ("X-Internal", "not passed")])
                elif authz == "Bearer banned":
                    self._send(403, b"you are banned", [("Content-Type", "text/plain")])
                elif authz == "Bearer slow":
                    time.sleep(1.5)
                    self._send(200)
                elif authz == "Bearer redirect":
                    self._send(302, b"", [("Location", "/login")])
                else:
                    self._send(500, b"oops")

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def checks(self):
        return [h for p, h in self.calls if p.startswith("/check")]

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def auth():
    a = AuthServer()
    yield a
    a.close()


CODE = {"code": "print(1)", "language": "python"}


def submit(p, token=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(p.url("/api/eval"), json=CODE, headers=headers, timeout=10)


def test_allowed_goes_through_with_the_vouched_headers_and_sticky_key(proxy_factory, auth):
    # a percentage between the two keys' buckets: where a submission goes says whose key it was routed by
    b_user, b_forged = bucket("u-42"), bucket("forged")
    lo, hi = sorted((b_user, b_forged))
    pct = (lo + hi) / 2 / 10000
    want = "new" if b_user < b_forged else "legacy"
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", AUTH_RESPONSE_HEADERS="X-User-Id, X-Team",
                      AUTH_STICKY_HEADER="X-User-Id", CELERY_ENABLED=True, CELERY_PERCENTAGE=pct)
    for _ in range(3):
        r = submit(p, "good", **{"X-User-Id": "forged", "X-Turnout-Sticky-Key": "forged"})
        assert r.status_code == 202, r.text
        assert r.headers["X-Turnout-Path"] == want  # routed by the auth server's user, not the client's claim
    seen = auth.checks()[-1]
    assert seen["Authorization"] == "Bearer good"
    assert seen["X-Forwarded-Method"] == "POST"
    assert seen["X-Forwarded-Uri"] == "/api/eval"
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen["X-Forwarded-Host"].startswith("127.0.0.1:")
    m = p.metrics()
    assert mval(m, "turnout_auth_requests_total", result="allowed") == 3


def test_client_copies_of_vouched_headers_never_reach_the_endpoint(proxy_factory, auth):
    # an upstream API behind the proxy shows what a request carried; the auth server is also that API here
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", AUTH_RESPONSE_HEADERS="X-User-Id", UPSTREAM_API_URL=auth.url)
    # pass-through paths are the API's to authenticate: not checked, and passed as sent
    r = requests.get(p.url("/other"), headers={"X-User-Id": "forged"}, timeout=5)
    assert r.status_code == 200 and r.json() == {"upstream": True}
    assert auth.checks() == []
    # an owned endpoint: the status of an unknown eval, once allowed
    r = requests.get(p.url("/api/eval/e-unknown"), headers={"Authorization": "Bearer good", "X-User-Id": "x"},
                     timeout=5)
    assert r.status_code == 404, r.text
    assert len(auth.checks()) == 1


def test_denials_are_passed_back_as_they_came(proxy_factory, auth, redis_server):
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    r = submit(p, "nope")
    assert r.status_code == 401
    assert r.json() == {"detail": "log in first"}
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert r.headers["Set-Cookie"] == "next=/api/eval"
    assert "X-Internal" not in r.headers
    r = submit(p, "banned")
    assert r.status_code == 403 and r.text == "you are banned"
    assert r.headers["Content-Type"] == "text/plain"
    # a cancel is a write like any other
    r = requests.post(p.url("/api/eval/e1/cancel"), headers={"Authorization": "Bearer nope"}, timeout=5)
    assert r.status_code == 401
    assert redis_server.queue_lengths() == [0, 0, 0, 0] or sum(redis_server.queue_lengths()) == 0
    m = p.metrics()
    assert mval(m, "turnout_auth_requests_total", result="denied") == 3


def test_anything_else_fails_closed(proxy_factory, auth):
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", AUTH_TIMEOUT_MS=300)
    for token in ("boom", "redirect", "slow"):
        r = submit(p, token)
        assert r.status_code == 503, (token, r.text)
        doc = r.json()
        assert doc["error"] == "auth_unavailable" and "AUTH_URL" in doc["message"], doc
    # the auth server down altogether
    q = proxy_factory(AUTH_URL=f"http://127.0.0.1:{free_port()}/check")
    r = submit(q, "good")
    assert r.status_code == 503 and r.json()["error"] == "auth_unavailable"
    assert mval(p.metrics(), "turnout_auth_requests_total", result="error") == 3
    assert mval(q.metrics(), "turnout_auth_requests_total", result="error") == 1
    # and the proxy keeps serving
    assert requests.get(p.url("/healthz"), timeout=5).status_code == 200


def test_decisions_are_cached_by_credentials_for_the_ttl(proxy_factory, auth):
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", AUTH_CACHE_TTL_S=1, AUTH_RESPONSE_HEADERS="X-User-Id",
                      AUTH_STICKY_HEADER="X-User-Id", CELERY_ENABLED=True, CELERY_PERCENTAGE=1)
    assert submit(p, "good").status_code == 202
    assert submit(p, "good").status_code == 202        # from the cache
    assert len(auth.checks()) == 1
    assert submit(p, "nope").status_code == 401        # other credentials: asked
    r = submit(p, "nope")                               # a denial is kept too, and passed back the same
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert len(auth.checks()) == 2
    r = requests.post(p.url("/api/eval"), json=CODE, cookies={"session": "ok"}, timeout=5)
    assert r.status_code == 202 and len(auth.checks()) == 3  # a cookie is a credential of its own
    # the same credentials for another endpoint: the auth server decides that one anew
    r = requests.get(p.url("/api/eval/e-unknown"), headers={"Authorization": "Bearer good"}, timeout=5)
    assert r.status_code == 404 and len(auth.checks()) == 4
    time.sleep(1.2)
    assert submit(p, "good").status_code == 202        # expired: asked again
    assert len(auth.checks()) == 5
    m = p.metrics()
    assert mval(m, "turnout_auth_requests_total", result="cached_allowed") == 1
    assert mval(m, "turnout_auth_requests_total", result="cached_denied") == 1


def test_probes_are_not_checked(proxy_factory, auth):
    p = proxy_factory(AUTH_URL=f"{auth.url}/check")
    for path in ("/healthz", "/metrics"):
        assert requests.get(p.url(path), timeout=5).status_code == 200
    requests.get(p.url("/readyz"), timeout=5)
    assert auth.checks() == []
    # the dashboard's data is an owned endpoint like the others
    assert requests.get(p.url("/api/stats"), timeout=5).status_code == 503
    assert len(auth.checks()) == 1


def test_bad_auth_settings_are_refused_at_start(proxy_factory):
    p = proxy_factory(AUTH_URL="http://127.0.0.1:9/check", AUTH_RESPONSE_HEADERS="X-User-Id",
                      AUTH_STICKY_HEADER="X-Team", wait=False)
    wait_until(lambda: p.proc.poll() is not None, 10, "the proxy refuses to start")
    assert "AUTH_STICKY_HEADER" in p.log()
    q = proxy_factory(AUTH_RESPONSE_HEADERS="Host", wait=False)
    wait_until(lambda: q.proc.poll() is not None, 10, "the proxy refuses to start")
    assert "AUTH_RESPONSE_HEADERS" in q.log() and "AUTH_URL" in q.log()


def test_a_client_that_leaves_during_the_check(proxy_factory, auth):
    import socket
    p = proxy_factory(AUTH_URL=f"{auth.url}/check", AUTH_TIMEOUT_MS=3000)
    port = int(p.url("/").split(":")[2].split("/")[0])
    body = json.dumps(CODE).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /api/eval HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer slow\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    time.sleep(0.3)
    s.close()
    wait_until(lambda: mval(p.metrics(), "turnout_requests_total", route="submit", path="none", code="4xx") == 1,
               5, "the abandoned check is counted as 499")
    time.sleep(1.5)  # the auth answer arrives for nobody: nothing breaks
    assert submit(p, "good").status_code == 202
    assert requests.get(p.url("/healthz"), timeout=5).status_code == 200
