"""turnout-executor, the reference executor (DESIGN §8), driven over HTTP as
a real process on a free loopback port: runs, failures, timeouts, kills,
capacity, sandbox limits, cleanup (no children, no temp dirs), validation,
--check-config and SIGTERM."""

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fixtures_turnout import (HTTP_TIMEOUT_S, ManagedProcess, base_env, binary, free_port,
                              http_session, wait_http, wait_until)

RUN_TIMEOUT_S = 30.0   # bound of one /execute call made by a test


# --------------------------------------------------------------- helpers

class Executor:
    """A running turnout-executor with its own TMPDIR (to see its temp dirs)."""

    def __init__(self, workdir, **env):
        self.dir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = self.dir / "runs"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.env = base_env()
        self.env.update({"EXECUTOR_LISTEN": f"127.0.0.1:{self.port}", "TMPDIR": str(self.tmp)})
        self.env.update({k: str(v) for k, v in env.items()})
        self.mp = ManagedProcess(f"turnout-executor:{self.port}", [binary("turnout-executor")],
                                 self.env, self.dir / f"executor-{self.port}.log")
        self.session = http_session()

    def start(self):
        self.mp.start()
        wait_http(self.url + "/health", procs=[self.mp])
        return self

    @property
    def pid(self):
        return self.mp.pid

    def get(self, path):
        return self.session.get(self.url + path, timeout=HTTP_TIMEOUT_S)

    def post(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.session.post(self.url + path, **kw)

    def execute(self, eval_id, code, timeout=10, language="python", session=None):
        s = session or http_session()
        try:
            return s.post(self.url + "/execute", timeout=RUN_TIMEOUT_S,
                          json={"eval_id": eval_id, "code": code, "language": language, "timeout": timeout})
        finally:
            if session is None:
                s.close()

    def run_ok(self, eval_id, code, **kw):
        r = self.execute(eval_id, code, **kw)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["eval_id"] == eval_id
        return body

    def capacity(self):
        r = self.get("/capacity")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_running(self, n, timeout=5.0):
        wait_until(lambda: self.capacity()["running"] == n, timeout, f"{n} runs in flight", [self.mp])

    def children(self):
        """Pids of the executor's live children (zombies included)."""
        kids = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                kids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return kids

    def temp_dirs(self):
        return sorted(p.name for p in self.tmp.iterdir())

    def assert_clean(self, timeout=5.0):
        wait_until(lambda: not self.children() and not self.temp_dirs(), timeout,
                   "no children and no temp dirs left", [self.mp])

    def stop(self, timeout=10.0):
        rc = self.mp.stop(signal.SIGTERM, timeout)
        self.session.close()
        return rc


class Background:
    """An /execute call in a thread; .result() waits (bounded) for the reply."""

    def __init__(self, ex, eval_id, code, timeout=60):
        self.response = None
        self.error = None
        self.done = threading.Event()

        def go():
            try:
                self.response = ex.execute(eval_id, code, timeout=timeout)
            except Exception as e:  # noqa: BLE001 - reported by result()
                self.error = e
            finally:
                self.done.set()
        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def result(self, timeout=RUN_TIMEOUT_S):
        assert self.done.wait(timeout), f"no /execute reply within {timeout}s"
        if self.error:
            raise self.error
        return self.response


@pytest.fixture
def make_executor(tmp_path):
    made = []

    def make(**env):
        ex = Executor(tmp_path / f"ex{len(made)}", **env)
        made.append(ex)
        return ex.start()

    yield make
    problems = []
    for ex in made:
        was_running = ex.mp.running()
        rc = ex.stop()
        ex.mp.forget()
        if was_running and rc != 0:
            problems.append(f"turnout-executor exited {rc} on SIGTERM (want 0)\n{ex.mp.describe()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def executor(make_executor):
    return make_executor()


def assert_error(r, status, field=None):
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"error", "message"}, body
    if field:
        assert field in body["message"], body
        assert body.get("field") == field, body
    return body


# --------------------------------------------------------------- outcomes

def test_print_completes(executor):
    body = executor.run_ok("p1", "print('hello')\nprint(6 * 7)")
    assert body["status"] == "completed", body
    assert body["output"] == "hello\n42\n"
    assert body["exit_code"] == 0
    assert body["executor_id"] == f"executor@{socket.gethostname()}:{executor.port}"
    assert 0 <= body["duration_s"] < 10
    executor.assert_clean()


def test_raise_fails_with_traceback(executor):
    body = executor.run_ok("r1", "print('before')\nraise ValueError('boom')")
    assert body["status"] == "failed", body
    assert body["exit_code"] == 1
    assert body["output"] == "before\n"
    assert "Traceback (most recent call last)" in body["error"]
    assert "ValueError: boom" in body["error"]


def test_nonzero_exit_fails(executor):
    body = executor.run_ok("x1", "import sys\nsys.exit(3)")
    assert (body["status"], body["exit_code"]) == ("failed", 3), body
    assert "3" in body["error"]


def test_infinite_loop_times_out(executor):
    t0 = time.monotonic()
    body = executor.run_ok("t1", "print('spin', flush=True)\nwhile True: pass", timeout=1)
    elapsed = time.monotonic() - t0
    assert body["status"] == "timeout", body
    assert body["output"] == "spin\n"      # what it printed before is kept
    assert "after 1 s" in body["error"], body
    assert elapsed < 3.0, elapsed
    executor.assert_clean()


def test_kill_running(executor):
    bg = Background(executor, "k1", "import time\nprint('started', flush=True)\ntime.sleep(30)")
    executor.wait_running(1)
    t0 = time.monotonic()
    r = executor.post("/kill/k1")
    assert r.status_code == 200, r.text
    assert r.json() == {"eval_id": "k1", "killed": True}
    body = bg.result(5)
    assert time.monotonic() - t0 < 2.0
    assert body.status_code == 200, body.text
    assert body.json()["status"] == "killed", body.json()
    assert_error(executor.post("/kill/k1"), 404)
    assert_error(executor.post("/kill/never-ran"), 404)
    executor.assert_clean()


def test_capacity_and_503(executor):
    cap = executor.capacity()
    assert cap == {"executor_id": cap["executor_id"], "can_accept": True, "running": 0,
                   "max_concurrent": 2, "available_slots": 2, "max_body_bytes": cap["max_body_bytes"]}
    assert isinstance(cap["max_body_bytes"], int) and cap["max_body_bytes"] >= 1 << 20, cap  # the largest request taken
    bgs = [Background(executor, f"c{i}", "import time\ntime.sleep(30)") for i in range(2)]
    executor.wait_running(2)
    cap = executor.capacity()
    assert (cap["can_accept"], cap["running"], cap["available_slots"]) == (False, 2, 0), cap
    r = executor.execute("c2", "print(1)")
    assert_error(r, 503)
    assert r.headers.get("Retry-After") == "1"
    health = executor.get("/health").json()
    assert (health["status"], health["running"]) == ("ok", 2)
    for i in range(2):
        assert executor.post(f"/kill/c{i}").status_code == 200
    for bg in bgs:
        assert bg.result(5).json()["status"] == "killed"
    assert executor.capacity()["available_slots"] == 2
    assert executor.run_ok("c2", "print(1)")["status"] == "completed"
    executor.assert_clean()


def test_duplicate_running_eval_id_409(executor):
    bg = Background(executor, "dup", "import time\ntime.sleep(30)")
    executor.wait_running(1)
    assert_error(executor.execute("dup", "print(1)"), 409)
    executor.post("/kill/dup")
    assert bg.result(5).json()["status"] == "killed"
    # Finished: the same id may run again.
    assert executor.run_ok("dup", "print(1)")["status"] == "completed"


def test_no_children_or_temp_dirs_left(executor):
    # A run that starts background processes, one of them in its own session.
    # The sleep lengths are unique to this run, so another test run on the
    # same machine cannot be mistaken for a leftover of this one.
    tag = f"{random.randrange(10**6):06d}"
    code = ("import subprocess\n"
            f"subprocess.Popen(['sleep', '60.{tag}'])\n"
            f"subprocess.Popen(['sleep', '61.{tag}'], start_new_session=True)\n"
            "open('scratch.txt', 'w').write('x')\n"
            "import os; os.makedirs('a/b/c'); os.chmod('a/b', 0)\n"
            "print('spawned')")
    assert executor.run_ok("s1", code)["status"] == "completed"
    assert executor.run_ok("s2", "while True: pass", timeout=1)["status"] == "timeout"
    bg = Background(executor, "s3", f"import subprocess, time\nsubprocess.Popen(['sleep', '62.{tag}'])\ntime.sleep(30)")
    executor.wait_running(1)
    executor.post("/kill/s3")
    assert bg.result(5).json()["status"] == "killed"
    executor.assert_clean()
    # and nothing of them elsewhere on the machine
    leftovers = subprocess.run(["pgrep", "-f", f"^sleep 6[012][.]{tag}$"], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", leftovers


def test_client_going_away_kills_the_run(executor):
    s = http_session()
    with pytest.raises(Exception):
        s.post(executor.url + "/execute", timeout=1.0,
               json={"eval_id": "gone", "code": "import time\ntime.sleep(30)", "timeout": 60})
    s.close()
    executor.wait_running(0, timeout=5)
    executor.assert_clean()


# --------------------------------------------------------------- sandbox

def test_output_truncated(make_executor):
    ex = make_executor(EXECUTOR_OUTPUT_LIMIT=1000)
    body = ex.run_ok("o1", "import sys\nprint('x' * 100000)\nsys.stderr.write('e' * 5000)")
    assert body["status"] == "completed", body
    assert body["output"].startswith("x" * 1000)
    assert body["output"].endswith("[output truncated]")
    assert len(body["output"]) < 1100
    assert body["error"].startswith("e" * 1000) and "[output truncated]" in body["error"]
    # Far more output than the cap does not block the child.
    big = ex.run_ok("o2", "import sys\nfor _ in range(200): sys.stdout.write('y' * 65536)\nprint('end')")
    assert big["status"] == "completed" and big["output"].endswith("[output truncated]")


def test_non_utf8_output_is_repaired(executor):
    body = executor.run_ok("u1", "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end')")
    assert body["status"] == "completed"
    assert body["output"] == "ok \ufffd\ufffd end"


def test_memory_bomb_fails_not_the_server(executor):
    body = executor.run_ok("m1", "x = bytearray(2*1024**3)")
    assert body["status"] == "failed", body
    assert "MemoryError" in body["error"]
    assert executor.get("/health").json()["status"] == "ok"
    assert executor.run_ok("m2", "print('alive')")["output"] == "alive\n"


def test_no_stdin(executor):
    body = executor.run_ok("i1", "input()")
    assert body["status"] == "failed", body
    assert "EOFError" in body["error"]


def test_file_size_limit(make_executor):
    ex = make_executor(EXECUTOR_FILE_MB=1)
    body = ex.run_ok("f1", "open('big', 'wb').write(b'x' * (2 * 1024 * 1024))")
    assert body["status"] == "failed", body
    assert "File too large" in body["error"]
    assert ex.run_ok("f2", "open('small', 'wb').write(b'x' * 1000)")["status"] == "completed"


def test_sandbox_environment(executor):
    code = ("import os, sys, resource\n"
            "print(os.getcwd() == os.environ['HOME'])\n"
            "print(sorted(k for k in os.environ if k != 'LC_CTYPE'))\n"
            "print(os.getsid(0) == os.getpid())\n"
            "print(sorted(int(f) for f in os.listdir('/proc/self/fd')))\n"
            "print(resource.getrlimit(resource.RLIMIT_CPU)[0])\n"
            "print(resource.getrlimit(resource.RLIMIT_AS)[0] // 2**20)\n"
            "print(resource.getrlimit(resource.RLIMIT_CORE))\n"
            "print(resource.getrlimit(resource.RLIMIT_NOFILE))\n"
            "print(resource.getrlimit(resource.RLIMIT_NPROC)[0])\n")
    body = executor.run_ok("env1", code, timeout=5)
    assert body["status"] == "completed", body
    lines = body["output"].splitlines()
    assert lines[0] == "True"
    assert lines[1] == str(sorted(["HOME", "LANG", "PATH", "PYTHONDONTWRITEBYTECODE",
                                   "PYTHONUNBUFFERED", "TMPDIR"]))
    assert lines[2] == "True"
    assert lines[3] == "[0, 1, 2, 3]"   # 3: listdir's own handle
    assert lines[4] == "6"
    assert lines[5] == "512"
    assert lines[6] == "(0, 0)"
    assert lines[7] == "(256, 256)"
    assert lines[8] == "64"


def test_many_small_runs(executor):
    """Two clients keep both slots busy with tiny runs; all complete."""
    n = 60
    results = []
    lock = threading.Lock()

    def client(k):
        s = http_session()
        try:
            for i in range(k, n, 2):
                r = executor.execute(f"many-{i}", f"print({i})", session=s)
                with lock:
                    results.append((i, r.status_code, r.json()))
        finally:
            s.close()
    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    elapsed = time.monotonic() - t0
    assert len(results) == n
    for i, code, body in results:
        assert code == 200 and body["status"] == "completed" and body["output"] == f"{i}\n", body
    assert elapsed < 30, elapsed
    executor.assert_clean()


# --------------------------------------------------------------- validation

def test_bad_inputs(executor):
    post = executor.post
    assert_error(post("/execute", data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(post("/execute", json=[1, 2]), 400)
    good = {"eval_id": "v1", "code": "print(1)", "language": "python", "timeout": 5}

    def without(k):
        return {key: v for key, v in good.items() if key != k}
    assert_error(post("/execute", json=without("eval_id")), 422, "eval_id")
    assert_error(post("/execute", json={**good, "eval_id": "has space"}), 422, "eval_id")
    assert_error(post("/execute", json={**good, "eval_id": "a" * 129}), 422, "eval_id")
    assert_error(post("/execute", json={**good, "eval_id": 12}), 422, "eval_id")
    assert_error(post("/execute", json=without("code")), 422, "code")
    assert_error(post("/execute", json={**good, "code": ""}), 422, "code")
    assert_error(post("/execute", json={**good, "code": ["print(1)"]}), 422, "code")
    assert_error(post("/execute", json={**good, "language": "ruby"}), 422, "language")
    assert_error(post("/execute", json={**good, "timeout": 0}), 422, "timeout")
    assert_error(post("/execute", json={**good, "timeout": 901}), 422, "timeout")
    assert_error(post("/execute", json={**good, "timeout": "10"}), 422, "timeout")
    assert_error(executor.get("/execute"), 405)
    assert_error(executor.get("/nope"), 404)
    # 128 characters of the full alphabet are fine
    long_id = ("aZ09_.:-" * 16)[:128]
    assert executor.run_ok(long_id, "print(1)")["status"] == "completed"
    assert executor.capacity()["running"] == 0


# --------------------------------------------------------------- process

def test_check_config_names_every_problem(tmp_path):
    env = base_env()
    env.update({"EXECUTOR_MAX_CONCURRENT": "0", "EXECUTOR_LISTEN": "nowhere",
                "EXECUTOR_MEMORY_MB": "lots", "EXECUTOR_OUTPUT_LIMIT": "-5"})
    p = subprocess.run([binary("turnout-executor"), "--check-config"], env=env,
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2, p
    for name in ("EXECUTOR_MAX_CONCURRENT", "EXECUTOR_LISTEN", "EXECUTOR_MEMORY_MB", "EXECUTOR_OUTPUT_LIMIT"):
        assert name in p.stderr, p.stderr
    ok = subprocess.run([binary("turnout-executor"), "--check-config"], env=base_env(),
                        capture_output=True, text=True, timeout=10)
    assert ok.returncode == 0, ok


def test_help_version_markdown():
    for flag in ("--help", "--version", "--print-config-markdown"):
        p = subprocess.run([binary("turnout-executor"), flag], capture_output=True, text=True, timeout=10)
        assert p.returncode == 0, (flag, p)
    p = subprocess.run([binary("turnout-executor"), "--print-config-markdown"], capture_output=True,
                       text=True, timeout=10)
    for name in ("EXECUTOR_LISTEN", "EXECUTOR_MAX_CONCURRENT", "EXECUTOR_ID", "EXECUTOR_MEMORY_MB",
                 "EXECUTOR_FILE_MB", "EXECUTOR_MAX_PROCS", "EXECUTOR_OUTPUT_LIMIT"):
        assert name in p.stdout


def test_executor_id_from_env(make_executor):
    ex = make_executor(EXECUTOR_ID="exec-a")
    assert ex.capacity()["executor_id"] == "exec-a"
    assert ex.run_ok("id1", "print(1)")["executor_id"] == "exec-a"


def test_sigterm_with_run_in_flight(make_executor):
    ex = make_executor()
    bg = Background(ex, "term1", "import time\ntime.sleep(30)")
    ex.wait_running(1)
    children = ex.children()
    assert children
    t0 = time.monotonic()
    os.kill(ex.pid, signal.SIGTERM)
    r = bg.result(5)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "killed", r.json()
    ex.mp.proc.wait(5)
    assert ex.mp.proc.returncode == 0
    assert time.monotonic() - t0 < 3
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z", pid
    assert ex.temp_dirs() == []


def test_sighup_reloads_limits_and_keeps_them_when_invalid(make_executor, tmp_path):
    envfile = tmp_path / "executor.env"
    envfile.write_text("EXECUTOR_OUTPUT_LIMIT=100\n")
    ex = make_executor(TURNOUT_ENV_FILE=str(envfile))
    code = "print('z' * 1000)"
    assert len(ex.run_ok("h1", code)["output"]) < 150
    envfile.write_text("EXECUTOR_OUTPUT_LIMIT=20\n")
    os.kill(ex.pid, signal.SIGHUP)
    wait_until(lambda: len(ex.run_ok("h2", code)["output"]) < 50, 5, "the new limit", [ex.mp])
    envfile.write_text("EXECUTOR_OUTPUT_LIMIT=zero\n")
    os.kill(ex.pid, signal.SIGHUP)
    wait_until(lambda: "reload refused" in ex.mp.log(), 5, "the refused reload logged", [ex.mp])
    out = ex.run_ok("h3", code)["output"]
    assert out.startswith("z" * 20) and out.endswith("[output truncated]") and len(out) < 50


def test_nul_bytes_in_output_and_stderr(executor):
    body = executor.run_ok("nul1", "import sys\nsys.stdout.write('a\\0b')\nsys.stderr.write('c\\0d')\nsys.exit(2)")
    assert body["status"] == "failed"
    assert body["output"] == "a\0b"
    assert body["error"].startswith("c\0d")


def test_unusable_tmpdir_fails_at_start(tmp_path):
    env = base_env()
    env.update({"EXECUTOR_LISTEN": f"127.0.0.1:{free_port()}", "TMPDIR": str(tmp_path / "missing")})
    p = subprocess.run([binary("turnout-executor")], env=env, capture_output=True, text=True, timeout=10)
    assert p.returncode == 1, p
    assert "TMPDIR" in p.stderr
