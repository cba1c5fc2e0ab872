"""Process helpers for the turnout-legacyd tests: start the real binary on a
free loopback port, wait for /health, stop it by pid; plus a stand-in
executor (see StandInExecutor) for exercising legacyd's client side."""

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.environ.get("TURNOUT_BIN_DIR") or os.path.join(REPO, "build")
LEGACYD = os.path.join(BIN_DIR, "turnout-legacyd")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra):
    """The test's environment without any turnout settings leaking in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LEGACYD_", "EXECUTOR_", "LOG_", "TURNOUT_ENV_FILE"))}
    env.update(extra)
    return env


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Legacyd:
    """A running turnout-legacyd; use as a context manager."""

    def __init__(self, tmp_path, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(str(tmp_path), f"legacyd-{self.port}.log")
        env.setdefault("LEGACYD_LISTEN", f"127.0.0.1:{self.port}")
        self.env = clean_env({k: str(v) for k, v in env.items()})
        self.proc = None
        self.session = requests.Session()

    def __enter__(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([LEGACYD], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"turnout-legacyd exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + "/health", timeout=0.5).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout=10, what="turnout-legacyd /health")
        return self

    def __exit__(self, exc_type, exc, tb):
        rc = self.stop()
        self.session.close()
        self.log.close()
        # Every run must end cleanly (under ASan this also means no leak report).
        if exc_type is None and rc != 0:
            raise AssertionError(f"turnout-legacyd exited with {rc}:\n{self.logs()}")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("turnout-legacyd did not stop on SIGTERM")
        return self.proc.returncode

    def logs(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    # protocol shortcuts
    def get(self, path, **kw):
        return self.session.get(self.url + path, timeout=5, **kw)

    def post(self, path, body=None, **kw):
        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
        return self.session.post(self.url + path, timeout=5, **kw)

    def delete(self, path, **kw):
        return self.session.delete(self.url + path, timeout=5, **kw)

    def submit(self, eval_id, code="print(1)", **fields):
        body = {"eval_id": eval_id, "code": code, "language": "python", "engine": "docker",
                "timeout": 30, "priority": "default"}
        body.update(fields)
        return self.post("/tasks", body)

    def task(self, eval_id):
        return self.get(f"/tasks/{eval_id}")

    def wait_status(self, eval_id, statuses, timeout=10):
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)

        def done():
            r = self.task(eval_id)
            return r.json() if r.status_code == 200 and r.json()["status"] in statuses else None

        return wait_until(done, timeout=timeout, what=f"{eval_id} to become {sorted(statuses)}")


class StandInExecutor:
    """A stand-in for the executor protocol (DESIGN §8), only to exercise
    legacyd's client side until the real turnout-executor exists.  `behave`
    maps the decoded request to (status, body dict, headers)."""

    def __init__(self, behave, port=None):
        self.behave = behave
        self.calls = []
        self.lock = threading.Lock()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(n) or b"{}")
                with outer.lock:
                    outer.calls.append((self.path, req))
                status, body, headers = outer.behave(self.path, req)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def eval_ids(self):
        with self.lock:
            return [req.get("eval_id") for _, req in self.calls]


def completed(path, req, output=None, exit_code=0):
    return 200, {"eval_id": req["eval_id"], "status": "completed",
                 "output": output if output is not None else "ran " + req["code"],
                 "error": None, "exit_code": exit_code, "executor_id": "stand-in",
                 "duration_s": 0.01}, {}
