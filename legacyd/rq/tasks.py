"""The reference RQ task module for LEGACY_BACKEND=rq (README "The legacy
side"): what `rq worker` runs for the proxy's jobs.  Run it with
    EXECUTOR_SERVICE_URL=http://127.0.0.1:8083 \
    /usr/bin/python3 -m rq.cli worker -u redis://127.0.0.1:6390/2 --path legacyd/rq high default low
(`--serializer rq.serializers.JSONSerializer` with LEGACY_RQ_SERIALIZER=json);
the function path is tasks.evaluate_code, the proxy's LEGACY_RQ_FUNCTION
default.  The tests run this very file.  Standard library only: it runs in the worker's
work horse under /usr/bin/python3.

evaluate_code sends the evaluation to turnout-executor (README "The
executor": POST /execute {eval_id, code, language, timeout}) and returns the
executor's reply as it came:
    {"eval_id", "status": "completed"|"failed"|"timeout"|"killed",
     "output", "error", "exit_code", "duration_s", "executor_id"}
A program's own verdict (failed, timeout, ...) is a normal return: the RQ
job is "finished".  Anything that keeps the executor from answering (down,
an HTTP error, a reply that is not that JSON, busy past the retries) raises,
and the RQ job is "failed": a system error, not a program verdict.
"""
import json
import os
import time
import urllib.error
import urllib.request

BUSY_RETRIES = 10        # 503 + Retry-After from a full executor: tries in all
BUSY_SLEEP_MAX_S = 2.0   # the longest pause between two of them
REPLY_KEYS = ("eval_id", "status", "output", "error", "exit_code", "duration_s")
STATUSES = ("completed", "failed", "timeout", "killed")


class ExecutorError(RuntimeError):
    """The executor did not give a program verdict: a system error."""


def _retry_after(err):
    try:
        return max(0.1, min(BUSY_SLEEP_MAX_S, float(err.headers.get("Retry-After") or 1)))
    except ValueError:
        return 1.0


def evaluate_code(eval_id, code, language, timeout=30, engine="docker", priority=None):
    """Runs one evaluation on EXECUTOR_SERVICE_URL and returns its verdict.
    engine and priority are what the proxy passes along; the executor takes
    neither (the queue the job came from already was its priority)."""
    base = os.environ.get("EXECUTOR_SERVICE_URL", "")
    if not base:
        raise ExecutorError("EXECUTOR_SERVICE_URL is not set in the RQ worker's environment")
    url = base.split(",")[0].strip().rstrip("/") + "/execute"
    timeout = int(timeout)
    body = json.dumps({"eval_id": eval_id, "code": code, "language": language,
                       "timeout": timeout}).encode("utf-8")
    # never through an http_proxy of the environment: the executor is ours
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for attempt in range(1, BUSY_RETRIES + 1):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with opener.open(req, timeout=timeout + 10) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            text = e.read(2000).decode("utf-8", "replace")
            if e.code == 503 and attempt < BUSY_RETRIES:
                time.sleep(_retry_after(e))
                continue
            raise ExecutorError(f"executor {url} answered {e.code} for {eval_id} "
                                f"(attempt {attempt} of {BUSY_RETRIES}): {text}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ExecutorError(f"executor {url} unreachable for {eval_id}: {reason}") from None
        if status != 200:
            raise ExecutorError(f"executor {url} answered {status} for {eval_id}: "
                                f"{raw[:2000].decode('utf-8', 'replace')}")
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise ExecutorError(f"executor {url} sent a reply that is not JSON for {eval_id}: {e}: "
                                f"{raw[:200]!r}") from None
        if not isinstance(reply, dict) or any(k not in reply for k in REPLY_KEYS) \
                or reply["status"] not in STATUSES:
            raise ExecutorError(f"executor {url} sent a reply without a verdict for {eval_id}: "
                                f"{str(reply)[:500]}")
        return reply
    raise ExecutorError(f"executor {url} busy for {eval_id} after {BUSY_RETRIES} tries")
