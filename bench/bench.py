#!/usr/bin/python3
"""make bench: turnout against its peers, side by side in one run, on
loopback.  Prints the comparisons and their ratios and writes them, with the
machine's description, to bench/results/<time>-<host>.md.

  P1  new-path submissions/s through turnout-proxy (wrk, keep-alive) vs
      Python Celery send_task in a loop on the same Redis, and vs
      redis-benchmark LPUSH at the same client count (the ceiling)
  P2  reverse proxy to a trivial upstream: turnout vs nginx proxy_pass
      (upstream keepalive, split_clients) vs HAProxy (rand()), one worker
      thread each, same upstream, same wrk
  P3  draining N messages through a fast executor: turnout-worker vs a
      Celery prefork worker (concurrency 2) running the same task
  P4  memory: proxy RSS holding 1,000 keep-alive connections, worker RSS,
      RSS over a soak; instructions per routed request (callgrind)

Environment: BENCH_SECONDS (wrk duration, default 10), BENCH_CONNS (50),
BENCH_DRAIN_N (turnout drain size, 20000), BENCH_CELERY_N (2000),
BENCH_SOAK_S (300), BENCH_QUICK=1 (short everything, for a smoke run).
Everything binds 127.0.0.1 on free ports and is stopped at the end."""
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("TURNOUT_BIN_DIR", ROOT / "build"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
SECONDS = int(os.environ.get("BENCH_SECONDS", "3" if QUICK else "10"))
CONNS = int(os.environ.get("BENCH_CONNS", "50"))
DRAIN_N = int(os.environ.get("BENCH_DRAIN_N", "2000" if QUICK else "20000"))
CELERY_N = int(os.environ.get("BENCH_CELERY_N", "300" if QUICK else "2000"))
SOAK_S = int(os.environ.get("BENCH_SOAK_S", "10" if QUICK else "300"))
PY = "/usr/bin/python3"
QUEUE = "evaluation"

procs = []
results = {}
notes = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(*a):
    print("bench:", *a, flush=True)


def start(name, argv, env=None, cwd=None, logdir=None):
    out = open(Path(logdir) / f"{name}.log", "wb") if logdir else subprocess.DEVNULL
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(argv, env=e, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append((name, p))
    return p


def stop(p, timeout=10):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def wait_http(url, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: {url} did not come up")


def wait_port(port, timeout=15, logs=()):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    tails = "".join(f"\n--- {f}:\n" + Path(f).read_text(errors="replace")[-2000:] for f in logs if Path(f).exists())
    raise SystemExit(f"bench: port {port} did not open{tails}")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk(url, script=None, seconds=SECONDS, conns=CONNS):
    argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p99_ms": p99_ms, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else "", "raw": out}


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass

    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"
    return {
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory": mem,
        "kernel": platform.release(), "turnout": (ROOT / "VERSION").read_text().strip(),
        "compiler": ver(["cc", "--version"]), "redis": ver(["redis-server", "--version"]),
        "nginx": ver(["nginx", "-v"]), "haproxy": ver(["haproxy", "-v"]), "wrk": ver(["wrk", "-v"]),
        "celery": ver([PY, "-m", "celery", "--version"]), "python": ver([PY, "--version"]),
    }


# ---------------------------------------------------------------- the parts

class Stack:
    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.redis_port = free_port()
        self.redis = start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(self.tmp)], logdir=self.logs)
        wait_port(self.redis_port)
        self.r = redis.Redis(port=self.redis_port)
        self.broker = f"redis://127.0.0.1:{self.redis_port}/0"
        # one nginx: the trivial upstream (/ping), and a fast executor (/execute, /capacity, /health)
        self.up_port = free_port()
        self.upstream = self.nginx("upstream", f"""
    server {{
        listen 127.0.0.1:{self.up_port};
        keepalive_requests 1000000;
        location = /ping {{ return 200 "ok\\n"; }}
        location = /execute {{ default_type application/json;
            return 200 '{{"eval_id":"x","status":"completed","output":"ok","error":null,"exit_code":0,"executor_id":"fast","duration_s":0.0}}'; }}
        location = /capacity {{ default_type application/json;
            return 200 '{{"executor_id":"fast","can_accept":true,"running":0,"max_concurrent":256,"available_slots":256}}'; }}
        location = /health {{ return 200 '{{"status":"ok"}}'; }}
        location / {{ return 200 "ok\\n"; }}
    }}""", workers=2)
        wait_port(self.up_port)
        self.up = f"http://127.0.0.1:{self.up_port}"
        self.lua = self.tmp / "submit.lua"
        self.lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                            'wrk.body = \'{"code": "print(6*7)", "language": "python"}\'\n')

    def nginx(self, name, server_block, workers=1):
        d = self.tmp / f"nginx-{name}"
        d.mkdir()
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
{server_block}
}}""")
        return start(f"nginx-{name}", ["nginx", "-c", str(conf), "-p", str(d)], logdir=self.logs)

    def proxy(self, name, **env):
        port = free_port()
        e = {"PROXY_LISTEN": f"127.0.0.1:{port}", "CELERY_BROKER_URL": self.broker,
             "LEGACY_QUEUE_URL": self.up, "LOG_LEVEL": "error"}
        e.update({k: str(v) for k, v in env.items()})
        argv = [str(BUILD / "turnout-proxy")]
        if env.get("_callgrind"):
            e.pop("_callgrind")
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.tmp}/callgrind.{name}.out"] + argv
        p = start(name, argv, env=e, logdir=self.logs)
        wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        return p, port

    def worker(self, name, **env):
        port = free_port()
        e = {"CELERY_BROKER_URL": self.broker, "EXECUTOR_SERVICE_URL": self.up,
             "WORKER_METRICS_LISTEN": f"127.0.0.1:{port}", "WORKER_NAME": f"{name}@bench", "LOG_LEVEL": "error"}
        e.update({k: str(v) for k, v in env.items()})
        p = start(name, [str(BUILD / "turnout-worker")], env=e, logdir=self.logs)
        wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        return p, port

    def queue_len(self):
        return sum(self.r.llen(k) for k in (QUEUE, QUEUE + "\x06\x163", QUEUE + "\x06\x166", QUEUE + "\x06\x169"))


def p1(st):
    log("P1: new-path submissions/s")
    lua = st.lua
    # the queue's ceiling far above what one run queues: the depth check
    # still runs on every submission, but never turns one away (the
    # default, 100 000, is reached within seconds at this rate)
    p, port = st.proxy("proxy-p1", CELERY_ENABLED="true", CELERY_PERCENTAGE="1", CELERY_QUEUE_MAX_DEPTH="100000000")
    st.r.flushall()
    w = wrk(f"http://127.0.0.1:{port}/api/eval", lua)
    queued = st.queue_len()
    stop(p)
    if w["non2xx"]:
        notes.append(f"P1: {w['non2xx']} non-2xx replies from turnout")
    # what the Python API did per request: send_task in a loop, one client
    st.r.flushall()
    code = f"""
import time
from celery import Celery
app = Celery("bench", broker="{st.broker}")
n = 0
end = time.time() + {SECONDS}
while time.time() < end:
    app.send_task("tasks.evaluate_code", args=["e%d" % n, "print(6*7)", "python"], queue="{QUEUE}")
    n += 1
print(n / {SECONDS})
"""
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=SECONDS + 120)
    send_task = float(out.stdout.strip().splitlines()[-1])
    st.r.flushall()
    rb = subprocess.run(["redis-benchmark", "-p", str(st.redis_port), "-t", "lpush", "-c", str(CONNS), "-n",
                         str(200000 if not QUICK else 50000), "-q"], capture_output=True, text=True, timeout=300).stdout
    lpush = float(re.search(r"LPUSH:\s+([\d.]+)", rb).group(1))
    st.r.flushall()
    results["P1"] = {"turnout_rps": w["rps"], "turnout_p99_ms": w["p99_ms"], "queued": queued,
                     "send_task_per_s": send_task, "lpush_per_s": lpush,
                     "x_send_task": w["rps"] / send_task, "x_lpush": w["rps"] / lpush}


def p2(st):
    log("P2: reverse proxy to a trivial upstream")
    # nginx: one worker, upstream keepalive, split_clients between two names of the same upstream
    ng_port = free_port()
    ng = st.nginx("proxy", f"""
    upstream a {{ server 127.0.0.1:{st.up_port}; keepalive 64; }}
    upstream b {{ server 127.0.0.1:{st.up_port}; keepalive 64; }}
    split_clients "$request_id" $pool {{ 50% a; * b; }}
    server {{
        listen 127.0.0.1:{ng_port};
        keepalive_requests 1000000;
        location / {{ proxy_pass http://$pool; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}""")
    wait_port(ng_port, logs=[st.tmp / "nginx-proxy" / "error.log", st.logs / "nginx-proxy.log"])
    nginx = wrk(f"http://127.0.0.1:{ng_port}/ping")
    stop(ng)
    ha_port = free_port()
    hacfg = st.tmp / "haproxy.cfg"
    hacfg.write_text(f"""
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{ha_port}
    use_backend a if {{ rand(100) lt 50 }}
    default_backend b
backend a
    http-reuse always
    server s1 127.0.0.1:{st.up_port}
backend b
    http-reuse always
    server s1 127.0.0.1:{st.up_port}
""")
    ha = start("haproxy", ["haproxy", "-f", str(hacfg), "-db"], logdir=st.logs)
    wait_port(ha_port, logs=[st.logs / "haproxy.log"])
    haproxy = wrk(f"http://127.0.0.1:{ha_port}/ping")
    stop(ha)
    p, port = st.proxy("proxy-p2", UPSTREAM_API_URL=st.up)
    turnout = wrk(f"http://127.0.0.1:{port}/ping")
    stop(p)
    for name, w in (("turnout", turnout), ("nginx", nginx), ("haproxy", haproxy)):
        if w["non2xx"]:
            notes.append(f"P2: {name} had {w['non2xx']} non-2xx replies")
    results["P2"] = {"turnout_rps": turnout["rps"], "turnout_p99_ms": turnout["p99_ms"], "nginx_rps": nginx["rps"],
                     "nginx_p99_ms": nginx["p99_ms"], "haproxy_rps": haproxy["rps"],
                     "haproxy_p99_ms": haproxy["p99_ms"], "x_nginx": turnout["rps"] / nginx["rps"],
                     "x_haproxy": turnout["rps"] / haproxy["rps"]}


def fill(st, port, n):
    """n messages on the new queue, through the proxy's batch endpoint."""
    s = requests.Session()
    done = 0
    while done < n:
        k = min(100, n - done)
        items = [{"code": "print(1)", "priority": "default"} for _ in range(k)]
        r = s.post(f"http://127.0.0.1:{port}/api/eval-batch", json={"evaluations": items}, timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == k, r.text[:300]
        done += k
    s.close()


def drain_time(st, n, check, timeout):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check() >= n:
            return time.time() - t0
        time.sleep(0.02)
    raise SystemExit(f"bench: drain of {n} did not finish in {timeout}s (got {check()})")


def p3(st):
    log("P3: draining through a fast executor")
    pp, pport = st.proxy("proxy-p3", CELERY_ENABLED="true", CELERY_PERCENTAGE="1", CELERY_QUEUE_MAX_DEPTH="100000000")
    st.r.flushall()
    fill(st, pport, DRAIN_N)
    assert st.queue_len() == DRAIN_N, st.queue_len()
    wp, wport = st.worker("worker-p3", CELERY_CONCURRENCY="2")

    def tw_done():
        m = requests.get(f"http://127.0.0.1:{wport}/metrics", timeout=5).text
        x = re.search(r'^turnout_worker_tasks_total\{outcome="completed"\} ([\d.e+]+)', m, re.M)
        bad = re.search(r'^turnout_worker_tasks_total\{outcome="(retried|dead_lettered|failed)"\} ([1-9][\d.e+]*)', m, re.M)
        if bad:
            raise SystemExit(f"bench: the worker's evaluations are not completing ({bad.group(0)}); see the logs")
        return float(x.group(1)) if x else 0
    tw_s = drain_time(st, DRAIN_N, tw_done, 600)
    worker_rss = rss_kib(wp.pid)
    stop(wp)
    # and with more in flight: what one event loop does
    st.r.flushall()
    fill(st, pport, DRAIN_N)
    wp, wport = st.worker("worker-p3b", CELERY_CONCURRENCY="32")
    tw32_s = drain_time(st, DRAIN_N, tw_done, 600)
    stop(wp)
    # Celery prefork, concurrency 2, the same task against the same executor
    st.r.flushall()
    fill(st, pport, CELERY_N)
    tasks = st.tmp / "bench_tasks.py"
    tasks.write_text(f'''
import requests
from celery import Celery
app = Celery("bench", broker="{st.broker}", backend="{st.broker}")
# Celery defaults (prefetch 4, early acks): its own best case
_s = requests.Session()

@app.task(name="tasks.evaluate_code")
def evaluate_code(eval_id, code, language, timeout=30, engine="docker", priority=None):
    r = _s.post("{st.up}/execute", json={{"eval_id": eval_id, "code": code, "language": language, "timeout": timeout}}, timeout=timeout + 5)
    return r.json()
''')
    cw = start("celery", [PY, "-m", "celery", "-A", "bench_tasks", "worker", "-Q", QUEUE, "-P", "prefork", "-c", "2",
                          "--loglevel=warning", "--without-gossip", "--without-mingle", "--without-heartbeat",
                          "-n", "bench@%h"], env={"C_FORCE_ROOT": "1", "PYTHONDONTWRITEBYTECODE": "1"},
               cwd=str(st.tmp), logdir=st.logs)

    def celery_done():
        return sum(1 for _ in st.r.scan_iter("celery-task-meta-*", count=1000))
    # the clock starts when Celery takes the first message (its start-up is not the drain)
    t_wait = time.time()
    while st.queue_len() == CELERY_N and time.time() - t_wait < 60:
        time.sleep(0.01)
    c_s = drain_time(st, CELERY_N, celery_done, 900)
    stop(cw, 20)
    stop(pp)
    results["P3"] = {"turnout_tasks_per_s": DRAIN_N / tw_s, "turnout_c32_tasks_per_s": DRAIN_N / tw32_s,
                     "celery_tasks_per_s": CELERY_N / c_s, "x_celery": (DRAIN_N / tw_s) / (CELERY_N / c_s),
                     "n_turnout": DRAIN_N, "n_celery": CELERY_N, "worker_rss_kib": worker_rss}


def p4(st):
    log("P4: memory and instructions per request")
    p, port = st.proxy("proxy-p4", CELERY_ENABLED="true", CELERY_PERCENTAGE="1", CELERY_QUEUE_MAX_DEPTH="100000000")
    base = rss_kib(p.pid)
    socks = []
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.recv(4096)
    time.sleep(0.5)
    with_conns = rss_kib(p.pid)
    for s in socks:
        s.close()
    # soak: steady submissions, RSS sampled
    log(f"P4: soak {SOAK_S}s")
    lua = st.lua
    samples = []
    stop_ev = threading.Event()

    def sample():
        while not stop_ev.wait(5):
            samples.append(rss_kib(p.pid))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    # trim the queue as it grows so Redis memory is not what is measured
    wrk(f"http://127.0.0.1:{port}/api/eval", lua, seconds=min(SOAK_S, 20), conns=10)  # warm-up
    st.r.flushall()
    after_warm = rss_kib(p.pid)
    end = time.time() + SOAK_S
    while time.time() < end:
        wrk(f"http://127.0.0.1:{port}/api/eval", lua, seconds=min(20, max(1, int(end - time.time()))), conns=10)
        st.r.flushall()
    stop_ev.set()
    th.join(10)
    after_soak = rss_kib(p.pid)
    stop(p)
    # instructions per routed request: callgrind, N submissions minus none
    def instructions(n):
        pc, cport = st.proxy(f"proxy-cg{n}", CELERY_ENABLED="true", CELERY_PERCENTAGE="1",
                            CELERY_QUEUE_MAX_DEPTH="100000000", _callgrind=True)
        s = requests.Session()
        for i in range(n):
            r = s.post(f"http://127.0.0.1:{cport}/api/eval", json={"code": "print(1)"}, timeout=30)
            assert r.status_code == 202, r.text
        s.close()
        stop(pc, 60)
        out = (st.tmp / f"callgrind.proxy-cg{n}.out").read_text(errors="replace")
        return int(re.search(r"^summary: (\d+)", out, re.M).group(1)) if "summary:" in out else \
            int(re.search(r"^totals: (\d+)", out, re.M).group(1))
    n = 500 if QUICK else 2000
    ipr = (instructions(n) - instructions(0)) / n
    results["P4"] = {"proxy_rss_idle_kib": base, "proxy_rss_1000_conns_kib": with_conns,
                     "proxy_rss_after_warmup_kib": after_warm, "proxy_rss_after_soak_kib": after_soak,
                     "soak_s": SOAK_S, "rss_samples_kib": samples, "instructions_per_request": ipr}


# ---------------------------------------------------------------- report

def report(m, elapsed):
    R = results
    lines = [f"# turnout benchmark, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), "",
             f"wrk: 2 threads, {CONNS} connections, {SECONDS} s per run; everything on 127.0.0.1; "
             f"whole run {elapsed:.0f} s.", "",
             "| comparison | turnout | peer | ratio | target |", "|---|---|---|---|---|"]

    def row(name, a, b, ratio, target, ok):
        lines.append(f"| {name} | {a} | {b} | {ratio:.2f}x | {target} {'met' if ok else 'MISSED'} |")
    if "P1" in R:
        p = R["P1"]
        row("P1 submissions/s vs Celery send_task loop", f"{p['turnout_rps']:.0f}/s", f"{p['send_task_per_s']:.0f}/s",
            p["x_send_task"], ">= 20x", p["x_send_task"] >= 20)
        row("P1 submissions/s vs redis-benchmark LPUSH", f"{p['turnout_rps']:.0f}/s", f"{p['lpush_per_s']:.0f}/s",
            p["x_lpush"], ">= 0.5x", p["x_lpush"] >= 0.5)
    if "P2" in R:
        p = R["P2"]
        row("P2 reverse proxy req/s vs nginx", f"{p['turnout_rps']:.0f}/s", f"{p['nginx_rps']:.0f}/s", p["x_nginx"],
            ">= 1.0x", p["x_nginx"] >= 1.0)
        row("P2 p99 vs nginx", f"{p['turnout_p99_ms']:.2f} ms", f"{p['nginx_p99_ms']:.2f} ms",
            p["nginx_p99_ms"] / p["turnout_p99_ms"] if p["turnout_p99_ms"] else 0, "no worse",
            p["turnout_p99_ms"] <= p["nginx_p99_ms"])
        row("P2 reverse proxy req/s vs HAProxy", f"{p['turnout_rps']:.0f}/s", f"{p['haproxy_rps']:.0f}/s",
            p["x_haproxy"], "(peer)", True)
    if "P3" in R:
        p = R["P3"]
        row("P3 drain tasks/s vs Celery prefork c=2", f"{p['turnout_tasks_per_s']:.0f}/s (c=2)",
            f"{p['celery_tasks_per_s']:.0f}/s", p["x_celery"], ">= 10x", p["x_celery"] >= 10)
    if "P4" in R:
        p = R["P4"]
        lines += ["", "| P4 memory | value | target |", "|---|---|---|",
                  f"| proxy RSS, idle | {p['proxy_rss_idle_kib'] / 1024:.1f} MiB | |",
                  f"| proxy RSS, 1,000 keep-alive connections | {p['proxy_rss_1000_conns_kib'] / 1024:.1f} MiB | <= 16 MiB "
                  f"{'met' if p['proxy_rss_1000_conns_kib'] <= 16384 else 'MISSED'} |",
                  f"| worker RSS after draining {R.get('P3', {}).get('n_turnout', '?')} | "
                  f"{R.get('P3', {}).get('worker_rss_kib', 0) / 1024:.1f} MiB | <= 8 MiB "
                  f"{'met' if R.get('P3', {}).get('worker_rss_kib', 1 << 30) <= 8192 else 'MISSED'} |",
                  f"| proxy RSS after warm-up / after {p['soak_s']} s soak | {p['proxy_rss_after_warmup_kib'] / 1024:.1f} / "
                  f"{p['proxy_rss_after_soak_kib'] / 1024:.1f} MiB | no growth "
                  f"{'met' if p['proxy_rss_after_soak_kib'] <= p['proxy_rss_after_warmup_kib'] * 1.05 + 256 else 'MISSED'} |",
                  f"| instructions per routed request (callgrind) | {p['instructions_per_request']:.0f} | |"]
    if "P3" in R:
        lines.append(f"\nP3 extra: turnout-worker at CELERY_CONCURRENCY=32: {R['P3']['turnout_c32_tasks_per_s']:.0f} tasks/s "
                     f"({R['P3']['n_turnout']} messages; Celery {R['P3']['n_celery']}).")
    if "P1" in R:
        lines.append(f"P1 turnout submit p99 {R['P1']['turnout_p99_ms']:.2f} ms; messages queued in the run: {R['P1']['queued']}.")
    lines += [f"Note: {n}" for n in notes]
    lines += ["", "```json", json.dumps({"machine": m, "results": R}, indent=1, default=str), "```"]
    return "\n".join(lines) + "\n"


def main():
    # SIGTERM/SIGINT still stop every process started here
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for tool in ("wrk", "nginx", "haproxy", "redis-server", "redis-benchmark", "valgrind"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing: run scripts/deps.sh bench (as root)")
    for b in ("turnout-proxy", "turnout-worker"):
        if not (BUILD / b).exists():
            raise SystemExit(f"bench: {BUILD / b} is missing: run make")
    t0 = time.time()
    m = machine()
    with tempfile.TemporaryDirectory(prefix="turnout-bench-") as tmp:
        st = Stack(tmp)
        try:
            for part in (p1, p2, p3, p4):
                if os.environ.get("BENCH_ONLY") and part.__name__ not in os.environ["BENCH_ONLY"].split(","):
                    continue
                part(st)
        finally:
            for name, p in reversed(procs):
                stop(p)
    text = report(m, time.time() - t0)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{m['host']}{'-quick' if QUICK else ''}.md"
    f.write_text(text)
    log(f"results in {f.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
