"""Redis down under load (issue 7, fault tests). A steady, bounded load (a
few client threads) against a proxy routing everything to the new path;
Redis is stopped for ~3 s and started again on the same port. Checks, with
FALLBACK_TO_LEGACY on and off:

- the proxy never crashes and answers every request;
- during the outage every reply is 202 on the legacy path (reason fallback)
  with fallback on, or 503 no_path_available JSON + Retry-After with it off;
  never a 202 on the new path while Redis is away; a submission in flight
  as Redis went (its reply lost) is settled, and when Redis does not come
  back in time it gets 503 outcome_unknown (at most one per client per
  outage), never a second path;
- after Redis is back the new path takes submissions again within 1 s
  (measured from the moment Redis answers PING), and only the new path from
  then on;
- the proxy's descriptors (its bounded backend pool aside) and RSS do not
  grow beyond a small margin between after the warm-up and after recovery;
- the metrics count what the clients saw.
The long form (TURNOUT_SOAK=1) repeats the outage several times under a
longer load."""
import threading
import time

import pytest
from faultlib import own_fds, proc_rss_kib, retry_after_ok, scale, wait_fds
from fixtures_turnout import http_session, msum, mval

THREADS = 4
RECOVERY_S = 1.0
RSS_MARGIN_KIB = scale(6 * 1024, 12 * 1024)
FD_SLACK = 3


class Load:
    """THREADS clients submitting in a loop (bounded by max_requests) until
    stop(); every reply is kept as (sent, received, status, path, error,
    retry_after_ok, content_type)."""

    def __init__(self, p, max_requests, pause=0.004):
        self.p = p
        self.max_requests = max_requests
        self.pause = pause
        self.replies = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(THREADS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, k):
        s = http_session()
        try:
            while not self.stopping.is_set():
                with self.lock:
                    if len(self.replies) + len(self.errors) >= self.max_requests:
                        return
                t0 = time.monotonic()
                try:
                    # generated eval_ids: a client's own would be refused while
                    # Redis is away (it could be a resubmission; test_one_path.py)
                    r = s.post(self.p.url("/api/eval"), json={"code": "print(1)"}, timeout=10)
                except Exception as e:  # noqa: BLE001 - a failed request is a finding
                    with self.lock:
                        self.errors.append((t0, repr(e)))
                    continue
                t1 = time.monotonic()
                try:
                    body = r.json()
                except ValueError:
                    body = {}
                path = body.get("path") if r.status_code == 202 else None
                with self.lock:
                    self.replies.append((t0, t1, r.status_code, path, body.get("error"), retry_after_ok(r),
                                         r.headers.get("Content-Type", ""), body.get("reason")))
                if self.pause:
                    time.sleep(self.pause)
        finally:
            s.close()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(15)
        assert not any(t.is_alive() for t in self.threads), "a load thread is stuck"

    def between(self, a, b):
        """Replies to requests sent at or after a and answered before b."""
        with self.lock:
            return [x for x in self.replies if x[0] >= a and x[1] <= b]


def footprint(p):
    return own_fds(p.proc.pid, int(p.env["PROXY_LISTEN"].rpartition(":")[2])), proc_rss_kib(p.proc.pid)


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback_on", "fallback_off"])
def test_redis_outage_under_load(fallback, proxy_factory, redis_server, legacyd):
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=1, FALLBACK_TO_LEGACY=fallback)
    port = int(p.env["PROXY_LISTEN"].rpartition(":")[2])
    cycles = scale(1, 6)
    outage_s = 3.0
    after_s = scale(1.5, 4.0)
    load = Load(p, max_requests=scale(6000, 60000)).start()
    windows = []   # (stop begun, redis gone, restart begun, redis answering)
    try:
        time.sleep(1.5)   # warm-up: connections, pools and allocator settle
        fd0, rss0 = footprint(p)
        for _ in range(cycles):
            stopping = time.monotonic()
            redis_server.stop()          # SIGTERM, waits for the exit
            gone = time.monotonic()
            time.sleep(outage_s)
            assert p.mp.running(), f"the proxy died with Redis down\n{p.log()}"
            begin = time.monotonic()
            redis_server.start()         # same port, empty; returns once PING answers
            up = time.monotonic()
            windows.append((stopping, gone, begin, up))
            time.sleep(after_s)
        time.sleep(0.5)
    finally:
        load.stop()
    time.sleep(0.5)
    fd1 = wait_fds(p.proc.pid, port, fd0, FD_SLACK, timeout=10, procs=[p.mp])
    rss1 = proc_rss_kib(p.proc.pid)

    assert p.mp.running() and p.get("/healthz").status_code == 200, p.log()
    assert not load.errors, f"{len(load.errors)} requests failed outright: {load.errors[:5]}"
    replies = load.replies
    assert len(replies) > 200 * cycles, f"too little load: {len(replies)} replies"

    # every reply is one the contract allows
    bad = []
    unknown = []
    for t0, t1, code, path, err, ra, ctype, reason in replies:
        if code == 202 and path == "new":
            continue
        if code == 503 and err == "outcome_unknown" and ra and "json" in ctype:
            unknown.append(t0)   # in flight when Redis went: settled as unknown, sent nowhere else
            continue
        if fallback and code == 202 and path == "legacy" and reason == "fallback":
            continue
        if not fallback and code == 503 and err == "no_path_available" and ra and "json" in ctype:
            continue
        bad.append((round(t0, 3), code, path, err, ra, ctype, reason))
    assert not bad, f"{len(bad)} replies outside the contract (fallback={fallback}): {bad[:10]}"

    # only submissions in flight as Redis went away can end unknown
    for cycle, (stopping, gone, begin, up) in enumerate(windows):
        mine = [t for t in unknown if stopping - 3 <= t <= gone]
        assert len(mine) <= THREADS, f"outage {cycle + 1}: {len(mine)} outcome_unknown replies for {THREADS} clients"
    assert len(unknown) <= THREADS * len(windows), f"{len(unknown)} outcome_unknown replies"

    recoveries = []
    for cycle, (_, gone, begin, up) in enumerate(windows):
        during = load.between(gone, begin)
        assert len(during) >= 20, f"only {len(during)} replies while Redis was down"
        lied = [x for x in during if x[3] == "new"]
        assert not lied, f"{len(lied)} submissions accepted on the new path while Redis was down"
        # recovery: the first new-path acceptance after Redis answers again
        until = windows[cycle + 1][0] if cycle + 1 < len(windows) else float("inf")   # the next outage
        after = sorted(load.between(up, until), key=lambda x: x[1])
        first_new = next((x for x in after if x[3] == "new"), None)
        assert first_new is not None, f"no new-path submission within {after_s}s of Redis returning"
        took = first_new[1] - up
        recoveries.append(round(took, 3))
        assert took < RECOVERY_S, f"the new path took {took:.2f}s to resume after Redis returned"
        late = [x for x in after if x[0] >= up + RECOVERY_S and x[3] != "new"]
        assert not late, (f"outage {cycle + 1}/{len(windows)}: {len(late)} submissions still off the new path "
                          f"{RECOVERY_S}s after Redis returned (first new after {took:.2f}s; off-path ones "
                          f"sent {late[0][0] - up:.2f}..{late[-1][0] - up:.2f}s after; replies "
                          f"{sorted(set((x[2], x[3], x[4], x[7]) for x in late), key=str)})\n{p.log(40)}")

    m = p.metrics()
    n_legacy = sum(1 for x in replies if x[3] == "legacy")
    n_503 = sum(1 for x in replies if x[2] == 503 and x[4] != "outcome_unknown")
    n_new = sum(1 for x in replies if x[3] == "new")
    assert mval(m, "turnout_routing_decisions_total", path="new", reason="percentage") == n_new
    if fallback:
        assert n_legacy > 0 and n_503 == 0
        assert mval(m, "turnout_routing_decisions_total", path="legacy", reason="fallback") == n_legacy
        assert legacyd.status()["total_tasks"] == n_legacy
    else:
        assert n_503 > 0 and n_legacy == 0
        assert mval(m, "turnout_rejected_requests_total", reason="no_path") == n_503
        assert legacyd.status()["total_tasks"] == 0, "FALLBACK_TO_LEGACY=false but legacy got submissions"
    assert mval(m, "turnout_rejected_requests_total", reason="outcome_unknown") == len(unknown)
    assert msum(m, "turnout_upstream_errors_total", path="new") > 0, "the outage left no upstream error count"
    assert msum(m, "turnout_in_flight_requests") == 0

    print(f"\nredis outage (fallback={fallback}): {len(replies)} replies, new {n_new}, legacy {n_legacy}, "
          f"503 {n_503}, outcome unknown {len(unknown)}; new path back after {recoveries} s; fds {fd0} -> {fd1}; RSS {rss0} -> {rss1} KiB")
    assert fd1 <= fd0 + FD_SLACK, f"descriptors {fd0} -> {fd1}"
    assert rss1 - rss0 <= RSS_MARGIN_KIB, \
        f"RSS grew {rss0} -> {rss1} KiB (+{rss1 - rss0}) over {len(replies)} requests and {cycles} outage(s)"
