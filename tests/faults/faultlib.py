"""Helpers shared by the fault and load tests (tests/faults/).

Everything runs on 127.0.0.1, is bounded in count and time, and stops by
itself. TURNOUT_SOAK=1 selects the long form of every test (see scale())."""
import json
import os
import signal
import socket
import threading
import time

import pytest
from fixtures_turnout import RedisServer

SOAK = os.environ.get("TURNOUT_SOAK", "").strip() not in ("", "0", "false", "no")


def scale(short, soak):
    """The short-form value, or the long one under TURNOUT_SOAK=1."""
    return soak if SOAK else short


# --------------------------------------------------------------- /proc

def proc_fds(pid):
    """Open file descriptors of pid."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def proc_cpu_s(pid):
    """utime + stime of pid, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


_TCP_STATES = {"01": "ESTAB", "02": "SYN-SENT", "03": "SYN-RECV", "04": "FIN-WAIT-1", "05": "FIN-WAIT-2",
               "06": "TIME-WAIT", "07": "CLOSE", "08": "CLOSE-WAIT", "09": "LAST-ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def _hexaddr(a):
    ip, port = a.split(":")
    if len(ip) == 8:
        ip = ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0))
    return ip, int(port, 16)


def tcp_sockets(pid, listen_port):
    """TCP sockets pid holds (from /proc, no tool needed), counted by state
    and kind: "accepted" (on listen_port), "listen", or "to <peer>"."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    counts = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[9] not in inodes:
                continue
            (_, lport), (rip, rport) = _hexaddr(f[1]), _hexaddr(f[2])
            state = _TCP_STATES.get(f[3], f[3])
            kind = "listen" if state == "LISTEN" else (
                "accepted" if lport == listen_port else f"to {rip}:{rport}")
            counts[f"{state} {kind}"] = counts.get(f"{state} {kind}", 0) + 1
    return counts


POOL_MAX = 64 + 16   # idle HTTP connections kept (HPOOL_MAX_IDLE_PER_ORIGIN in common/hpool.h) + Redis links


def own_fds(pid, listen_port):
    """Descriptors of pid apart from its outgoing (pooled backend) TCP
    connections, which the HTTP client keeps up to a bound; asserts that bound."""
    total = proc_fds(pid)
    socks = tcp_sockets(pid, listen_port)
    outgoing = sum(n for k, n in socks.items() if " to " in k)
    assert outgoing <= POOL_MAX, f"{outgoing} outgoing connections held: {socks}"
    return total - outgoing


def wait_fds(pid, listen_port, baseline, slack=3, timeout=10, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        n = own_fds(pid, listen_port)
        if n <= baseline + slack:
            return n
        for mp in procs:
            if not mp.running():
                pytest.fail(f"{mp.name} exited\n{mp.describe()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"pid {pid} holds {n} descriptors besides its backend pool, {timeout}s after the "
                        f"clients closed (baseline {baseline}); its sockets: {tcp_sockets(pid, listen_port)}",
                        pytrace=False)
        time.sleep(0.1)


# --------------------------------------------------------------- replies

def json_error(r, status, error=None):
    """Asserts r is a JSON error {"error", "message"} with this status (and
    error code, when given); returns the body."""
    assert r.status_code == status, f"want {status}, got {r.status_code}: {r.text[:300]}"
    ctype = r.headers.get("Content-Type", "")
    assert "application/json" in ctype, f"{status} reply is not JSON ({ctype!r}): {r.text[:300]}"
    body = r.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    if error is not None:
        assert body["error"] == error, f"want error {error!r}: {body}"
    return body


def retry_after_ok(r):
    v = r.headers.get("Retry-After", "").strip()
    return v.isdigit() and int(v) >= 1


def raw_http(port, data, timeout=5.0, read_max=1 << 20):
    """Sends raw bytes on a new connection and reads until the peer closes
    or the timeout passes. Returns (bytes read, how it ended: "closed",
    "reset", "timeout" or "send_failed")."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    got = b""
    try:
        try:
            s.sendall(data)
        except OSError:
            ended = "send_failed"
            try:
                s.settimeout(1.0)
                got = s.recv(65536)
            except OSError:
                pass
            return got, ended
        deadline = time.monotonic() + timeout
        while len(got) < read_max:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return got, "timeout"
            except ConnectionResetError:
                return got, "reset"
            if not chunk:
                return got, "closed"
            got += chunk
        return got, "read_max"
    finally:
        s.close()


def status_of_raw(data):
    """HTTP status code of a raw reply, or None."""
    line = data.split(b"\r\n", 1)[0]
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


# --------------------------------------------------------------- durable Redis

class DurableRedis(RedisServer):
    """redis-server with the AOF on and fsynced on every write
    (--appendonly yes --appendfsync always): restarting it on the same port
    with the same directory keeps every acknowledged write, even after a
    SIGKILL."""

    NAME = "redis-server(aof)"
    PERSISTENCE = ["--save", "", "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", "yes"]

    def kill(self):
        """SIGKILL: no shutdown, no final fsync beyond appendfsync always."""
        self.mp._signal(signal.SIGKILL)
        self.mp.proc.wait(5)


# --------------------------------------------------------------- fake HTTP servers

class RawHTTPServer:
    """A loopback HTTP/1.1 server speaking raw bytes, one thread per
    connection (bounded by max_conns; beyond it connections are closed), so
    a test can answer anything at all: garbage, truncated bodies, slow
    replies, nothing. handler(method, path, headers, body) -> bytes to send
    (a whole raw reply), or None to close without answering. Every handler
    call is counted; `active` is the number of requests being handled right
    now, `max_active` its peak. Stop with close(); sleeping handlers should
    wait on self.stopping so close() is prompt."""

    def __init__(self, handler, max_conns=512):
        self.handler = handler
        self.max_conns = max_conns
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.calls = []
        self.active = 0
        self.max_active = 0
        self.socks = set()
        self.local = threading.local()   # .conn: the socket the current handler answers on
        self.threads = []
        self.accept_thread = threading.Thread(target=self._accept, daemon=True)
        self.accept_thread.start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.threads = [t for t in self.threads if t.is_alive()]
                if len(self.threads) >= self.max_conns:
                    c.close()
                    continue
                t = threading.Thread(target=self._serve, args=(c,), daemon=True)
                self.threads.append(t)
                self.socks.add(c)
            t.start()

    def _read_request(self, c, buf):
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        while len(rest) < n:
            chunk = c.recv(65536)
            if not chunk:
                return None, b""
            rest += chunk
        return (method, path, headers, rest[:n]), rest[n:]

    def _serve(self, c):
        self.local.conn = c
        c.settimeout(30)
        buf = b""
        try:
            while not self.stopping.is_set():
                req, buf = self._read_request(c, buf)
                if req is None:
                    return
                with self.lock:
                    self.calls.append((time.monotonic(), req[0], req[1]))
                    self.active += 1
                    self.max_active = max(self.max_active, self.active)
                try:
                    out = self.handler(self, *req)
                finally:
                    with self.lock:
                        self.active -= 1
                if out is None:
                    return
                c.sendall(out)
                if b"connection: close" in out.split(b"\r\n\r\n", 1)[0].lower():
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.socks.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def wait_or_hangup(self, delay):
        """Sleeps up to delay; returns early (True) once the client of the
        current request has closed its connection, or the server stops."""
        c = self.local.conn
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                if c.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    return True
            except BlockingIOError:
                pass
            except OSError:
                return True
            self.stopping.wait(0.02)
        return self.stopping.is_set()

    def ncalls(self, method=None):
        with self.lock:
            return sum(1 for _, m, _ in self.calls if method is None or m == method)

    def close(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.accept_thread.join(2)
        with self.lock:
            socks = list(self.socks)
        for c in socks:   # wake threads blocked in recv/sendall
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self.threads):
            t.join(2)


def http_reply(status, body=b"", ctype="application/json", extra=b"", reason=None):
    if isinstance(body, str):
        body = body.encode()
    reason = reason or {200: "OK", 201: "Created", 500: "Internal Server Error",
                        503: "Service Unavailable"}.get(status, "X")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + extra + b"\r\n" + body


def legacy_ok_reply(body):
    """What turnout-legacyd answers to POST /tasks: 201 {eval_id, status, position}."""
    try:
        eid = json.loads(body or b"{}").get("eval_id")
    except ValueError:
        eid = None
    return http_reply(201, json.dumps({"eval_id": eid, "status": "queued", "position": 1}))


def count_percentile(values, q):
    v = sorted(values)
    if not v:
        return None
    k = min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))
    return v[k]


@pytest.fixture
def raw_server():
    made = []

    def make(handler, max_conns=512):
        s = RawHTTPServer(handler, max_conns=max_conns)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()
