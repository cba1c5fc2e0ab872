"""Shared fixtures and helpers for turnout's integration and interop tests.

Imported by tests/integration/conftest.py and tests/interop/conftest.py.
Everything here starts real processes (redis-server, turnout-legacyd,
turnout-proxy, a Celery worker), stops them by pid at teardown even when the
test failed, and bounds every wait; on expiry the error carries the log of the
process concerned. Failing tests get the tail of every live process's log
attached to their report.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
import requests

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("TURNOUT_BIN_DIR") or (REPO / "build")).resolve()
VERSION = (REPO / "VERSION").read_text().strip()

WAIT_S = 10.0          # default bound for every "wait until up" loop
HTTP_TIMEOUT_S = 10.0  # default bound of one HTTP call made by a test
SEP = "\x06\x16"       # kombu priority-list separator (WIRE.md B)
QUEUE = "evaluation"

# DESIGN §9: histogram buckets of turnout_request_duration_seconds.
DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1, 2.5, 5, 10, float("inf")]
EVAL_ID_GENERATED_RE = re.compile(r"^eval_\d{8}_\d{6}_[0-9a-f]{8}$")

# Optional: TURNOUT_VALGRIND=<dir> runs every turnout binary started by
# ManagedProcess under valgrind memcheck (scripts/run-valgrind.sh reads the
# logs) but those named in TURNOUT_VALGRIND_SKIP (comma-separated), and
# stretches the start/HTTP bounds by TURNOUT_VALGRIND_SLOWDOWN (default 5).
# Unset: nothing changes.
VALGRIND_DIR = os.environ.get("TURNOUT_VALGRIND") or None
VALGRIND_SKIP = set((os.environ.get("TURNOUT_VALGRIND_SKIP") or "").split(","))
if VALGRIND_DIR:
    _VG_SLOWDOWN = float(os.environ.get("TURNOUT_VALGRIND_SLOWDOWN") or 5)
    WAIT_S *= _VG_SLOWDOWN
    HTTP_TIMEOUT_S *= _VG_SLOWDOWN


def valgrind_argv(argv):
    """argv, prefixed with valgrind when TURNOUT_VALGRIND is set and argv[0]
    is a turnout binary of BIN_DIR; the log is <dir>/<binary>-<test>-<pid>.log."""
    exe = Path(argv[0]) if argv else None
    if (not VALGRIND_DIR or exe is None or exe.parent != BIN_DIR
            or not exe.name.startswith("turnout-") or exe.name in VALGRIND_SKIP):
        return argv
    Path(VALGRIND_DIR).mkdir(parents=True, exist_ok=True)
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].rsplit("/", 1)[-1]
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", test)[-120:]
    log = Path(VALGRIND_DIR).resolve() / f"{exe.name}-{test}-%p.log"
    return [shutil.which("valgrind") or "valgrind", "--leak-check=full",
            "--show-leak-kinds=definite,indirect", "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
            "--child-silent-after-fork=yes", f"--log-file={log}"] + list(argv)


# --------------------------------------------------------------- basics

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name):
    """Full path of a system tool; fails the test (never skips) if absent."""
    p = shutil.which(name)
    if p is None and os.access(f"/usr/bin/{name}", os.X_OK):
        p = f"/usr/bin/{name}"
    if p is None:
        pytest.fail(f"{name} is not installed (run `make deps`)", pytrace=False)
    return p


def binary(name):
    p = BIN_DIR / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"{p} is missing: build it with `make` "
                    f"(TURNOUT_BIN_DIR={BIN_DIR})", pytrace=False)
    return str(p)


def base_env():
    """A minimal environment for the daemons: no turnout variables and no
    http_proxy/https_proxy leaking in from the caller (libcurl honours them)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    for k, v in os.environ.items():   # sanitizer settings of `make asan`
        if k.startswith(("ASAN_", "UBSAN_", "LSAN_")):
            env[k] = v
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def http_session():
    s = requests.Session()
    s.trust_env = False   # never go through an http_proxy from the environment
    return s


def bucket(key, salt="turnout"):
    """DESIGN §3 sticky bucket."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def expected_path(eval_id, pct, salt="turnout", sticky_key=None):
    key = sticky_key if sticky_key is not None else eval_id
    return "new" if bucket(key, salt) < round(pct * 10000) else "legacy"


def priority_lists(queue=QUEUE):
    """The four kombu priority lists of a queue, highest priority first."""
    return [queue, f"{queue}{SEP}3", f"{queue}{SEP}6", f"{queue}{SEP}9"]


def decode_celery_body(envelope):
    assert envelope["properties"]["body_encoding"] == "base64", envelope
    return json.loads(base64.b64decode(envelope["body"], validate=True))


# --------------------------------------------------------------- processes

_LIVE = []   # ManagedProcess objects whose logs go into failing reports


class ManagedProcess:
    """A child process with its stdout+stderr in a log file."""

    def __init__(self, name, argv, env, log_path, cwd=None, new_session=False):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.env = env
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.new_session = new_session
        self.proc = None
        self._log = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._log.write(f"=== start: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            valgrind_argv(self.argv), env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=self.new_session)
        if self not in _LIVE:
            _LIVE.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self, tail=80):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        lines = text.splitlines()
        if tail and len(lines) > tail:
            lines = [f"... ({len(lines) - tail} earlier lines in {self.log_path})"] + lines[-tail:]
        return "\n".join(lines)

    def describe(self, tail=80):
        state = "running" if self.running() else (
            f"exited {self.proc.returncode}" if self.proc else "never started")
        return f"--- {self.name} (pid {self.pid}, {state}) log {self.log_path}:\n{self.log(tail)}"

    def _signal(self, sig):
        if self.new_session:
            try:
                os.killpg(self.proc.pid, sig)
                return
            except ProcessLookupError:
                return
        try:
            self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signal, wait up to timeout, then SIGKILL. Returns the exit code
        (negative = killed by that signal), None if never started."""
        if self.proc is None:
            return None
        killed = False
        if self.proc.poll() is None:
            self._signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        elif self.new_session:
            self._signal(signal.SIGKILL)   # leftover children of the group
        if self._log and not self._log.closed:
            self._log.write(f"=== stopped: rc={self.proc.returncode}"
                            f"{' (SIGKILL after timeout)' if killed else ''}\n".encode())
            self._log.close()
        self.killed_after_timeout = killed
        return self.proc.returncode

    def forget(self):
        if self in _LIVE:
            _LIVE.remove(self)


def wait_until(pred, timeout, what, procs=(), interval=0.05):
    """Poll pred() until it returns something other than None/False (a
    requests.Response counts even when its status is an error, unlike its
    bool()); returns that value. On expiry (or when one of procs dies) fails
    with `what` and the logs of procs."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited ({p.proc.returncode}) while waiting for {what}\n"
                            + p.describe(), pytrace=False)
        try:
            v = pred()
            if v is not None and v is not False:
                return v
        except Exception as e:  # noqa: BLE001 - keep polling, report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            logs = "\n".join(p.describe() for p in procs)
            pytest.fail(f"timed out after {timeout}s waiting for {what}"
                        f"{f' (last error: {last_exc!r})' if last_exc else ''}\n{logs}",
                        pytrace=False)
        time.sleep(interval)


def wait_http(url, timeout=WAIT_S, procs=(), status=200):
    s = http_session()

    def ok():
        return s.get(url, timeout=1.0).status_code == status
    try:
        return wait_until(ok, timeout, f"GET {url} -> {status}", procs)
    finally:
        s.close()


# --------------------------------------------------------------- services

class RedisServer:
    NAME = "redis-server"
    PERSISTENCE = ["--save", "", "--appendonly", "no"]   # subclasses choose their own

    def __init__(self, workdir, port=None):
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mp = None
        self._starts = 0

    @property
    def url(self):
        return f"redis://{self.host}:{self.port}/0"

    def client(self, db=0):
        return redis.Redis(host=self.host, port=self.port, db=db,
                           socket_timeout=5, socket_connect_timeout=5)

    def start(self, timeout=WAIT_S):
        self._starts += 1
        if self.mp is not None:
            self.mp.stop(signal.SIGTERM, 5)
            self.mp.forget()
        self.mp = ManagedProcess(
            f"{self.NAME}:{self.port}",
            [tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", *self.PERSISTENCE,
             "--dir", str(self.dir), "--daemonize", "no"],
            os.environ.copy(), self.dir / f"redis-{self._starts}.log").start()
        c = self.client()
        try:
            wait_until(lambda: c.ping(), timeout, f"redis-server PING on {self.port}", [self.mp])
        finally:
            c.close()
        return self

    def stop(self):
        if self.mp is not None:
            self.mp.stop(signal.SIGTERM, 5)

    def cleanup(self):
        if self.mp is not None:
            self.mp.stop(signal.SIGTERM, 5)
            self.mp.forget()

    def queue_lengths(self, queue=QUEUE, db=0):
        c = self.client(db)
        try:
            return [c.llen(k) for k in priority_lists(queue)]
        finally:
            c.close()

    def queue_messages(self, queue=QUEUE, db=0):
        """{list name: [envelope dict, ...]} oldest first (LPUSH/BRPOP)."""
        c = self.client(db)
        try:
            out = {}
            for k in priority_lists(queue):
                items = c.lrange(k, 0, -1)
                out[k] = [json.loads(x) for x in reversed(items)]
            return out
        finally:
            c.close()


class Legacyd:
    def __init__(self, workdir, port=None, env=None):
        self.port = port or free_port()
        self.dir = Path(workdir)
        self.extra_env = dict(env or {})
        self.mp = None
        self._starts = 0
        self.session = http_session()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout=WAIT_S):
        self._starts += 1
        if self.mp is not None:
            self.mp.stop(signal.SIGTERM, 10)
            self.mp.forget()
        env = base_env()
        env["LEGACYD_LISTEN"] = f"127.0.0.1:{self.port}"
        env.update(self.extra_env)
        self.mp = ManagedProcess(f"turnout-legacyd:{self.port}", [binary("turnout-legacyd")],
                                 env, self.dir / f"legacyd-{self._starts}.log").start()
        wait_http(self.url + "/health", timeout, [self.mp])
        return self

    def stop(self, timeout=10.0):
        if self.mp is None:
            return None
        return self.mp.stop(signal.SIGTERM, timeout)

    def cleanup(self):
        """Stop; returns an error text if it did not exit 0 on SIGTERM."""
        if self.mp is None:
            return None
        was_running = self.mp.running()
        rc = self.mp.stop(signal.SIGTERM, 10)
        self.mp.forget()
        self.session.close()
        if was_running and rc != 0:
            return f"turnout-legacyd exited {rc} on SIGTERM (want 0)\n{self.mp.describe()}"
        return None

    def status(self):
        r = self.session.get(self.url + "/status", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, f"legacyd GET /status -> {r.status_code} {r.text}"
        return r.json()

    def task(self, eval_id):
        return self.session.get(f"{self.url}/tasks/{eval_id}", timeout=HTTP_TIMEOUT_S)


class Proxy:
    def __init__(self, workdir, env, name="turnout-proxy"):
        self.env = dict(env)
        self.dir = Path(workdir)
        self.name = name
        host, _, port = self.env["PROXY_LISTEN"].rpartition(":")
        self.base = f"http://{host}:{port}"
        self.mp = None
        self.session = http_session()

    @property
    def proc(self):
        return self.mp.proc if self.mp else None

    def url(self, path):
        return self.base + path

    def start(self, wait=True, timeout=WAIT_S):
        env = base_env()
        env.update(self.env)
        self.mp = ManagedProcess(self.name, [binary("turnout-proxy")], env,
                                 self.dir / "proxy.log").start()
        if wait:
            wait_http(self.url("/healthz"), timeout, [self.mp])
        return self

    def log(self, tail=80):
        return self.mp.describe(tail) if self.mp else "<proxy never started>"

    def stop(self, timeout=15.0):
        """SIGTERM; asserts exit code 0."""
        rc = self.mp.stop(signal.SIGTERM, timeout)
        assert rc == 0, f"turnout-proxy exited {rc} on SIGTERM (want 0)\n{self.log()}"
        return rc

    def cleanup(self):
        if self.mp is None:
            return None
        was_running = self.mp.running()
        rc = self.mp.stop(signal.SIGTERM, 15)
        self.mp.forget()
        self.session.close()
        if was_running and rc != 0:
            return f"turnout-proxy exited {rc} on SIGTERM (want 0)\n{self.log()}"
        return None

    # -- client helpers
    def get(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.session.get(self.url(path), **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.session.post(self.url(path), **kw)

    def submit(self, payload=None, headers=None, session=None, **fields):
        body = {"code": "print(1)", "language": "python"} if payload is None else dict(payload)
        body.update(fields)
        s = session or self.session
        return s.post(self.url("/api/eval"), json=body, headers=headers or {},
                      timeout=HTTP_TIMEOUT_S)

    def metrics_text(self):
        r = self.get("/metrics")
        assert r.status_code == 200, f"/metrics -> {r.status_code}: {r.text[:500]}"
        return r.text

    def metrics(self):
        return parse_metrics(self.metrics_text())


# --------------------------------------------------------------- metrics

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?\s*$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}.get(m.group(1), "\\" + m.group(1)), v)


def _parse_labels(s, line):
    labels = {}
    pos = 0
    s = s.strip()
    while pos < len(s):
        m = _LABEL_RE.match(s, pos)
        if not m:
            raise ValueError(f"bad labels in metrics line: {line!r}")
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def parse_metrics(text):
    """Prometheus text 0.0.4 -> {(name, frozenset(labels.items())): float}."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"unparsable metrics line: {line!r}")
        name, lab, val = m.group(1), m.group(2), m.group(3)
        labels = _parse_labels(lab, line) if lab else {}
        key = (name, frozenset(labels.items()))
        if key in out:
            raise ValueError(f"duplicate series in metrics: {line!r}")
        out[key] = float(val)
    return out


def parse_metric_types(text):
    """{metric family name: type} from the # TYPE lines."""
    types = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "#" and parts[1] == "TYPE":
            types[parts[2]] = parts[3]
    return types


def series(m, name, **labels):
    """[(labels dict, value)] of `name` whose labels include `labels`."""
    want = {k: str(v) for k, v in labels.items()}
    return [(dict(ls), v) for (n, ls), v in m.items()
            if n == name and all(dict(ls).get(k) == v for k, v in want.items())]


def mval(m, name, **labels):
    """Value of the single series with exactly these labels; fails if absent."""
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    if key not in m:
        near = [dict(ls) for (n, ls) in m if n == name][:20]
        pytest.fail(f"metric {name}{labels} missing; series of {name} present: {near}",
                    pytrace=False)
    return m[key]


def msum(m, name, **labels):
    return sum(v for _, v in series(m, name, **labels))


# --------------------------------------------------------------- fixtures

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for mp in list(_LIVE):
            rep.sections.append((f"log of {mp.name} (pid {mp.pid})", mp.log(60)))


@pytest.fixture
def redis_server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.cleanup()


@pytest.fixture
def legacyd(tmp_path):
    d = Legacyd(tmp_path / "legacyd").start()
    yield d
    err = d.cleanup()
    if err:
        pytest.fail(err, pytrace=False)


@pytest.fixture
def proxy_factory(redis_server, legacyd, tmp_path):
    """make(env=None, wait=True, **env) -> started Proxy. Defaults: broker =
    the test redis, legacy = the test legacyd, CELERY_ENABLED=false,
    CELERY_PERCENTAGE=0. A value of None removes the variable."""
    made = []

    def make(env=None, wait=True, **kw):
        full = {
            "PROXY_LISTEN": f"127.0.0.1:{free_port()}",
            "CELERY_BROKER_URL": redis_server.url,
            "LEGACY_QUEUE_URL": legacyd.url,
            "CELERY_ENABLED": "false",
            "CELERY_PERCENTAGE": "0",
        }
        for k, v in {**(env or {}), **kw}.items():
            if v is None:
                full.pop(k, None)
            elif isinstance(v, bool):
                full[k] = "true" if v else "false"
            else:
                full[k] = str(v)
        p = Proxy(tmp_path / f"proxy{len(made)}", full, name=f"turnout-proxy#{len(made)}")
        made.append(p)
        p.start(wait=wait)
        return p

    yield make
    errors = [e for e in (p.cleanup() for p in made) if e]
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


# --------------------------------------------------------------- executor and worker

class Executor:
    """A running turnout-executor (DESIGN §8) on a loopback port, with its own
    TMPDIR. port may be given (e.g. a port a worker was already pointed at)."""

    def __init__(self, workdir, port=None, env=None, name=None):
        self.dir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = {k: str(v) for k, v in (env or {}).items()}
        self.name = name or f"turnout-executor:{self.port}"
        self.mp = None
        self._starts = 0
        self.session = http_session()

    def start(self, timeout=WAIT_S):
        self._starts += 1
        if self.mp is not None:
            self.mp.stop(signal.SIGTERM, 10)
            self.mp.forget()
        runs = self.dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        env = base_env()
        env.update({"EXECUTOR_LISTEN": f"127.0.0.1:{self.port}", "TMPDIR": str(runs)})
        env.update(self.extra_env)
        self.mp = ManagedProcess(self.name, [binary("turnout-executor")], env,
                                 self.dir / f"executor-{self.port}-{self._starts}.log").start()
        wait_http(self.url + "/health", timeout, [self.mp])
        return self

    def capacity(self, timeout=2.0):
        r = self.session.get(self.url + "/capacity", timeout=timeout)
        assert r.status_code == 200, f"executor GET /capacity -> {r.status_code} {r.text}"
        return r.json()

    def describe(self, tail=80):
        return self.mp.describe(tail) if self.mp else f"<{self.name} never started>"

    def stop(self, timeout=10.0):
        if self.mp is None:
            return None
        return self.mp.stop(signal.SIGTERM, timeout)

    def cleanup(self):
        if self.mp is None:
            return None
        was_running = self.mp.running()
        rc = self.mp.stop(signal.SIGTERM, 10)
        self.mp.forget()
        self.session.close()
        if was_running and rc != 0:
            return f"{self.name} exited {rc} on SIGTERM (want 0)\n{self.mp.describe()}"
        return None


class Worker:
    """A turnout-worker process. /metrics and /healthz on a free port."""

    def __init__(self, workdir, env, name):
        self.dir = Path(workdir)
        self.env = dict(env)
        self.name = name
        host, _, port = self.env["WORKER_METRICS_LISTEN"].rpartition(":")
        self.base = f"http://{host}:{port}"
        self.mp = None
        self._starts = 0
        self.session = http_session()

    @property
    def worker_name(self):
        return self.env["WORKER_NAME"]

    @property
    def proc(self):
        return self.mp.proc if self.mp else None

    def start(self, wait=True, timeout=WAIT_S):
        """(Re)start with the same environment (same WORKER_NAME)."""
        self._starts += 1
        if self.mp is not None and self.mp.running():
            raise AssertionError(f"{self.name} is still running")
        if self.mp is not None:
            self.mp.forget()
        env = base_env()
        env.update(self.env)
        self.mp = ManagedProcess(f"{self.name}#{self._starts}", [binary("turnout-worker")], env,
                                 self.dir / f"worker-{self._starts}.log").start()
        if wait:
            wait_http(self.base + "/healthz", timeout, [self.mp])
        return self

    def running(self):
        return self.mp is not None and self.mp.running()

    def describe(self, tail=80):
        return self.mp.describe(tail) if self.mp else f"<{self.name} never started>"

    def log_text(self):
        try:
            return self.mp.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def metrics_text(self):
        r = self.session.get(self.base + "/metrics", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, f"worker /metrics -> {r.status_code}: {r.text[:500]}"
        return r.text

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def healthz(self):
        return self.session.get(self.base + "/healthz", timeout=HTTP_TIMEOUT_S)

    def kill(self):
        """SIGKILL, no chance to clean up (at-least-once tests)."""
        self.mp._signal(signal.SIGKILL)
        self.mp.proc.wait(5)
        return self.mp.proc.returncode

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.mp is None:
            return None
        return self.mp.stop(sig, timeout)

    def cleanup(self):
        if self.mp is None:
            return None
        was_running = self.mp.running()
        rc = self.mp.stop(signal.SIGTERM, 15)
        self.mp.forget()
        self.session.close()
        if was_running and rc != 0:
            return f"{self.name} exited {rc} on SIGTERM (want 0)\n{self.mp.describe()}"
        return None


@pytest.fixture
def executor_factory(tmp_path):
    """make(port=None, start=True, **env) -> Executor (started unless
    start=False). Stopped at teardown; a non-zero exit on SIGTERM fails."""
    made = []

    def make(port=None, start=True, **env):
        ex = Executor(tmp_path / f"executor{len(made)}", port=port, env=env,
                      name=f"turnout-executor#{len(made)}")
        made.append(ex)
        if start:
            ex.start()
        return ex

    yield make
    errors = [e for e in (ex.cleanup() for ex in made) if e]
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


_WORKER_SEQ = [0]


@pytest.fixture
def worker_factory(redis_server, tmp_path):
    """make(executors, env=None, start=True, wait=True, **env) -> Worker.
    executors: an Executor, a URL, or a list of them (EXECUTOR_SERVICE_URL).
    Defaults: broker = the test redis, a unique WORKER_NAME, a free
    WORKER_METRICS_LISTEN, CELERY_CONCURRENCY=2, WORKER_SHUTDOWN_GRACE_S=2,
    LOG_LEVEL=debug. A value of None removes the
    variable. Stopped (SIGTERM) at teardown; a non-zero exit fails."""
    made = []

    def make(executors, env=None, start=True, wait=True, **kw):
        if not isinstance(executors, (list, tuple)):
            executors = [executors]
        urls = ",".join(e.url if isinstance(e, Executor) else str(e) for e in executors)
        _WORKER_SEQ[0] += 1
        full = {
            "CELERY_BROKER_URL": redis_server.url,
            "EXECUTOR_SERVICE_URL": urls,
            "WORKER_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "WORKER_NAME": f"tw{_WORKER_SEQ[0]}-{os.getpid()}-{len(made)}@test",
            "CELERY_CONCURRENCY": "2",
            "WORKER_SHUTDOWN_GRACE_S": "2",
            "LOG_LEVEL": "debug",
        }
        for k, v in {**(env or {}), **kw}.items():
            if v is None:
                full.pop(k, None)
            elif isinstance(v, bool):
                full[k] = "true" if v else "false"
            else:
                full[k] = str(v)
        w = Worker(tmp_path / f"worker{len(made)}", full, name=f"turnout-worker#{len(made)}")
        made.append(w)
        if start:
            w.start(wait=wait)
        return w

    yield make
    errors = [e for e in (w.cleanup() for w in made) if e]
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)
