"""Exactly one path under repeated Redis stalls and restarts, counted at the
executor.

N submissions (2,000; TURNOUT_SOAK=1: 6,000) at concurrency 8 through a
proxy splitting 50/50 by the sticky hash, with client-supplied eval_ids,
while every 5 s the redis-server is either SIGSTOPped for 1.5 s (longer
than the proxy's REDIS_TIMEOUT_MS of 1 s: commands time out with the
scripts still in Redis's input buffer) or SIGKILLed and restarted on the
same port and AOF (fsynced on every write) 1.5 s later; five times (soak:
fifteen). The new path is run
by a turnout-worker on one executor, the legacy path by turnout-legacyd
pulling into another, so each execution says which path ran it.

Invariants, for every submission:
- accepted (202): its route record names the path the client was told, it
  was executed exactly once, on that path's executor, and never on the
  other (executions counted from the executors' logs, one "run finished"
  line per run);
- refused (503, JSON, Retry-After: outcome_unknown or eval_id_unchecked):
  executed nowhere;
- nothing else (no 5xx of another kind, no failed request); the proxy and
  the worker are alive and the in-flight gauges back at zero.
The stalls must have hit: some submissions were settled after a lost
reply (turnout_new_path_outcome_checks_total)."""
import json
import os
import re
import signal
import threading
import time
import uuid

import pytest
from faultlib import DurableRedis, retry_after_ok, scale
from fixtures_turnout import Legacyd, http_session, msum, mval, wait_until

N = scale(2000, 6000)
CLIENTS = 8
STALL_S = 1.5
EVERY_S = 5.0
STALLS = scale(5, 15)
DRAIN_S = scale(120.0, 300.0)


@pytest.fixture
def redis_server(tmp_path):
    """Overrides the integration fixture: the same port and directory across
    restarts, AOF fsynced on every write, so route records survive a kill."""
    srv = DurableRedis(tmp_path / "redis").start()
    yield srv
    srv.cleanup()


@pytest.fixture
def legacy_executor(executor_factory):
    return executor_factory(EXECUTOR_MAX_CONCURRENT=4)


@pytest.fixture
def legacyd(tmp_path, legacy_executor):
    """Overrides the integration fixture: a Queue Service that runs its
    tasks on an executor of its own."""
    d = Legacyd(tmp_path / "legacyd", env={"EXECUTOR_SERVICE_URL": legacy_executor.url,
                                           "LEGACYD_CONCURRENCY": "4"}).start()
    yield d
    err = d.cleanup()
    if err:
        pytest.fail(err, pytrace=False)


def runs(executor, tag):
    """{eval_id: executions} from an executor's logs."""
    out = {}
    for path in executor.dir.glob("executor-*.log"):
        for m in re.finditer(rf'msg="run finished" eval_id=({tag}[\w.:-]*)', path.read_text(errors="replace")):
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


@pytest.mark.parametrize("fault", ["stall", "restart"])
def test_every_accepted_eval_runs_once_on_its_path(
        fault, proxy_factory, redis_server, legacyd, legacy_executor, executor_factory, worker_factory):
    new_ex = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    # A take whose reply a Redis kill loses has moved its message to unacked
    # unseen by the worker: it comes back after the visibility timeout (the
    # at-least-once design), so a short one here, as in test_zero_loss.py.
    w = worker_factory(new_ex, CELERY_CONCURRENCY=4, LOG_LEVEL="info", VISIBILITY_TIMEOUT_S=5)
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, REDIS_TIMEOUT_MS=1000, LOG_LEVEL="info")
    tag = f"rs{uuid.uuid4().hex[:6]}-"
    replies, errors, lock = {}, [], threading.Lock()
    next_i = [0]
    stop = threading.Event()

    def client():
        s = http_session()
        while not stop.is_set():
            with lock:
                if next_i[0] >= N:
                    break
                i = next_i[0]
                next_i[0] += 1
            eid = f"{tag}{i}"
            try:
                r = s.post(p.url("/api/eval"), json={"code": f"print({i})", "eval_id": eid}, timeout=20)
                body = r.json()
            except Exception as e:  # noqa: BLE001 - a failed request is a finding
                with lock:
                    errors.append((eid, repr(e)))
                continue
            with lock:
                replies[eid] = (r.status_code, body, retry_after_ok(r), r.headers.get("X-Turnout-Path"))
            # pace: N submissions spread over the stall cycles
            time.sleep(max(0.0, CLIENTS * STALLS * EVERY_S / N - 0.004))
        s.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    stalls = 0
    try:
        while stalls < STALLS and any(t.is_alive() for t in threads):
            time.sleep(EVERY_S - STALL_S)
            if fault == "stall":
                os.kill(redis_server.mp.pid, signal.SIGSTOP)
                time.sleep(STALL_S)
                os.kill(redis_server.mp.pid, signal.SIGCONT)
            else:
                redis_server.kill()
                time.sleep(STALL_S)
                redis_server.start()
            stalls += 1
        for t in threads:
            t.join(120)
    finally:
        if redis_server.mp.running():
            os.kill(redis_server.mp.pid, signal.SIGCONT)
        stop.set()
    submit_s = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), "a client is stuck"
    assert stalls == STALLS, f"only {stalls} stalls happened while submitting"
    assert not errors, f"{len(errors)} requests failed outright: {errors[:5]}"
    assert len(replies) == N

    accepted = {e: b["path"] for e, (code, b, _, _) in replies.items() if code == 202}
    refused = {e: b for e, (code, b, ra, _) in replies.items() if code != 202}
    odd = [(e, b, ra) for e, (code, b, ra, _) in replies.items()
           if code != 202 and not (code == 503 and ra and b.get("error") in ("outcome_unknown", "eval_id_unchecked"))]
    assert not odd, f"{len(odd)} replies outside the contract: {odd[:5]}"
    told = [(e, b["path"], hp) for e, (code, b, _, hp) in replies.items() if code == 202 and b["path"] != hp]
    assert not told, f"X-Turnout-Path disagrees with the body: {told[:5]}"
    # (a restart refuses client eval_ids while Redis is away: the default policy)
    assert len(accepted) > N * (0.8 if fault == "stall" else 0.5), f"only {len(accepted)} of {N} accepted"

    r = redis_server.client()
    try:
        wrong_record = []
        for e, path in accepted.items():
            raw = r.get(f"turnout:route:{e}")
            rec = json.loads(raw) if raw else None
            if not rec or rec["path"] != path:
                wrong_record.append((e, path, rec))
        assert not wrong_record, f"{len(wrong_record)} route records disagree with the reply: {wrong_record[:5]}"
        for e in refused:
            raw = r.get(f"turnout:route:{e}")
            assert raw is None or json.loads(raw)["path"] not in ("new",), f"refused {e} has a record {raw}"
    finally:
        r.close()

    n_new = sum(1 for v in accepted.values() if v == "new")
    n_legacy = len(accepted) - n_new

    def drained():
        a, b = runs(new_ex, tag), runs(legacy_executor, tag)
        return (a, b) if len(a) >= n_new and len(b) >= n_legacy else None
    ran_new, ran_legacy = wait_until(drained, DRAIN_S, f"{n_new} new and {n_legacy} legacy executions",
                                     [w.mp, p.mp, legacyd.mp], interval=0.5)
    time.sleep(1.0)   # anything that would run twice has had its chance
    ran_new, ran_legacy = runs(new_ex, tag), runs(legacy_executor, tag)

    problems = []
    for e, path in accepted.items():
        want_new, want_legacy = (1, 0) if path == "new" else (0, 1)
        got = (ran_new.get(e, 0), ran_legacy.get(e, 0))
        if got != (want_new, want_legacy):
            problems.append((e, path, got))
    assert not problems, (f"{len(problems)} accepted evals not executed exactly once on their path "
                          f"(eval, told, (new runs, legacy runs)): {problems[:10]}")
    ran_refused = [e for e in refused if e in ran_new or e in ran_legacy]
    assert not ran_refused, f"refused evals were executed: {ran_refused[:10]}"

    m = p.metrics()
    settled = msum(m, "turnout_new_path_outcome_checks_total")
    if fault == "stall":
        assert settled > 0, f"no lost reply was settled: the stalls did not hit in-flight submissions\n{p.log(30)}"
    assert msum(m, "turnout_in_flight_requests") == 0
    assert mval(m, "turnout_rejected_requests_total", reason="outcome_unknown") == \
        sum(1 for b in refused.values() if b.get("error") == "outcome_unknown")
    assert p.mp.running() and w.running()
    print(f"\nredis {fault}s: {N} submitted in {submit_s:.1f}s through {STALLS} {fault}s of {STALL_S}s; accepted "
          f"{len(accepted)} (new {n_new}, legacy {n_legacy}), refused {len(refused)} "
          f"({sorted(set(b.get('error') for b in refused.values()))}); lost replies settled {settled:.0f} "
          f"({ {k: mval(m, 'turnout_new_path_outcome_checks_total', result=k) for k in ('queued', 'not_queued', 'unknown')} }); "
          f"every accepted eval ran once on its path")
