"""Requests two HTTP parsers could frame differently are refused before any
parser acts on them: 400 (or 501, 505, 413, 431, 417) with the JSON error,
counted as rejected reason="bad_http", and the upstream API receives only
what a strict parser would — nothing of a refused request, never a request
hidden in another one's body.  Sent over raw sockets."""
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fixtures_turnout import mval


class Recorder:
    """An upstream API that answers 200 and records each request line."""

    def __init__(self):
        seen = self.seen = []

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                seen.append((self.command, self.path, body))
                out = b'{"ok":true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def upstream():
    r = Recorder()
    yield r
    r.close()


def port_of(p):
    return int(p.url("/").split(":")[2].split("/")[0])


def send_raw(port, data, timeout=5, half_close=True):
    """Sends the bytes, reads until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before all was sent
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
    return out


def first_response(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0].decode()
    m = re.search(rb"(?i)content-length: (\d+)", head)
    body = rest[: int(m.group(1))] if m else rest
    return status_line, head.decode("latin-1"), body


H = "Host: t\r\n"
SMUGGLING = [
    ("two lengths", f"POST /api/x HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 40\r\n\r\n"
                    "abcGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("signed length", f"POST /api/x HTTP/1.1\r\n{H}Content-Length: +3\r\n\r\nabc", 400),
    ("spaced length", f"POST /api/x HTTP/1.1\r\n{H}Content-Length:  3 3\r\n\r\nabc", 400),
    ("NUL in length", f"POST /api/x HTTP/1.1\r\n{H}Content-Length: 3\0\r\n\r\nabc", 400),
    ("identity coding", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding: identity\r\n\r\n"
                        "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    ("xchunked", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding: xchunked\r\n\r\n"
                 "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    ("gzip, chunked", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("length and chunked", f"POST /api/x HTTP/1.1\r\n{H}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("0x chunk size", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("spaced chunk size", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n 5 \r\nhello\r\n0\r\n\r\n",
     400),
    ("space before colon", f"POST /api/x HTTP/1.1\r\n{H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    ("space in a name", f"GET /api/x HTTP/1.1\r\n{H}X Foo: bar\r\n\r\n", 400),
    ("no Host", "GET /api/x HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("two Hosts", f"GET /api/x HTTP/1.1\r\n{H}Host: u\r\n\r\n", 400),
    ("HTTP/1.2", f"GET /api/x HTTP/1.2\r\n{H}\r\n", 400),
    ("obs-fold", f"GET /api/x HTTP/1.1\r\n{H}X-A: b\r\n c\r\n\r\n", 400),
]


def engine_url(upstream, engine):
    """hpool carries http:// to an address, libcurl a host name: one
    validation in front of both."""
    return upstream.url if engine == "hpool" else upstream.url.replace("127.0.0.1", "localhost")


@pytest.mark.parametrize("engine", ["hpool", "curl"])
@pytest.mark.parametrize("name,raw,status", SMUGGLING, ids=[s[0] for s in SMUGGLING])
def test_ambiguous_framing_is_refused_and_nothing_reaches_the_upstream(name, raw, status, engine, proxy_factory,
                                                                       upstream):
    p = proxy_factory(UPSTREAM_API_URL=engine_url(upstream, engine))
    before = mval(p.metrics(), "turnout_rejected_requests_total", reason="bad_http")
    out = send_raw(port_of(p), raw.encode("latin-1"))
    line, head, body = first_response(out)
    assert line.startswith(f"HTTP/1.1 {status} "), (name, out[:300])
    assert "application/json" in head and "nosniff" in head, head
    doc = json.loads(body)
    assert doc["error"] and doc["message"], doc
    # one response, then the connection closed: nothing after it was parsed
    assert len(re.findall(rb"(?:^|\r\n|})HTTP/1\.\d \d{3} ", out)) == 1, out
    assert upstream.seen == [], (name, upstream.seen)
    assert mval(p.metrics(), "turnout_rejected_requests_total", reason="bad_http") == before + 1
    # and the proxy keeps serving
    ok = send_raw(port_of(p), b"GET /api/ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert first_response(ok)[0].startswith("HTTP/1.1 200"), ok[:200]
    assert [s[1] for s in upstream.seen] == ["/api/ok"]


@pytest.mark.parametrize("engine", ["hpool", "curl"])
def test_well_framed_requests_pass_including_pipelined_and_chunked(engine, proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=engine_url(upstream, engine))
    raw = (b"POST /api/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
           b"POST /api/b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /api/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    out = send_raw(port_of(p), raw, timeout=3, half_close=False)
    assert len(re.findall(rb"(?:^|\r\n|})HTTP/1\.1 200 ", out)) == 3, out
    assert [(m, path, body) for m, path, body in upstream.seen] == [
        ("POST", "/api/a", b"hello"), ("POST", "/api/b", b"abc"), ("GET", "/api/c", b"")]


def test_oversized_head_and_unknown_method_get_json_not_html(proxy_factory):
    p = proxy_factory()
    big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    line, head, body = first_response(send_raw(port_of(p), big))
    assert line.startswith("HTTP/1.1 431 "), line
    assert json.loads(body)["error"] == "headers_too_large"
    line, head, body = first_response(send_raw(port_of(p), b"BREW /healthz HTTP/1.1\r\nHost: t\r\n\r\n"))
    assert line.startswith("HTTP/1.1 501 "), line
    assert "BREW" in json.loads(body)["message"]


def test_absolute_form_is_forwarded_as_its_path(proxy_factory, upstream):
    p = proxy_factory(UPSTREAM_API_URL=upstream.url)
    out = send_raw(port_of(p), b"GET http://elsewhere:9999/api/abs?x=1 HTTP/1.1\r\nHost: elsewhere:9999\r\n"
                               b"Connection: close\r\n\r\n")
    assert first_response(out)[0].startswith("HTTP/1.1 200"), out[:300]
    assert [s[1] for s in upstream.seen] == ["/api/abs?x=1"], upstream.seen
