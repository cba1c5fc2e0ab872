"""Edges of what the proxy and the legacy side say back: input quoted in a
message is cut at a character boundary (never out_of_memory), results larger
than 64 KiB and NUL bytes in output are carried through exactly, status
replies write error null and short durations, and the DLQ API addresses
every task id the worker can dead-letter."""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest

from fixtures_turnout import (
    Legacyd, free_port, msum, mval, wait_until, WAIT_S,
)

TOKEN = "edge-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FFFD = "\ufffd"


def rejected(p, reason="invalid_field"):
    return mval(p.metrics(), "turnout_rejected_requests_total", reason=reason)


def assert_json_error(resp, status, code, mentions):
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text[:500]}"
    body = json.loads(resp.content.decode("utf-8"))  # strict: the body is UTF-8 JSON
    assert body["error"] == code, body
    assert mentions in body["message"], body
    return body


# --------------------------------------------------------------- 1. quoting

LANG = "a" + "é" * 30  # a 40-byte cut falls inside an é


def test_language_quoted_whole_characters(proxy_factory):
    p = proxy_factory()
    before = rejected(p)
    body = assert_json_error(p.submit(language=LANG), 422, "invalid_field", "'language'")
    assert '"a' + "é" * 19 + '"' in body["message"] and FFFD not in body["message"], body
    assert rejected(p) == before + 1
    assert p.get("/healthz").status_code == 200


def test_batch_item_error_is_an_object_not_null(proxy_factory):
    p = proxy_factory()
    resp = p.post("/api/eval-batch", json={"evaluations": [{"code": "print(1)", "language": LANG},
                                                           {"code": "print(2)", "language": "ü" * 200}]})
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["field"] for r in results] == ["language", "language"], results
    for r in results:
        assert r["error"] == "invalid_field" and r["status_code"] == 422 and FFFD not in r["message"], r
    assert resp.json()["rejected"] == 2


def test_rollout_unknown_non_ascii_key(proxy_factory):
    p = proxy_factory(ADMIN_TOKEN=TOKEN)
    before = rejected(p)
    key = "k" + "ключ" * 20  # 161 bytes: a 60-byte cut falls inside a character
    resp = p.session.put(p.url("/admin/rollout"), headers=AUTH, json={key: 1}, timeout=10)
    body = assert_json_error(resp, 422, "invalid_field", "not part of the rollout state")
    assert body["message"].startswith("field 'kключ") and FFFD not in body["message"], body
    assert rejected(p) == before + 1


def test_dlq_list_limit_not_utf8(proxy_factory):
    p = proxy_factory()
    before = rejected(p)
    body = assert_json_error(p.get("/api/dlq/list?limit=%ff"), 422, "invalid_parameter", "limit=")
    assert FFFD in body["message"], body  # the byte 0xff, quoted safely
    long_value = "x" + "é" * 40  # quoted up to 40 bytes: whole characters only
    body = assert_json_error(p.get("/api/dlq/list?offset=" + quote(long_value)), 422, "invalid_parameter", "offset=")
    assert '"x' + "é" * 19 + '"' in body["message"] and FFFD not in body["message"], body
    assert rejected(p) == before + 2


def raw_request(port, head):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_part, _, rest = data.partition(b"\r\n\r\n")
        m = re.search(rb"Content-Length: (\d+)", head_part)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(head_part.split()[1]), rest[:n]


def test_passthrough_header_name_with_space_is_400(proxy_factory, legacyd):
    p = proxy_factory(UPSTREAM_API_URL=legacyd.url)
    port = int(p.base.rsplit(":", 1)[1])
    before = rejected(p, "bad_http")
    status, body = raw_request(port, "GET /elsewhere HTTP/1.1\r\nHost: x\r\nBad Name: v\r\nConnection: close\r\n\r\n")
    assert status == 400, body
    doc = json.loads(body)
    # refused by the framing check before any parser: it names the header as written
    assert doc["error"] == "bad_request" and '"Bad"' in doc["message"] and "header name" in doc["message"], doc
    assert rejected(p, "bad_http") == before + 1
    # a good header still passes through (legacyd answers its own 404 JSON)
    status, body = raw_request(port, "GET /elsewhere HTTP/1.1\r\nHost: x\r\nX-Good: v\r\nConnection: close\r\n\r\n")
    assert status == 404 and json.loads(body)["error"] == "not_found", body


# --------------------------------------------------------------- legacy runs with a real executor

@pytest.fixture
def legacy_run(proxy_factory, executor_factory, redis_server, tmp_path):
    """make(**proxy_env) -> (proxy, legacyd): a legacyd running tasks on a real
    executor, and a proxy routing everything to it, polling completion every second."""
    made = []

    def make(**env):
        ex = executor_factory()
        leg = Legacyd(tmp_path / f"legacy-run{len(made)}", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
        made.append(leg)
        p = proxy_factory(LEGACY_QUEUE_URL=leg.url, COMPLETION_POLL_S=1, **env)
        return p, leg

    yield make
    for leg in made:
        err = leg.cleanup()
        assert err is None, err


def finished(p, eval_id, timeout=30):
    def done():
        r = p.get(f"/api/eval-status/{eval_id}")
        return r if r.status_code == 200 and r.json()["status"] not in ("queued", "running") else None
    return wait_until(done, timeout, f"{eval_id} finished", [p.mp])


def settled(p, r, path="legacy", timeout=15):
    wait_until(lambda: r.zcard(f"turnout:inflight:{path}") == 0, timeout, f"inflight:{path} empty", [p.mp])


def test_legacy_result_over_64k_is_read_and_counted(legacy_run, redis_server):
    p, leg = legacy_run()
    assert p.submit(eval_id="big-1", code="print('x' * 200000)").status_code == 202
    resp = finished(p, "big-1")
    b = resp.json()
    assert b["status"] == "completed" and b["success"] is True and b["error"] is None, str(b)[:300]
    assert b["output"] == "x" * 200000 + "\n"
    r = redis_server.client()
    settled(p, r)
    assert mval(p.metrics(), "turnout_evals_completed_total", path="legacy", outcome="completed") == 1
    r.close()


def test_legacy_result_over_the_cap_is_finished_as_failed(legacy_run, redis_server):
    p, leg = legacy_run(LEGACY_MAX_REPLY_BYTES=65536)
    assert p.submit(eval_id="huge-1", code="print('y' * 100000)").status_code == 202
    wait_until(lambda: leg.task("huge-1").json()["status"] == "completed", 30, "legacyd ran it")
    r = redis_server.client()
    settled(p, r)  # completion tracking finished it: not in flight for ever
    m = p.metrics()
    assert mval(m, "turnout_evals_completed_total", path="legacy", outcome="failed") == 1
    rec = json.loads(r.get("turnout:route:huge-1"))
    assert rec["outcome"] == "failed" and "LEGACY_MAX_REPLY_BYTES" in rec["error"], rec
    b = p.get("/api/eval-status/huge-1")
    assert b.status_code == 200, b.text
    b = b.json()
    assert b["status"] == "failed" and b["success"] is False and "LEGACY_MAX_REPLY_BYTES" in b["error"], b
    assert b["output"] is None and b["completed_at"], b
    r.close()


def test_legacy_output_with_nul_and_status_fields(legacy_run, redis_server):
    p, leg = legacy_run()
    assert p.submit(eval_id="nul-1", code="import sys; sys.stdout.write('a\\x00b')").status_code == 202
    resp = finished(p, "nul-1")
    b = resp.json()
    assert b["status"] == "completed" and b["success"] is True, b
    assert b["output"] == "a\x00b" and '"a\\u0000b"' in resp.text, resp.text
    assert b["error"] is None, b  # none: null, not ""
    # durations rounded to microseconds, as written by legacyd and by the proxy
    assert re.search(r'"duration_s":\d+\.\d{1,6}[,}]', resp.text), resp.text
    t = leg.task("nul-1")
    assert t.json()["output"] == "a\x00b" and t.json()["error"] is None, t.text
    assert re.search(r'"duration_s":\d+\.\d{1,6}[,}]', t.text), t.text
    r = redis_server.client()
    settled(p, r)
    assert mval(p.metrics(), "turnout_evals_completed_total", path="legacy", outcome="completed") == 1
    r.close()


class GarbledLegacy:
    """A legacy Queue Service that takes tasks but answers every
    GET /tasks/{id} with a 200 that is not the protocol's JSON."""

    def __init__(self):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body, ctype="application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                doc = json.loads(self.rfile.read(n) or b"{}")
                self._send(201, json.dumps({"eval_id": doc.get("eval_id"), "status": "queued", "position": 1}))

            def do_GET(self):
                if self.path.startswith("/tasks/"):
                    self._send(200, "<html>maintenance</html>", "text/html")
                else:
                    self._send(200, json.dumps({"status": "ok", "queued": 0, "processing": 0,
                                                "queue_length": 0, "total_tasks": 0}))

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.srv.shutdown()
        self.srv.server_close()


def test_legacy_reply_that_never_gets_better_is_finished(proxy_factory, redis_server):
    with GarbledLegacy() as leg:
        p = proxy_factory(LEGACY_QUEUE_URL=leg.url, COMPLETION_POLL_S=1)
        assert p.submit(eval_id="garbled-1").json()["path"] == "legacy"
        # unreadable once is not the end: it is still in flight after the first poll
        r = redis_server.client()
        assert r.zscore("turnout:inflight:legacy", "garbled-1") is not None
        assert p.get("/api/eval-status/garbled-1").status_code == 502
        settled(p, r, timeout=20)  # 5 unreadable polls in a row, then finished
        assert mval(p.metrics(), "turnout_evals_completed_total", path="legacy", outcome="failed") == 1
        rec = json.loads(r.get("turnout:route:garbled-1"))
        assert rec["outcome"] == "failed" and "5 times in a row" in rec["error"], rec
        b = p.get("/api/eval-status/garbled-1")
        assert b.status_code == 200 and b.json()["status"] == "failed", b.text
        assert "not a JSON object" in b.json()["error"] and b.json()["success"] is False, b.text
        r.close()


# --------------------------------------------------------------- new path: records written into Redis

def celery_meta(tid, eval_id, output, error="", duration=0.011113000000023021):
    return json.dumps({
        "status": "SUCCESS", "traceback": None, "children": [], "task_id": tid,
        "date_done": "2026-11-22T08:42:30.022342",
        "result": {"eval_id": eval_id, "status": "completed", "output": output, "error": error,
                   "exit_code": 0, "executor": "ex-1", "duration_s": duration}})


def test_new_path_status_and_completion_with_nul(proxy_factory, redis_server):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, COMPLETION_POLL_S=1)
    r = redis_server.client()
    now = time.time()
    r.set("turnout:route:nnul", json.dumps({"eval_id": "nnul", "path": "new", "reason": "percentage",
                                            "priority": 3, "priority_name": "default", "bucket": 1,
                                            "submitted_at": now}), ex=3600)
    r.set("celery-task-meta-celery-nnul", celery_meta("celery-nnul", "nnul", "a\x00b"))
    r.zadd("turnout:inflight:new", {"nnul": now})
    resp = p.get("/api/eval-status/nnul")
    assert resp.status_code == 200, resp.text
    b = resp.json()
    assert b["status"] == "completed" and b["output"] == "a\x00b" and b["error"] is None, b
    assert '"duration_s":0.011113' in resp.text and "0.011113000" not in resp.text, resp.text
    settled(p, r, "new")  # the sweep read the record and counted it
    assert mval(p.metrics(), "turnout_evals_completed_total", path="new", outcome="completed") == 1
    r.close()


# --------------------------------------------------------------- 5. DLQ ids

ODD_IDS = ["celery-has space", "a/b", "100%", "café-ü€", "+plus+", "x" * 255,
           "invalid-id-" + "0123456789abcdef" * 2 + "01234567"]


def seed_dlq(r, tid, failed_at, message="a\x00b failed"):
    entry = {"task_id": tid, "eval_id": None, "task": "tasks.evaluate_code", "queue": "evaluation",
             "priority": 3, "args": None, "kwargs": None, "exception_class": "InvalidTaskId",
             "exception_message": message, "traceback": message, "retries": 0, "policy": "none",
             "first_failure_at": failed_at, "last_failure_at": failed_at, "reason": "malformed",
             "message": "{}"}
    r.set(f"turnout:dlq:entry:{tid}".encode(), json.dumps(entry))
    r.zadd("turnout:dlq", {tid: failed_at})
    r.hincrby("turnout:dlq:classes", "InvalidTaskId", 1)
    return entry


def test_dlq_addresses_every_valid_id(proxy_factory, redis_server):
    p = proxy_factory(ADMIN_TOKEN=TOKEN)
    r = redis_server.client()
    for i, tid in enumerate(ODD_IDS):
        seed_dlq(r, tid, 1795337000.0 + i)
    for tid in ODD_IDS:
        resp = p.get("/api/dlq/" + quote(tid, safe=""))
        assert resp.status_code == 200, (tid, resp.text)
        assert resp.json()["task_id"] == tid and resp.json()["exception_message"] == "a\x00b failed"
    listed = p.get("/api/dlq/list?limit=500").json()
    assert [e["task_id"] for e in listed["entries"]] == ODD_IDS[::-1] and listed["total"] == len(ODD_IDS)
    stats = p.get("/api/stats").json()
    newest = stats["queue"]["dlq_newest"]
    assert [e["task_id"] for e in newest] == ODD_IDS[::-1][:5], newest
    assert newest[0]["exception_message"] == "a\x00b failed"
    # retry reaches the entry (its message is no Celery envelope: 409 says so, by its id)
    resp = p.session.post(p.url("/api/dlq/" + quote("a/b", safe="") + "/retry"), headers=AUTH, timeout=10)
    assert resp.status_code == 409 and resp.json()["error"] == "not_retryable" and '"a/b"' in resp.json()["message"]
    for tid in ODD_IDS:
        resp = p.session.delete(p.url("/api/dlq/" + quote(tid, safe="")), headers=AUTH, timeout=10)
        assert resp.status_code == 200 and resp.json() == {"task_id": tid, "deleted": True}, (tid, resp.text)
        assert p.get("/api/dlq/" + quote(tid, safe="")).status_code == 404
    assert r.zcard("turnout:dlq") == 0
    r.close()


@pytest.mark.parametrize("segment", ["a%0Ab", "%00", "a%7F", "a%C2%85", "%ff", "a%C3", "a%2", "a%zz", "x" * 256,
                                     "%E2%82%AC" * 85 + "x"])
def test_dlq_ids_outside_the_rule_are_422(proxy_factory, segment):
    p = proxy_factory()
    port = int(p.base.rsplit(":", 1)[1])
    before = rejected(p)
    # sent as they are (a client library would re-encode a bad escape)
    for method, path in (("GET", f"/api/dlq/{segment}"), ("POST", f"/api/dlq/{segment}/retry")):
        status, body = raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                         "Connection: close\r\n\r\n")
        assert status == 422, body
        doc = json.loads(body.decode("utf-8"))
        assert doc["error"] == "invalid_task_id" and "task_id" in doc["message"], doc
        assert "UTF-8" in doc["message"] and "control" in doc["message"], doc
    assert rejected(p) == before + 2
    assert p.get("/api/dlq/" + quote("unknown id")).status_code == 404
