"""The pass-through behaves like a reverse proxy: responses stream as they
come (time to first byte, SSE, sizes far past any buffer) in bounded memory,
a client that stops reading holds at most PASSTHROUGH_BUFFER_BYTES, a client
that leaves cancels its upstream call, forwarding headers follow RFC 9110
§7.6, status lines keep their reason phrase, and WebSocket upgrades are
tunnelled.  Both pass-through engines (hpool for http:// to an address,
libcurl for a host name) are driven where the behaviour is theirs."""
import asyncio
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from fixtures_turnout import mval, wait_until

MiB = 1 << 20


class Upstream:
    """An upstream API whose paths each do one thing a real API may do; it
    records the headers of every request and notices clients that leave."""

    def __init__(self):
        self.seen = []          # (method, path, [(name, value)])
        self.gone = []          # paths whose client (the proxy) went away
        up = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self, data, ctype="application/json", code=200, reason=None, extra=()):
                self.send_response(code, reason)
                if ctype:
                    self.send_header("Content-Type", ctype)
                for k, v in extra:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _chunk(self, data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _closed(self):
                """True once the proxy closed this connection."""
                self.connection.setblocking(False)
                try:
                    return self.connection.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    return False
                except OSError:
                    return True
                finally:
                    self.connection.setblocking(True)

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                up.seen.append((self.command, self.path, list(self.headers.items())))
                path = self.path.split("?")[0]
                if path == "/echo-headers":
                    self._body(b"{}")
                elif path == "/hop":
                    self._body(b"{}", extra=[("Connection", "X-Resp-Hop"), ("X-Resp-Hop", "1"),
                                             ("X-Kept", "yes"), ("Server", "upstream/1.0")])
                elif path == "/notype":
                    self._body(b"<script>alert(1)</script>", ctype=None)
                elif path == "/status":
                    code = int(self.path.split("code=")[1].split("&")[0])
                    reason = self.path.split("reason=")[1] if "reason=" in self.path else None
                    if code in (204, 304):
                        self.send_response(code, reason)
                        self.end_headers()
                    else:
                        self._body(b"x", code=code, reason=reason and reason.replace("%20", " "))
                elif path == "/head-length":
                    # a HEAD answer names the length a GET would have
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "1234")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(b"y" * 1234)
                elif path == "/slow-body":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self._chunk(b"first ")
                    time.sleep(1.5)
                    self._chunk(b"second")
                    self.wfile.write(b"0\r\n\r\n")
                elif path == "/sse":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(3):
                        self._chunk(b"data: %d\n\n" % i)
                        time.sleep(0.4)
                    self.wfile.write(b"0\r\n\r\n")
                elif path == "/big":
                    size = int(self.path.split("size=")[1])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    block = b"z" * MiB
                    left = size
                    try:
                        while left:
                            k = min(left, len(block))
                            self.wfile.write(block[:k])
                            left -= k
                    except OSError:
                        up.gone.append(path)
                elif path == "/hold":
                    # no answer until the proxy gives up on this request
                    for _ in range(200):
                        if self._closed():
                            up.gone.append(path)
                            return
                        time.sleep(0.05)
                    self._body(b"{}")
                elif path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for _ in range(400):
                            self._chunk(b"tick " * 200)
                            time.sleep(0.02)
                    except OSError:
                        up.gone.append(path)
                        return
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._body(b'{"path":"%s"}' % self.path.encode(), code=404)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def headers_of(self, path):
        for method, p, hs in reversed(self.seen):
            if p.split("?")[0] == path:
                return hs
        pytest.fail(f"the upstream never saw {path}; it saw {[p for _, p, _ in self.seen]}")

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


ENGINES = ["hpool", "curl"]


def upstream_url(u, engine):
    # a host name is libcurl's to carry; an address is hpool's
    return u.url if engine == "hpool" else f"http://localhost:{u.port}"


def port_of(p):
    return int(p.url("/").split(":")[2].split("/")[0])


def flat_memory_env():
    """Under `make asan`, freed memory waits in ASan's quarantine (256 MiB)
    and would read as growth: these proxies run without it (every other
    check of the sanitizer stays on)."""
    import os
    import subprocess
    from fixtures_turnout import binary
    libs = subprocess.run(["ldd", binary("turnout-proxy")], capture_output=True, text=True).stdout
    if "libasan" not in libs:
        return {}
    opts = os.environ.get("ASAN_OPTIONS", "")
    return {"ASAN_OPTIONS": (opts + ":" if opts else "") + "quarantine_size_mb=0:thread_local_quarantine_size_kb=0"}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_exchange(port, data, timeout=5):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                out += c
        except socket.timeout:
            pass
    return out


# ------------------------------------------------------------------ streaming

@pytest.mark.parametrize("engine", ENGINES)
def test_time_to_first_byte_and_sse_arrive_as_sent(engine, proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream_url(upstream, engine))
    t0 = time.monotonic()
    r = requests.get(p.url("/slow-body"), stream=True, timeout=10)
    assert r.status_code == 200
    pieces = r.iter_content(chunk_size=None)
    first = next(pieces)
    ttfb = time.monotonic() - t0
    assert first.startswith(b"first"), first
    # the upstream waits 1.5 s before its second piece: the first must not wait for it
    assert ttfb < 0.5, f"first byte after {ttfb:.3f}s: the response was buffered"
    rest = b"".join(pieces)
    assert (first + rest) == b"first second"

    r = requests.get(p.url("/sse"), stream=True, timeout=10)
    assert r.headers["Content-Type"] == "text/event-stream"
    stamps = []
    for line in r.iter_lines():
        if line.startswith(b"data:"):
            stamps.append((line, time.monotonic()))
    assert [s for s, _ in stamps] == [b"data: 0", b"data: 1", b"data: 2"]
    assert stamps[2][1] - stamps[0][1] > 0.6, "events were held back and sent together"


def test_time_to_first_byte_under_100ms(proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream.url)
    requests.get(p.url("/echo-headers"), timeout=5)  # a pooled connection, a warm proxy
    best = 10.0
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port_of(p)), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /slow-body HTTP/1.1\r\nHost: x\r\n\r\n")
            got = s.recv(65536)
            best = min(best, time.monotonic() - t0)
            assert got.startswith(b"HTTP/1.1 200")
    assert best < 0.1, f"time to first byte {best * 1000:.0f} ms"


@pytest.mark.parametrize("engine,size", [("hpool", 1 << 30), ("curl", 256 * MiB)])
def test_a_huge_response_passes_in_flat_memory(engine, size, proxy_factory, upstream):
    p = proxy_factory(flat_memory_env(), UPSTREAM_API_URL=upstream_url(upstream, engine), UPSTREAM_TIMEOUT_MS=20000)
    requests.get(p.url("/echo-headers"), timeout=5)
    base = rss_kib(p.proc.pid)
    peak = base
    got = 0
    with requests.get(p.url(f"/big?size={size}"), stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["Content-Length"] == str(size)  # the length is kept, not re-framed
        for i, c in enumerate(r.raw.stream(MiB, decode_content=False)):
            got += len(c)
            if i % 32 == 0:
                peak = max(peak, rss_kib(p.proc.pid))
    assert got == size
    growth = (peak - base) / 1024
    assert growth < 16, f"RSS grew {growth:.1f} MiB passing {size >> 20} MiB"


def test_clients_that_stop_reading_hold_bounded_memory(proxy_factory, upstream):
    p = proxy_factory(flat_memory_env(), UPSTREAM_API_URL=upstream.url, PASSTHROUGH_BUFFER_BYTES=262144)
    requests.get(p.url("/echo-headers"), timeout=5)
    base = rss_kib(p.proc.pid)
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", port_of(p)), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (64 * MiB))
            socks.append(s)
        time.sleep(3)  # long enough for each response to fill every buffer on its way
        growth = (rss_kib(p.proc.pid) - base) / 1024
        # 50 x 256 KiB are allowed to wait in the proxy; before streaming 8 such clients held 484 MB
        assert growth < 40, f"RSS grew {growth:.1f} MiB for 50 clients that do not read"
        # each one still gets its response once it reads
        socks[0].settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            data += socks[0].recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
    assert requests.get(p.url("/echo-headers"), timeout=5).status_code == 200


@pytest.mark.parametrize("engine", ENGINES)
def test_a_client_that_leaves_cancels_its_upstream_call(engine, proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream_url(upstream, engine))
    # waiting for the head
    s = socket.create_connection(("127.0.0.1", port_of(p)), timeout=5)
    s.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.4)
    s.close()
    wait_until(lambda: "/hold" in upstream.gone, 5, "the upstream sees its /hold call cancelled")
    # in the middle of the body
    s = socket.create_connection(("127.0.0.1", port_of(p)), timeout=5)
    s.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    wait_until(lambda: "/endless" in upstream.gone, 10, "the upstream sees its /endless call cancelled")
    m = p.metrics()
    assert mval(m, "turnout_passthrough_aborted_total", side="client") >= 2
    assert mval(m, "turnout_requests_total", route="passthrough", path="none", code="4xx") >= 2
    assert requests.get(p.url("/echo-headers"), timeout=5).status_code == 200


def test_an_upstream_cut_mid_body_cuts_the_client_response(proxy_factory):
    # an upstream that promises 1000 bytes, sends 10 and closes
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)

    def serve():
        c, _ = lsock.accept()
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    p = proxy_factory(UPSTREAM_API_URL=f"http://127.0.0.1:{lsock.getsockname()[1]}")
    out = raw_exchange(port_of(p), b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    lsock.close()
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 1000" in head
    assert body == b"0123456789"  # and the connection closed: the client knows it is short
    m = p.metrics()
    assert mval(m, "turnout_passthrough_aborted_total", side="upstream") == 1


# ------------------------------------------------------------------ headers

def header_values(hs, name):
    return [v for k, v in hs if k.lower() == name.lower()]


@pytest.mark.parametrize("engine", ENGINES)
def test_forwarding_headers_are_the_proxys_own_by_default(engine, proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream_url(upstream, engine))
    raw_exchange(port_of(p), b"GET /echo-headers HTTP/1.1\r\nHost: api.example:8080\r\n"
                             b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n"
                             b"X-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n"
                             b"Connection: close, X-Secret\r\nX-Secret: s3cret\r\nKeep-Alive: 5\r\n"
                             b"X-Other: kept\r\n\r\n")
    hs = upstream.headers_of("/echo-headers")
    assert header_values(hs, "X-Forwarded-For") == ["127.0.0.1"]  # one header, the real peer
    assert header_values(hs, "X-Forwarded-Proto") == ["http"]
    assert header_values(hs, "X-Forwarded-Host") == ["api.example:8080"]
    assert header_values(hs, "Forwarded") == []
    assert header_values(hs, "X-Secret") == []  # named in Connection: this hop's only
    assert header_values(hs, "Keep-Alive") == []
    assert header_values(hs, "X-Other") == ["kept"]


def test_trusted_forwarding_headers_are_extended_in_one_header(proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream.url, TRUST_FORWARDED_HEADERS="x-forwarded-for,forwarded",
                      FORWARDED_HEADER=True)
    raw_exchange(port_of(p), b"GET /echo-headers HTTP/1.1\r\nHost: api.example:8080\r\n"
                             b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
                             b"X-Forwarded-Proto: https\r\nForwarded: for=10.0.0.1\r\nConnection: close\r\n\r\n")
    hs = upstream.headers_of("/echo-headers")
    assert header_values(hs, "X-Forwarded-For") == ["10.0.0.1, 10.0.0.2, 127.0.0.1"]
    assert header_values(hs, "X-Forwarded-Proto") == ["http"]  # not trusted: replaced
    assert header_values(hs, "Forwarded") == ['for=10.0.0.1, for=127.0.0.1;proto=http;host="api.example:8080"']


def test_bad_trust_setting_is_refused_at_start(proxy_factory):
    p = proxy_factory(UPSTREAM_API_URL="http://127.0.0.1:9", TRUST_FORWARDED_HEADERS="x-real-ip", wait=False)
    wait_until(lambda: p.proc.poll() is not None, 10, "the proxy refuses to start")
    assert "TRUST_FORWARDED_HEADERS" in p.log() and "x-real-ip" in p.log()


@pytest.mark.parametrize("engine", ENGINES)
def test_response_headers_status_lines_and_content_type(engine, proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream_url(upstream, engine))
    r = requests.get(p.url("/hop"), timeout=5)
    assert "X-Resp-Hop" not in r.headers and r.headers["X-Kept"] == "yes"
    assert "upstream/1.0" in r.headers["Server"]  # the upstream's, not replaced
    for code, line in [(304, b"HTTP/1.1 304 Not Modified"), (418, b"HTTP/1.1 418 I'm a Teapot"),
                       (599, b"HTTP/1.1 599 Odd Thing"), (204, b"HTTP/1.1 204 No Content")]:
        q = f"/status?code={code}" + ("&reason=Odd%20Thing" if code == 599 else "")
        out = raw_exchange(port_of(p), b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % q.encode())
        assert out.split(b"\r\n")[0] == line, out[:200]
    # HEAD keeps the upstream's Content-Length, and carries no body
    out = raw_exchange(port_of(p), b"HEAD /head-length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: 1234" in head and body == b""
    # no Content-Type is made up (libevent's default was text/html), and sniffing is off
    r = requests.get(p.url("/notype"), timeout=5)
    assert "Content-Type" not in r.headers
    assert r.headers["X-Content-Type-Options"] == "nosniff"


# ------------------------------------------------------------------ WebSocket

class WsUpstream:
    """A real WebSocket echo server (python3-websockets) in its own loop."""

    def __init__(self):
        import websockets

        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def echo(ws, path):
            self.path = path
            self.headers = ws.request_headers
            async for msg in ws:
                await ws.send(msg)

        async def main():
            self.server = await websockets.serve(echo, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(main())
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(5)

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def ws_upstream():
    w = WsUpstream()
    yield w
    w.close()


def test_websocket_echo_close_and_idle_timeout(proxy_factory, ws_upstream):
    import websockets

    p = proxy_factory(UPSTREAM_API_URL=f"http://127.0.0.1:{ws_upstream.port}", WEBSOCKET_IDLE_TIMEOUT_S=1)
    url = f"ws://127.0.0.1:{port_of(p)}/socket?room=1"

    async def talk():
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            big = bytes(range(256)) * 4096  # 1 MiB, binary, through the bounded buffers
            await ws.send(big)
            assert await ws.recv() == big
            opened = mval(await asyncio.to_thread(p.metrics), "turnout_tunnels_open")
            assert opened == 1
        # a clean close: both sides completed the closing handshake
        assert ws.close_code == 1000

    asyncio.run(talk())
    assert ws_upstream.path == "/socket?room=1"
    assert ws_upstream.headers["X-Forwarded-For"] == "127.0.0.1"
    wait_until(lambda: mval(p.metrics(), "turnout_tunnels_open") == 0, 5, "the tunnel is closed")

    async def idle():
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return time.monotonic() - t0

    waited = asyncio.run(idle())
    assert 0.8 < waited < 5, f"an idle tunnel closed after {waited:.1f}s (WEBSOCKET_IDLE_TIMEOUT_S=1)"
    m = p.metrics()
    assert mval(m, "turnout_tunnels_total", result="opened") == 2
    assert mval(m, "turnout_tunnels_open") == 0
    # the connection after a tunnel is ordinary HTTP again on a new socket
    assert requests.get(p.url("/healthz"), timeout=5).status_code == 200


def test_an_upgrade_the_upstream_declines_is_passed_back(proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream.url)
    out = raw_exchange(port_of(p), b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                   b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), out[:300]
    assert body == b'{"path":"/nope"}'
    # the upstream was asked for the upgrade, with the headers it needs
    hs = upstream.headers_of("/nope")
    assert header_values(hs, "Upgrade") == ["websocket"]
    assert header_values(hs, "Connection") == ["Upgrade"]
    assert mval(p.metrics(), "turnout_tunnels_total", result="declined") == 1


def test_an_upgrade_to_a_host_name_upstream_is_a_clear_502(proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=f"http://localhost:{upstream.port}")
    out = raw_exchange(port_of(p), b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
                                   b"Upgrade: websocket\r\n\r\n", timeout=3)
    assert out.startswith(b"HTTP/1.1 502")
    assert b"upgrade_unsupported" in out
