"""TLS and security of turnout-proxy (issue 7) against the real binary, a real
redis-server and a real turnout-legacyd, on loopback only.

- HTTPS with PROXY_TLS_CERT / PROXY_TLS_KEY (a self-signed certificate made
  here with the openssl CLI, subjectAltName IP:127.0.0.1): submissions and
  /metrics work over TLS, verified against that certificate.
- TLS 1.2 and 1.3 only: a client that offers only TLS 1.0 / 1.1 is refused by
  the server; 1.2 and 1.3 are negotiated.
- Plain HTTP, garbage and aborted handshakes get no HTTP answer, leave no file
  descriptor behind and do not stop the proxy serving.
- Start-up refuses half or broken TLS settings with exit code 2 naming the
  variable.
- The admin token is never written to the log (right, wrong or missing token
  on PUT /admin/rollout and POST /api/dlq/{id}/retry).

The Proxy fixture waits on http://.../healthz; TLS proxies are started with
wait=False and waited for here over https.
"""
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import warnings

import pytest
import requests

from fixtures_turnout import (
    HTTP_TIMEOUT_S, WAIT_S, base_env, binary, expected_path, http_session, msum,
    parse_metrics, tool, wait_until,
)

LOCAL_REFUSALS = ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")


# --------------------------------------------------------------- certificates

def openssl(*args, cwd):
    r = subprocess.run([tool("openssl"), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"openssl {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """{cert, key, other_key, garbage, missing}: an EC P-256 self-signed
    certificate for IP:127.0.0.1 valid 3 days, its key, a second key that
    matches nothing, a non-PEM file and a path that does not exist."""
    d = tmp_path_factory.mktemp("tls")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "3",
            "-subj", "/CN=turnout-test", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-out", "other_key.pem", cwd=d)
    (d / "garbage.pem").write_text("this is not a PEM certificate\n")
    text = openssl("x509", "-in", "cert.pem", "-noout", "-text", cwd=d).stdout
    assert "IP Address:127.0.0.1" in text, text
    return {"cert": d / "cert.pem", "key": d / "key.pem", "other_key": d / "other_key.pem",
            "garbage": d / "garbage.pem", "missing": d / "does-not-exist.pem"}


# --------------------------------------------------------------- helpers

class TlsProxy:
    """A started TLS proxy (a fixtures Proxy) and https helpers."""

    def __init__(self, proxy, certs):
        self.p = proxy
        self.cert = str(certs["cert"])
        host, _, port = proxy.env["PROXY_LISTEN"].rpartition(":")
        self.host, self.port = host, int(port)
        self.base = f"https://{host}:{port}"
        self.session = http_session()
        self.session.verify = self.cert

    @property
    def pid(self):
        return self.p.proc.pid

    def url(self, path):
        return self.base + path

    def get(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.session.get(self.url(path), **kw)

    def request(self, method, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.session.request(method, self.url(path), **kw)

    def healthy(self):
        r = self.get("/healthz", timeout=2.0)
        assert r.status_code == 200 and r.json() == {"status": "ok"}, \
            f"https /healthz -> {r.status_code} {r.text[:200]}\n{self.p.log()}"
        return r

    def metrics(self):
        r = self.get("/metrics")
        assert r.status_code == 200, f"https /metrics -> {r.status_code}: {r.text[:300]}"
        return parse_metrics(r.text)

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def close(self):
        self.session.close()


@pytest.fixture
def tls_proxy(proxy_factory, certs):
    """make(**env) -> TlsProxy started with the test certificate and waited
    for over https (the fixture's own wait is http://)."""
    made = []

    def make(**env):
        p = proxy_factory(wait=False, PROXY_TLS_CERT=certs["cert"], PROXY_TLS_KEY=certs["key"], **env)
        tp = TlsProxy(p, certs)
        made.append(tp)
        s = http_session()
        s.verify = tp.cert
        try:
            wait_until(lambda: s.get(tp.url("/healthz"), timeout=1.0).status_code == 200,
                       WAIT_S, f"GET {tp.url('/healthz')} -> 200", [p.mp])
        finally:
            s.close()
        return tp

    yield make
    for tp in made:
        tp.close()


def client_context(certs, minimum=None, maximum=None, seclevel0=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(certs["cert"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # TLSv1 / TLSv1_1 members
        if seclevel0:
            # OpenSSL 3 does not offer TLS < 1.2 above security level 0; the
            # point is to make the client *offer* them and see the server refuse.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    return ctx


def tls_get(tp, ctx, path="/healthz"):
    """One HTTP/1.1 GET over a fresh TLS connection made with ctx:
    (negotiated version, status line, body)."""
    with socket.create_connection((tp.host, tp.port), timeout=HTTP_TIMEOUT_S) as raw:
        with ctx.wrap_socket(raw, server_hostname=tp.host) as s:
            version = s.version()
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {tp.host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return version, head.split(b"\r\n", 1)[0].decode(errors="replace"), body


def read_until_closed(sock, limit_s):
    """Everything the peer sends until it closes (or limit_s passes):
    (bytes, closed?)."""
    sock.settimeout(0.5)
    data = b""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def proxy_log_text(p):
    return p.mp.log_path.read_text(errors="replace")


# --------------------------------------------------------------- HTTPS end to end

def test_https_submissions_and_metrics(tls_proxy, redis_server, legacyd):
    tp = tls_proxy(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5)
    # an eval_id for each path (DESIGN §3 sticky bucket), so both backends are used
    ids = {}
    for i in range(200):
        eid = f"tls-e2e-{i}"
        ids.setdefault(expected_path(eid, 0.5), eid)
        if len(ids) == 2:
            break
    for path, eid in sorted(ids.items()):
        r = tp.request("POST", "/api/eval", json={"code": "print(1)", "language": "python",
                                                  "eval_id": eid})
        assert r.status_code == 202, f"POST /api/eval over https -> {r.status_code} {r.text[:300]}\n{tp.p.log()}"
        body = r.json()
        assert body["eval_id"] == eid and body["path"] == path and body["status"] == "queued", body
        assert r.headers.get("X-Turnout-Path") == path, r.headers
    assert sum(redis_server.queue_lengths()) == 1, "the new-path submission is not on the queue"
    assert legacyd.task(ids["legacy"]).status_code == 200, "legacyd does not know the legacy submission"

    m = tp.metrics()
    assert msum(m, "turnout_requests_total", route="submit", code="202") == 2, \
        {k: v for k, v in m.items() if k[0] == "turnout_requests_total"}

    # the certificate is checked: a client trusting only the system CAs refuses it
    with pytest.raises(requests.exceptions.SSLError):
        with http_session() as s:
            s.get(tp.url("/healthz"), timeout=HTTP_TIMEOUT_S)
    # and the TLS port does not also speak plain HTTP
    with pytest.raises(requests.exceptions.ConnectionError):
        with http_session() as s:
            s.get(f"http://{tp.host}:{tp.port}/healthz", timeout=5)
    tp.healthy()
    assert "scheme=https" in proxy_log_text(tp.p), tp.p.log()


# --------------------------------------------------------------- protocol versions

def _old_tls_via_s_client(tp, flag):
    """(offered?, refused?, output) for `openssl s_client <flag>`."""
    r = subprocess.run([tool("openssl"), "s_client", "-connect", f"{tp.host}:{tp.port}", flag,
                        "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", tp.cert],
                       capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    offered = "no protocols available" not in out and "unknown option" not in out
    negotiated = r.returncode == 0 and "Cipher is (NONE)" not in out and "New, TLSv1" in out
    return offered, not negotiated, out


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_below_1_2_refused(tls_proxy, certs, version):
    tp = tls_proxy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v = getattr(ssl.TLSVersion, version)
    ctx = client_context(certs, minimum=v, maximum=v, seclevel0=True)
    try:
        got = tls_get(tp, ctx)
    except ssl.SSLError as e:
        reason = getattr(e, "reason", None) or str(e)
        if reason in LOCAL_REFUSALS:
            # This OpenSSL will not even offer the old version: ask s_client.
            flag = {"TLSv1": "-tls1", "TLSv1_1": "-tls1_1"}[version]
            offered, refused, out = _old_tls_via_s_client(tp, flag)
            assert offered, (f"local OpenSSL ({ssl.OPENSSL_VERSION}) refuses to offer {version} in "
                             f"python ({reason}) and in `openssl s_client {flag}`: cannot test\n{out}")
            assert refused, f"server negotiated {version} with s_client {flag}:\n{out}"
        else:
            # refused by the server: protocol_version alert (or a closed connection)
            assert "ALERT_PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason \
                or "EOF" in str(e) or "WRONG_VERSION" in reason, f"unexpected TLS error: {e!r}"
    except (ConnectionResetError, BrokenPipeError):
        pass   # closed by the server during the handshake: refused too
    else:
        pytest.fail(f"a {version}-only client got through: {got[:2]}")
    tp.healthy()   # still serving


@pytest.mark.parametrize("version,want", [("TLSv1_2", "TLSv1.2"), ("TLSv1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_negotiated(tls_proxy, certs, version, want):
    tp = tls_proxy()
    v = getattr(ssl.TLSVersion, version)
    got, status, body = tls_get(tp, client_context(certs, minimum=v, maximum=v))
    assert got == want, f"negotiated {got}, want {want}"
    assert status.startswith("HTTP/1.1 200"), (status, body[:200])
    assert json.loads(body) == {"status": "ok"}, body[:200]
    # an unrestricted client gets the newest version
    got, status, _ = tls_get(tp, client_context(certs))
    assert got == "TLSv1.3" and status.startswith("HTTP/1.1 200"), (got, status)


# --------------------------------------------------------------- plain HTTP and aborted handshakes

def test_plain_http_to_tls_port_gets_no_http_answer(tls_proxy):
    tp = tls_proxy()
    for request in (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                    b"POST /api/eval HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}"):
        with socket.create_connection((tp.host, tp.port), timeout=5) as s:
            s.sendall(request)
            data, closed = read_until_closed(s, 10)
        assert closed, f"connection still open 10 s after a plain HTTP request (got {data[:80]!r})"
        assert b"HTTP/" not in data, f"plain HTTP got an HTTP answer on the TLS port: {data[:200]!r}"
        # nothing at all, or a TLS alert record (content type 21)
        assert data == b"" or data[0] == 0x15, f"unexpected bytes: {data[:40]!r}"
        tp.healthy()
    m = tp.metrics()
    assert msum(m, "turnout_requests_total", route="submit") == 0, "a plain-HTTP submission was counted"


def _abort(tp, kind, certs):
    s = socket.create_connection((tp.host, tp.port), timeout=5)
    try:
        if kind == 0:                      # connect, close
            pass
        elif kind == 1:                    # garbage
            s.sendall(os.urandom(200))
        elif kind == 2:                    # a truncated ClientHello record
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
        elif kind == 3:                    # the same, then RST instead of FIN
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        elif kind == 4:                    # a TLS record of an absurd length
            s.sendall(b"\x16\x03\x03\xff\xff" + os.urandom(100))
        elif kind == 5:                    # a full handshake, then gone without close_notify
            t = client_context(certs).wrap_socket(s, server_hostname=tp.host)
            t.close()
            return
    finally:
        s.close()


def test_aborted_handshakes_leave_it_serving_without_fd_leak(tls_proxy, certs):
    tp = tls_proxy()
    tp.healthy()
    tls_get(tp, client_context(certs))
    time.sleep(0.3)
    before = tp.fds()
    for i in range(60):
        _abort(tp, i % 6, certs)
    tp.healthy()
    wait_until(lambda: tp.fds() <= before + 1, WAIT_S,
               f"proxy fd count back near {before} after 60 aborted handshakes "
               f"(now {tp.fds()}: {sorted(os.listdir(f'/proc/{tp.pid}/fd'))})", [tp.p.mp])
    assert tp.p.proc.poll() is None, tp.p.log()


def test_stalled_handshake_does_not_block_others(tls_proxy, certs):
    tp = tls_proxy()
    silent = socket.create_connection((tp.host, tp.port), timeout=5)
    partial = socket.create_connection((tp.host, tp.port), timeout=5)
    try:
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        time.sleep(0.2)
        t0 = time.monotonic()
        got, status, _ = tls_get(tp, client_context(certs))
        assert status.startswith("HTTP/1.1 200"), status
        assert time.monotonic() - t0 < HTTP_TIMEOUT_S
    finally:
        silent.close()
        partial.close()


# --------------------------------------------------------------- start-up errors

def _check_config(env):
    full = base_env()
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.run([binary("turnout-proxy"), "--check-config"], env=full, capture_output=True,
                          text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL)


def _start_fails(proxy_factory, env):
    p = proxy_factory(wait=False, **env)
    try:
        rc = p.proc.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"turnout-proxy with {env} still running after {WAIT_S}s (want exit 2)\n{p.log()}")
    return rc, proxy_log_text(p), p


@pytest.mark.parametrize("which", ["cert_only", "key_only"])
def test_only_one_of_cert_and_key_exits_2(proxy_factory, certs, which):
    env = {"PROXY_TLS_CERT": certs["cert"]} if which == "cert_only" else {"PROXY_TLS_KEY": certs["key"]}
    r = _check_config(env)
    out = r.stdout + r.stderr
    assert r.returncode == 2, f"--check-config rc={r.returncode}, want 2\n{out}"
    assert "PROXY_TLS_CERT" in out and "PROXY_TLS_KEY" in out, out
    rc, log, p = _start_fails(proxy_factory, env)
    assert rc == 2, f"start rc={rc}, want 2\n{p.log()}"
    assert "PROXY_TLS_CERT" in log and "PROXY_TLS_KEY" in log, p.log()


@pytest.mark.parametrize("cert,key,names", [
    ("missing", "key", "PROXY_TLS_CERT"),
    ("garbage", "key", "PROXY_TLS_CERT"),
    ("key", "key", "PROXY_TLS_CERT"),          # a key where the certificate belongs
    ("cert", "other_key", "PROXY_TLS_KEY"),    # a key that does not match the certificate
    ("cert", "missing", "PROXY_TLS_KEY"),
    ("cert", "garbage", "PROXY_TLS_KEY"),
])
def test_bad_tls_files_exit_2_at_start(proxy_factory, certs, cert, key, names):
    env = {"PROXY_TLS_CERT": certs[cert], "PROXY_TLS_KEY": certs[key]}
    rc, log, p = _start_fails(proxy_factory, env)
    assert rc == 2, f"start rc={rc}, want 2\n{p.log()}"
    assert f'{names}="{env[names]}"' in log, f"the start-up error does not name {names}:\n{p.log()}"
    other = "PROXY_TLS_KEY" if names == "PROXY_TLS_CERT" else "PROXY_TLS_CERT"
    assert f'{other}="' not in log, f"the error blames {other} too:\n{p.log()}"
    with socket.socket() as s:   # nothing listens on its port
        s.settimeout(2)
        assert s.connect_ex((p.env["PROXY_LISTEN"].rpartition(":")[0],
                             int(p.env["PROXY_LISTEN"].rpartition(":")[2]))) != 0


@pytest.mark.parametrize("cert,key", [("missing", "key"), ("cert", "other_key")])
def test_check_config_reports_bad_tls_files(certs, cert, key):
    r = _check_config({"PROXY_TLS_CERT": certs[cert], "PROXY_TLS_KEY": certs[key]})
    assert r.returncode == 2, f"--check-config rc={r.returncode}, want 2\n{r.stdout}{r.stderr}"


def test_good_tls_files_pass_check_config(certs):
    r = _check_config({"PROXY_TLS_CERT": certs["cert"], "PROXY_TLS_KEY": certs["key"]})
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------- the admin token is never logged

def test_admin_token_never_logged(tls_proxy, redis_server):
    right = "adm-RIGHT-" + secrets.token_hex(16)
    wrong = "adm-WRONG-" + secrets.token_hex(16)
    tp = tls_proxy(ADMIN_TOKEN=right, LOG_LEVEL="debug")
    calls = [("PUT", "/admin/rollout", {"enabled": True, "percentage": 0.25, "reason": "tls test"}),
             ("POST", "/api/dlq/x/retry", None)]
    for method, path, body in calls:
        kw = {"json": body} if body is not None else {}
        # missing or malformed -> 401
        for headers in ({}, {"Authorization": f"Basic {right}"}, {"Authorization": "Bearer"}):
            r = tp.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, f"{method} {path} {headers} -> {r.status_code} {r.text[:200]}"
            assert r.headers.get("WWW-Authenticate") == "Bearer", r.headers
            assert r.json()["error"] == "unauthorized", r.text
        # wrong (including near misses) -> 403
        for bad in (wrong, right + "x", right[:-1], right.upper()):
            r = tp.request(method, path, headers={"Authorization": f"Bearer {bad}"}, **kw)
            assert r.status_code == 403, f"{method} {path} wrong token -> {r.status_code} {r.text[:200]}"
            assert r.json()["error"] == "forbidden", r.text
            assert bad not in r.text and right not in r.text, f"token echoed in the reply: {r.text}"
        # right -> through the authorization (the DLQ id does not exist)
        r = tp.request(method, path, headers={"Authorization": f"Bearer {right}",
                                              "X-Turnout-Actor": "tls-test"}, **kw)
        assert r.status_code not in (401, 403), f"{method} {path} right token -> {r.status_code} {r.text}"
        assert right not in r.text, f"token echoed in the reply: {r.text}"
        if path == "/admin/rollout":
            assert r.status_code == 200, r.text
    hist = tp.get("/admin/rollout/history?limit=5").json()
    assert right not in json.dumps(hist), hist

    tp.p.stop()                       # flushes and closes the log
    log = proxy_log_text(tp.p)
    assert "admin request refused" in log, \
        "no admin refusal logged at debug level: the check below would prove nothing\n" + tp.p.log()
    for secret, what in ((right, "right"), (wrong, "wrong")):
        for needle in (secret, secret.split("-", 2)[2]):
            assert needle not in log, f"the {what} admin token appears in the proxy log {tp.p.mp.log_path}"
    # nor is it stored in Redis (the audit trail names the label, not the token)
    c = redis_server.client()
    try:
        for k in c.scan_iter(count=1000):
            t = c.type(k).decode()
            vals = {"string": lambda: [c.get(k)], "list": lambda: c.lrange(k, 0, -1),
                    "hash": lambda: list(c.hgetall(k).values()),
                    "zset": lambda: c.zrange(k, 0, -1), "set": lambda: list(c.smembers(k))}.get(t, list)()
            for v in vals:
                assert right.encode() not in (v or b""), f"admin token stored in Redis key {k!r}"
    finally:
        c.close()


def test_overlong_admin_token_not_echoed_by_config_errors(proxy_factory, tmp_path):
    token = "adm-LONG-" + secrets.token_hex(520)          # > 1024 characters
    leaks = []
    r = _check_config({"ADMIN_TOKEN": token})
    assert r.returncode == 2 and "ADMIN_TOKEN" in r.stdout + r.stderr, r.stdout + r.stderr
    if token in r.stdout + r.stderr:
        leaks.append("--check-config prints the rejected ADMIN_TOKEN")
    # SIGHUP with a bad token in TURNOUT_ENV_FILE: the old settings stay; the log must not hold it
    # (the file is read at start-up too, so the bad token goes in only after the start)
    envfile = tmp_path / "proxy.env"
    envfile.write_text("ADMIN_TOKEN=short-good-token\n")
    p = proxy_factory(ADMIN_TOKEN="short-good-token", TURNOUT_ENV_FILE=envfile)
    envfile.write_text(f"ADMIN_TOKEN={token}\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in proxy_log_text(p), WAIT_S, "reload failure logged", [p.mp])
    p.stop()
    if token in proxy_log_text(p):
        leaks.append(f"the SIGHUP reload error logs the rejected ADMIN_TOKEN ({p.mp.log_path})")
    assert not leaks, "; ".join(leaks)
