"""Hostile clients against turnout-proxy (issue 7, fault tests): slowloris,
oversized headers, oversized bodies, too many connections. Raw sockets on
127.0.0.1; every connection the test opens is closed by the test, every wait
is bounded. Checks that the proxy keeps answering normal clients promptly,
never crashes, answers or closes the hostile ones, and gives its file
descriptors back afterwards."""
import re
import resource
import socket
import subprocess
import threading
import time
import uuid

import pytest
from faultlib import (SOAK, count_percentile, json_error, own_fds, proc_cpu_s, proc_fds, raw_http, scale,
                      status_of_raw, wait_fds)
from fixtures_turnout import binary, http_session, mval, wait_until

HOST = "127.0.0.1"
# CLIENT_TIMEOUT_S (per read or write, evhttp_set_timeout) defaults to 60 s; CLIENT_REQUEST_TIMEOUT_S
# (a whole request, proxy/conns.c) to 30 s
BUILTIN_CLIENT_TIMEOUT_S = 60


def port_of(p):
    return int(p.env["PROXY_LISTEN"].rpartition(":")[2])


def eid(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def serves_normally(p, path="legacy"):
    assert p.mp.running(), f"the proxy died\n{p.log()}"
    assert p.get("/healthz").status_code == 200
    r = p.submit(eval_id=eid("normal"))
    assert r.status_code == 202 and r.json()["path"] == path, f"{r.status_code} {r.text}\n{p.log(30)}"


def wait_fds_back(p, baseline, slack=3, timeout=10):
    """Waits until the proxy holds no more descriptors than baseline (+slack)
    apart from its own pooled backend connections (up to 64 kept idle to
    legacy, common/hpool.h); fails naming its sockets."""
    return wait_fds(p.proc.pid, port_of(p), baseline, slack, timeout, [p.mp])


def settle_fds(p, wait=0.5):
    """The proxy's own descriptors (pooled backend connections aside) once
    its background connections are made."""
    p.get("/readyz")
    time.sleep(wait)
    return own_fds(p.proc.pid, port_of(p))


def proxy_config_vars():
    """Variable names turnout-proxy documents (--print-config-markdown)."""
    out = subprocess.run([binary("turnout-proxy"), "--print-config-markdown"], capture_output=True,
                         text=True, timeout=10).stdout
    return re.findall(r"^\| `([A-Z0-9_]+)` \|", out, re.M)


def open_conns(n, port, pid=None, batch=100):
    """n connected sockets. With pid, opened in batches, each waiting until
    the proxy has accepted the previous one: a burst beyond the listen
    backlog (128 in evhttp) makes the kernel drop SYNs, and each dropped one
    costs the client a 1 s retransmission."""
    socks = []
    try:
        while len(socks) < n:
            k = min(batch, n - len(socks)) if pid is not None else n
            before = proc_fds(pid) if pid is not None else 0
            for _ in range(k):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect((HOST, port))
                socks.append(s)
            if pid is not None:
                deadline = time.monotonic() + 5
                while proc_fds(pid) < before + k - 2 and time.monotonic() < deadline:
                    time.sleep(0.002)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks):
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def peer_closed(s):
    """True when the peer closed (EOF or reset), False while it is open (or
    still connecting). Consumes whatever was sent."""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        while s.recv(65536):   # a reply (e.g. an error page) before the close: read past it
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except OSError:
        return False
    finally:
        s.settimeout(timeout)


def read_one_reply(s):
    """One whole HTTP reply (Content-Length framed) from s, connection kept."""
    buf = b""
    while True:
        if b"\r\n\r\n" in buf:
            head, body = buf.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                return buf
        d = s.recv(65536)
        assert d, f"the proxy closed the connection mid-reply: {buf[:200]!r}"
        buf += d


def submit_latencies(p, n, session=None, pause=0.0):
    """n normal submissions; their latencies (s). Every one must be 202."""
    s = session or http_session()
    lat = []
    try:
        for i in range(n):
            t0 = time.monotonic()
            r = s.post(p.url("/api/eval"), json={"code": f"print({i})", "eval_id": eid("lat")}, timeout=5)
            lat.append(time.monotonic() - t0)
            assert r.status_code == 202, f"{r.status_code} {r.text}"
            if pause:
                time.sleep(pause)
    finally:
        if session is None:
            s.close()
    return lat


# --------------------------------------------------------------- (a) slowloris

SLOW_PREFIX = b"POST /api/eval HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "


def test_slowloris_does_not_starve_normal_clients(proxy_factory):
    """~100 connections trickle a request one byte a second (never finishing
    the headers); normal submissions keep their latency meanwhile (p99 under
    200 ms) and the proxy gives every descriptor back when they go. In the
    long form a second group stalls after its first bytes and must be closed
    by the proxy's idle timeout (CLIENT_TIMEOUT_S, 60 s, hard-coded)."""
    p = proxy_factory()
    port = port_of(p)
    n_slow = 100
    trickle_s = scale(5, BUILTIN_CLIENT_TIMEOUT_S + 10)
    baseline = settle_fds(p)
    warm = submit_latencies(p, 20)
    slow = open_conns(n_slow, port, pid=p.proc.pid)
    stalled = open_conns(20, port) if SOAK else []
    for s in stalled:
        s.sendall(SLOW_PREFIX[:20])
    stalled_closed_at = {}
    stop = threading.Event()
    sent = [0]
    cut = set()   # trickling connections the proxy closed (a header deadline would)

    def trickle():
        i = 0
        t0 = time.monotonic()
        while not stop.is_set():
            for k, s in enumerate(slow):
                if k in cut:
                    continue
                try:
                    s.send(SLOW_PREFIX[i:i + 1] if i < len(SLOW_PREFIX) else b"a")
                    sent[0] += 1
                except OSError:
                    cut.add(k)
            for k, s in enumerate(stalled):
                if k not in stalled_closed_at and peer_closed(s):
                    stalled_closed_at[k] = time.monotonic() - t0
            i += 1
            stop.wait(1.0)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    lat = []
    try:
        time.sleep(0.5)
        assert proc_fds(p.proc.pid) >= baseline + n_slow, "the slow connections were not accepted"
        deadline = time.monotonic() + trickle_s
        sess = http_session()
        try:
            while time.monotonic() < deadline:
                lat += submit_latencies(p, 10, session=sess, pause=0.01)
                # a new connection each time too (accept is not starved)
                lat += submit_latencies(p, 1)
        finally:
            sess.close()
    finally:
        stop.set()
        t.join(5)
    p99 = count_percentile(lat, 0.99)
    print(f"\nslowloris: {n_slow} trickling for {trickle_s}s ({sent[0]} bytes sent), {len(cut)} cut off by "
          f"the proxy; {len(lat)} normal submits, p50 {count_percentile(lat, 0.5) * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms"
          + (f"; stalled ones closed after {min(stalled_closed_at.values(), default=None)}.."
             f"{max(stalled_closed_at.values(), default=None)} s" if SOAK else ""))
    assert len(lat) >= 50, len(lat)
    assert p99 < 0.2, (f"normal submit p99 {p99 * 1000:.0f} ms during slowloris "
                       f"(warm p99 {count_percentile(warm, 0.99) * 1000:.0f} ms, n={len(lat)})")
    # (whether trickling connections are ever cut off: test_trickling_headers_are_cut_off_...)
    assert p.mp.running()
    if SOAK:
        assert len(stalled_closed_at) == len(stalled), \
            f"stalled connections still open after {trickle_s}s: {len(stalled) - len(stalled_closed_at)}"
        assert max(stalled_closed_at.values()) < BUILTIN_CLIENT_TIMEOUT_S + 5, stalled_closed_at
    close_all(slow + stalled)
    wait_fds_back(p, baseline)
    serves_normally(p)


def test_trickling_headers_are_cut_off_by_a_header_deadline(proxy_factory):
    names = [n for n in proxy_config_vars()
             if "TIMEOUT" in n and re.search(r"HEADER|CLIENT|REQUEST|READ|IDLE", n)]
    # a whole-request/header deadline first: a per-read timeout never cuts a trickle
    names.sort(key=lambda n: not re.search(r"HEADER|REQUEST", n))
    assert names or SOAK, ("turnout-proxy has no configurable client/header timeout (--print-config-markdown "
                           "lists none); the built-in 60 s is per read and a trickling client never hits it")
    env = {}
    limit_s = BUILTIN_CLIENT_TIMEOUT_S
    if names:
        limit_s = 2
        env[names[0]] = limit_s * 1000 if names[0].endswith("_MS") else limit_s
    p = proxy_factory(**env)
    before = mval(p.metrics(), "turnout_rejected_requests_total", reason="client_timeout") or 0
    s = open_conns(1, port_of(p))[0]
    t0 = time.monotonic()
    try:
        i = 0
        while time.monotonic() - t0 < limit_s + 5:
            try:
                s.send(SLOW_PREFIX[i:i + 1] if i < len(SLOW_PREFIX) else b"a")
            except OSError:
                break
            if peer_closed(s):
                break
            i += 1
            time.sleep(0.5)
        took = time.monotonic() - t0
        assert took < limit_s + 5, f"a trickling request was still open after {took:.0f}s (limit {limit_s}s)"
        assert took >= limit_s - 0.5, f"closed after {took:.1f}s, before the {limit_s}s deadline"
    finally:
        s.close()
    after = mval(p.metrics(), "turnout_rejected_requests_total", reason="client_timeout") or 0
    assert after == before + 1, f"the cut-off was not counted (client_timeout {before} -> {after})"
    serves_normally(p)


# --------------------------------------------------------------- (b) oversized headers

@pytest.mark.parametrize("shape", ["one_huge_header", "many_headers", "huge_request_line"])
def test_oversized_headers_refused_and_proxy_keeps_serving(shape, proxy_factory):
    p = proxy_factory()
    port = port_of(p)
    baseline = settle_fds(p)
    size = 70 * 1024   # over the proxy's 64 KiB (MAX_HEADERS_BYTES in proxy/proxy.c)
    if shape == "one_huge_header":
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n"
    elif shape == "many_headers":
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%05d: %s\r\n" % (i, b"v" * 30) for i in range(size // 40)) + b"\r\n"
    else:
        req = b"GET /healthz?" + b"q" * size + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(scale(3, 50)):
        t0 = time.monotonic()
        data, ended = raw_http(port, req, timeout=5)
        took = time.monotonic() - t0
        code = status_of_raw(data)
        assert code in (400, 413, 414, 431) or (not data and ended in ("closed", "reset", "send_failed")), \
            f"{shape}: want 400/413/414/431 or a closed connection, got {data[:200]!r} ({ended})"
        assert ended != "timeout" and took < 3, f"{shape}: the proxy held the connection {took:.1f}s ({ended})"
    serves_normally(p)
    wait_fds_back(p, baseline)


# --------------------------------------------------------------- (c) bodies

def test_body_over_max_body_bytes_is_json_413_counted(proxy_factory):
    p = proxy_factory(MAX_BODY_BYTES=1024)
    before = mval(p.metrics(), "turnout_rejected_requests_total", reason="too_large")
    n = scale(3, 100)
    for i in range(n):
        r = p.post("/api/eval", json={"code": "#" + "x" * 4000, "eval_id": eid("big")})
        body = json_error(r, 413, "body_too_large")
        assert "MAX_BODY_BYTES" in body["message"], body
    assert mval(p.metrics(), "turnout_rejected_requests_total", reason="too_large") - before == n
    serves_normally(p)


@pytest.mark.parametrize("framing", ["content_length", "chunked"])
def test_body_far_over_the_ceiling_is_refused_and_proxy_keeps_serving(framing, proxy_factory):
    """Far over MAX_BODY_BYTES and over evhttp's own ceiling (MAX_BODY_BYTES +
    1 MiB, proxy/proxy.c): closed or 413, and nothing else breaks."""
    p = proxy_factory(MAX_BODY_BYTES=1024)
    port = port_of(p)
    baseline = settle_fds(p)
    total = 4 * 1024 * 1024
    chunk = b"x" * 65536
    for _ in range(scale(2, 20)):
        s = socket.create_connection((HOST, port), timeout=5)
        got, ended = b"", None
        try:
            if framing == "content_length":
                s.sendall(b"POST /api/eval HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % total)
            else:
                s.sendall(b"POST /api/eval HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n")
            t0 = time.monotonic()
            sent = 0
            try:
                while sent < total and time.monotonic() - t0 < 10:
                    if framing == "content_length":
                        s.sendall(chunk)
                    else:
                        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                if framing == "chunked":
                    s.sendall(b"0\r\n\r\n")
            except OSError as e:
                ended = f"send failed after {sent} bytes: {e!r}"
            s.settimeout(5)
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
                    if b"\r\n\r\n" in got and len(got) > 200:
                        break
            except socket.timeout:
                ended = (ended or "") + " / no reply and not closed within 5 s"
            except OSError as e:
                ended = (ended or "") + f" / {e!r}"
        finally:
            s.close()
        code = status_of_raw(got)
        assert code == 413 or (code is None and not got), \
            f"{framing}: want 413 or a closed connection, got {got[:300]!r} ({ended})"
        assert "no reply and not closed" not in (ended or ""), f"{framing}: {ended}"
    serves_normally(p)
    wait_fds_back(p, baseline)


# --------------------------------------------------------------- (d) many connections

@pytest.fixture
def nofile_raised():
    """The test process's RLIMIT_NOFILE soft limit raised (bounded by the
    hard one); children started meanwhile inherit it. Restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_many_idle_keepalive_connections(nofile_raised, proxy_factory):
    """~1500 idle connections (half of them after one keep-alive request):
    the proxy still answers a new client promptly, does not crash, and its
    fd count returns to its baseline once they close."""
    n = scale(1500, 5000)
    if nofile_raised != resource.RLIM_INFINITY:
        n = min(n, nofile_raised - 300)   # the proxy inherits the same limit
    assert n >= 500, f"RLIMIT_NOFILE {nofile_raised} too low for this test"
    p = proxy_factory()
    port = port_of(p)
    baseline = settle_fds(p)
    rounds = scale(1, 3)
    for _ in range(rounds):
        socks = open_conns(n, port, pid=p.proc.pid)
        try:
            ka = socks[: n // 2]
            req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            for s in ka:
                s.sendall(req)
            for s in ka:
                buf = read_one_reply(s)
                assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
            wait_until(lambda: proc_fds(p.proc.pid) >= baseline + n, 10,
                       f"{n} connections held by the proxy (fds {proc_fds(p.proc.pid)})", [p.mp])
            t0 = time.monotonic()
            serves_normally(p)
            took = time.monotonic() - t0
            assert took < 1.0, f"a new client took {took:.2f}s with {n} idle connections open"
        finally:
            close_all(socks)
        wait_fds_back(p, baseline, timeout=15)
        assert p.mp.running()
    serves_normally(p)


def test_connections_beyond_a_limit_are_cut_off_and_counted(proxy_factory):
    names = [v for v in proxy_config_vars() if re.search(r"MAX_?(CLIENT_)?CONN", v)]
    limit = 100
    env = {names[0]: limit} if names else {}
    p = proxy_factory(**env)
    nofile = 256
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    held_max = limit if names else nofile
    port = port_of(p)
    baseline = settle_fds(p)
    before = p.metrics()
    log_size0 = p.mp.log_path.stat().st_size
    n = held_max + 150
    socks = []
    try:
        cpu, log_growth = flood(p, port, n, socks, log_size0)
        closed = sum(1 for s in socks if peer_closed(s))
    finally:
        close_all(socks)
        try:
            wait_fds_back(p, baseline, timeout=15)
        finally:
            trim_log(p, log_size0)
    assert p.mp.running()
    after = p.metrics()
    grew = [k for k, v in after.items()
            if ("conn" in k[0] or any("conn" in lv for _, lv in k[1])) and v > before.get(k, 0)]
    problems = []
    if cpu >= 0.3:
        problems.append(f"burnt {cpu:.2f}s of CPU in 1 s")
    if log_growth >= 20000:
        problems.append(f"wrote {log_growth} bytes of log in 1.5 s")
    if closed < n - held_max - 20:
        problems.append(f"closed only {closed} of the {n} connections (limit ~{held_max})")
    if not grew:
        problems.append("counted the cut-off connections in no metric")
    assert not problems, (f"with {n} connections opened (RLIMIT_NOFILE {nofile}"
                          f"{f', {names[0]}={limit}' if names else ', no connection limit variable'}) "
                          f"the proxy: " + "; ".join(problems))
    serves_normally(p)


def flood(p, port, n, socks, log_size0):
    """Opens n connections without waiting (those beyond the listen backlog
    stay half-open), into `socks`; returns the proxy's CPU seconds over the
    next second and how much log it wrote meanwhile."""
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((HOST, port))
        socks.append(s)
    time.sleep(0.5)
    c0 = proc_cpu_s(p.proc.pid)
    time.sleep(1.0)
    return proc_cpu_s(p.proc.pid) - c0, p.mp.log_path.stat().st_size - log_size0


def trim_log(p, start):
    """Keeps the log readable: the first 8 KiB of whatever a flood wrote."""
    path = p.mp.log_path
    size = path.stat().st_size
    if size - start > 16384:
        with open(path, "r+b") as f:
            f.truncate(start + 8192)
        with open(path, "ab") as f:
            f.write(f"\n=== test: {size - start - 8192} more bytes of log trimmed here\n".encode())


def test_out_of_file_descriptors_pauses_accepting_without_spinning(proxy_factory):
    """At RLIMIT_NOFILE the listener pauses (counted as fd_limit) instead of
    retrying accept() in a busy loop; existing and later clients are served."""
    p = proxy_factory()
    nofile = 256
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (nofile, nofile))
    port = port_of(p)
    baseline = settle_fds(p)
    log_size0 = p.mp.log_path.stat().st_size
    socks = []
    try:
        cpu, log_growth = flood(p, port, nofile + 150, socks, log_size0)
    finally:
        close_all(socks)
        try:
            wait_fds_back(p, baseline, timeout=15)
        finally:
            trim_log(p, log_size0)
    assert p.mp.running()
    assert cpu < 0.3, f"burnt {cpu:.2f}s of CPU in 1 s while out of file descriptors"
    assert log_growth < 20000, f"wrote {log_growth} bytes of log in 1.5 s"
    assert mval(p.metrics(), "turnout_rejected_requests_total", reason="fd_limit") >= 1
    serves_normally(p)
