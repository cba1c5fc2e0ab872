"""Dashboards and Prometheus rules (issue 6): dashboards/grafana/turnout.json,
dashboards/prometheus/turnout.rules.yml and its promtool unit tests.

- promtool (Debian's /usr/bin/promtool) checks the rules and runs their unit
  tests; a missing promtool fails, never skips.
- The Grafana dashboard's shape: datasource variable, ids, targets.
- A real Prometheus server (/usr/bin/prometheus) scrapes a real stack
  (redis-server, turnout-executor, turnout-legacyd, turnout-worker,
  turnout-proxy at 50/50) under a short load, loads the rules, and every
  dashboard expression and every recording rule must return data; every
  alert expression must evaluate and every rule must be healthy.
Everything on loopback, every wait bounded."""
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fixtures_turnout import (
    REPO, Legacyd, ManagedProcess, base_env, free_port, http_session, wait_http, wait_until,
)

DASH_DIR = REPO / "dashboards"
GRAFANA_JSON = DASH_DIR / "grafana" / "turnout.json"
PROM_DIR = DASH_DIR / "prometheus"
RULES = PROM_DIR / "turnout.rules.yml"
RULE_TESTS = PROM_DIR / "turnout.rules.test.yml"

DS = {"type": "prometheus", "uid": "${datasource}"}
ALERTS = {"NewPathErrorRatioAboveLegacy", "NewPathProgramFailuresAboveLegacy", "QueueDepthGrowing",
          "DLQGrowing", "WorkerDown", "KillSwitchOnTooLong"}
# every metric the dashboard must show (README "Metrics", "The worker"; DESIGN §9)
DASHBOARD_METRICS = [
    "turnout_requests_total", "turnout_request_duration_seconds_bucket",
    "turnout_evals_completed_total", "turnout_eval_completion_seconds_bucket",
    "turnout_routing_decisions_total", "turnout_rollout_percentage", "turnout_celery_enabled",
    "turnout_force_legacy", "turnout_rollout_step", "turnout_rollout_gate_checks_total",
    "turnout_rollout_rollbacks_total", "turnout_shadow_comparisons_total", "turnout_queue_depth",
    "turnout_evals_unfinished", "turnout_dlq_size", "turnout_upstream_errors_total",
    "turnout_worker_tasks_total", "turnout_worker_in_flight",
    "turnout_worker_task_duration_seconds_bucket", "turnout_worker_retries_total",
    "turnout_worker_maintenance_runs_total", "turnout_worker_executor_requests_total",
]
# Grafana's built-in variables, replaced by a concrete range before querying
GRAFANA_VARS = [("${__rate_interval}", "1m"), ("$__rate_interval", "1m"),
                ("${__interval}", "1m"), ("$__interval", "1m"),
                ("${__range}", "1m"), ("$__range", "1m")]

PROM_TIMEOUT_S = 10.0


def need(name):
    """Debian's /usr/bin/<name>, else one on PATH; fails (never skips) when absent."""
    import shutil
    p = Path("/usr/bin") / name
    if p.is_file():
        return str(p)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install -y prometheus (or `make deps`)",
                    pytrace=False)
    return found


def load_yaml(path):
    try:
        import yaml
    except ImportError:
        pytest.fail("python3-yaml is missing (it comes with python3-celery): "
                    "apt-get install -y python3-yaml", pytrace=False)
    with open(path) as f:
        return yaml.safe_load(f)


def rule_groups():
    doc = load_yaml(RULES)
    return {g["name"]: g["rules"] for g in doc["groups"]}


def all_panels(dash):
    """Every panel, rows' nested panels included."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])
    return out


def dashboard_exprs():
    dash = json.loads(GRAFANA_JSON.read_text())
    return [(p["title"], t["expr"]) for p in all_panels(dash) for t in p.get("targets") or []]


def concrete(expr):
    for var, value in GRAFANA_VARS:
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a Grafana variable is left in {expr!r}"
    return expr


def promtool(*args):
    return subprocess.run([need("promtool"), *args], cwd=PROM_DIR, capture_output=True,
                          text=True, timeout=60)


# --------------------------------------------------------------- promtool

def test_promtool_check_rules():
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, f"promtool check rules -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "SUCCESS" in r.stdout, r.stdout


def test_promtool_rule_unit_tests():
    r = promtool("test", "rules", RULE_TESTS.name)
    assert r.returncode == 0, f"promtool test rules -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "SUCCESS" in r.stdout, r.stdout


def test_rules_and_their_unit_tests_cover_every_alert():
    groups = rule_groups()
    assert set(groups) == {"turnout-recording", "turnout-alerts"}, set(groups)
    assert groups["turnout-recording"] and all("record" in r for r in groups["turnout-recording"])
    alerts = {r["alert"]: r for r in groups["turnout-alerts"]}
    assert set(alerts) == ALERTS, set(alerts)
    for name, a in alerts.items():
        assert a["labels"].get("severity") in ("critical", "warning", "info"), (name, a["labels"])
        for k in ("summary", "description", "runbook"):
            assert a["annotations"].get(k, "").strip(), f"{name}: annotation {k} missing"
        rb = a["annotations"]["runbook"]
        for must in ("/admin/rollout", "force_legacy", "FORCE_LEGACY_QUEUE", "Migration runbook"):
            assert must in rb, f"{name}: runbook does not mention {must}"
    tests = load_yaml(RULE_TESTS)
    assert tests["rule_files"] == [RULES.name], tests["rule_files"]
    firing = {name: 0 for name in ALERTS}
    quiet = {name: 0 for name in ALERTS}
    for case in tests["tests"]:
        assert case.get("input_series"), case.get("name")
        for t in case.get("alert_rule_test") or []:
            (firing if t.get("exp_alerts") else quiet)[t["alertname"]] += 1
    assert all(firing.values()), f"alerts without a firing case: {firing}"
    assert all(quiet.values()), f"alerts without a non-firing case: {quiet}"


# --------------------------------------------------------------- Grafana JSON

def test_grafana_dashboard_shape():
    dash = json.loads(GRAFANA_JSON.read_text())
    assert dash["schemaVersion"] >= 36, dash["schemaVersion"]
    assert dash.get("uid") and dash.get("title"), (dash.get("uid"), dash.get("title"))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None, f"no datasource variable: {list(variables)}"
    assert ds["type"] == "datasource" and ds["query"] == "prometheus", ds
    panels = all_panels(dash)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    n_targets = 0
    for p in panels:
        assert p.get("title") and p.get("gridPos"), p.get("id")
        if p["type"] == "row":
            continue
        assert p.get("datasource") == DS, (p["title"], p.get("datasource"))
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), (p["title"], ref_ids)
        for t in p["targets"]:
            n_targets += 1
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), (p["title"], t)
            assert t.get("datasource") == DS, (p["title"], t.get("datasource"))
            assert "datasource" not in t["expr"], (p["title"], t["expr"])
            concrete(t["expr"])
    assert n_targets >= 20, n_targets
    exprs = " ".join(e for _, e in dashboard_exprs())
    missing = [m for m in DASHBOARD_METRICS if m not in exprs]
    assert not missing, f"metrics not on the dashboard: {missing}"


# --------------------------------------------------------------- real Prometheus

class PrometheusServer:
    """/usr/bin/prometheus on a free loopback port with its own temp dir."""

    def __init__(self, workdir, scrape, rule_files):
        self.dir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.scrape = scrape            # {job name: "host:port"}
        self.rule_files = [str(f) for f in rule_files]
        self.session = http_session()
        self.mp = None

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {   # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": self.rule_files,
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in self.scrape.items()],
        }
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(json.dumps(config, indent=2))
        self.mp = ManagedProcess(
            f"prometheus:{self.port}",
            [need("prometheus"), f"--config.file={cfg}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            base_env(), self.dir / "prometheus.log", cwd=str(self.dir)).start()
        wait_http(self.url + "/-/ready", 20, [self.mp])
        return self

    def api(self, path, **params):
        r = self.session.get(self.url + path, params=params, timeout=PROM_TIMEOUT_S)
        try:
            return r.json()
        except ValueError:
            return {"status": f"http {r.status_code}", "error": r.text[:500]}

    def query(self, expr):
        return self.api("/api/v1/query", query=expr)

    def value(self, expr):
        """The single value of a scalar-ish query, None when empty."""
        body = self.query(expr)
        assert body["status"] == "success", (expr, body)
        res = body["data"]["result"]
        return float(res[0]["value"][1]) if res else None

    def stop(self):
        if self.mp is None:
            return None
        rc = self.mp.stop(signal.SIGTERM, 10)   # SIGKILL after 10 s
        self.mp.forget()
        self.session.close()
        return rc


@pytest.fixture
def prometheus_factory(tmp_path):
    made = []

    def make(scrape, rule_files):
        prom = PrometheusServer(tmp_path / f"prometheus{len(made)}", scrape, rule_files)
        made.append(prom)
        return prom.start()

    yield make
    for prom in made:
        prom.stop()


def hostport(base_url):
    return base_url.split("://", 1)[1].rstrip("/")


def test_prometheus_evaluates_every_expression(redis_server, executor_factory, worker_factory,
                                               proxy_factory, prometheus_factory, tmp_path):
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=4)
    leg = Legacyd(tmp_path / "legacy-run", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
    try:
        w = worker_factory(ex)
        p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, LEGACY_QUEUE_URL=leg.url,
                          COMPLETION_POLL_S=1)
        prom = prometheus_factory({"turnout-proxy": hostport(p.base),
                                   "turnout-worker": hostport(w.base)}, [RULES])
        procs = [prom.mp, p.mp, w.mp, leg.mp, ex.mp]
        wait_until(lambda: prom.value('count(up{job=~"turnout-proxy|turnout-worker"} == 1)') == 2,
                   15, "both turnout targets scraped and up", procs)

        # a short bounded load: 60 good submissions and 6 failing ones over ~10 s
        paths = {}
        t0 = time.monotonic()
        for i in range(66):
            code = "raise SystemExit(3)" if i % 11 == 10 else "print(1)"
            resp = p.submit(eval_id=f"dash-{i}", code=code)
            assert resp.status_code == 202, f"{resp.status_code} {resp.text}\n{p.log(30)}"
            paths[f"dash-{i}"] = resp.json()["path"]
            time.sleep(max(0.0, t0 + (i + 1) * 0.15 - time.monotonic()))
        assert set(paths.values()) == {"legacy", "new"}, paths

        # every eval finished, and Prometheus has seen it
        wait_until(lambda: prom.value("sum(turnout_evals_completed_total)") == len(paths),
                   25, f"{len(paths)} completions scraped by Prometheus", procs)

        # every dashboard expression and every recording rule returns data
        groups = rule_groups()
        must_have_data = [(f"panel {title!r}", concrete(e)) for title, e in dashboard_exprs()]
        for r in groups["turnout-recording"]:
            must_have_data.append((f"recording rule {r['record']} (expr)", r["expr"]))
            must_have_data.append((f"recording rule {r['record']} (recorded series)", r["record"]))
        pending = dict.fromkeys(range(len(must_have_data)))
        last = {}
        deadline = time.monotonic() + 15
        while pending:
            for i in list(pending):
                what, expr = must_have_data[i]
                body = prom.query(expr)
                assert body.get("status") == "success", f"{what}: {expr}\n-> {body}"
                last[i] = body
                if body["data"]["result"]:
                    del pending[i]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1)
        empty = [f"{must_have_data[i][0]}: {must_have_data[i][1]}\n  -> {last[i]['data']}"
                 for i in pending]
        assert not empty, "expressions without data:\n" + "\n".join(empty)

        # alert expressions evaluate (data or not)
        for r in groups["turnout-alerts"]:
            body = prom.query(r["expr"])
            assert body.get("status") == "success", f"alert {r['alert']}: {r['expr']}\n-> {body}"

        # Prometheus loaded every rule of the file and evaluates each without error
        want = {(g, r.get("record") or r.get("alert")) for g, rules in groups.items() for r in rules}

        def all_healthy():
            body = prom.api("/api/v1/rules")
            assert body["status"] == "success", body
            got = {(g["name"], r["name"]): r for g in body["data"]["groups"] for r in g["rules"]}
            assert set(got) == want, f"rules loaded {sorted(got)} != file {sorted(want)}"
            bad = {k: (r["health"], r.get("lastError")) for k, r in got.items() if r["health"] == "err"}
            assert not bad, f"rules evaluating with errors: {bad}"
            return all(r["health"] == "ok" for r in got.values())
        wait_until(all_healthy, 10, "every rule health ok", procs)

        # the numbers mean what the panels say
        per_path = {s["metric"]["path"]: float(s["value"][1]) for s in prom.query(
            'sum by (path) (rate(turnout_requests_total{route="submit",code="202"}[1m]))')["data"]["result"]}
        assert per_path.get("legacy", 0) > 0 and per_path.get("new", 0) > 0, per_path
        ratios = [float(s["value"][1]) for s in prom.query(
            "path:turnout_evals_completed_errors:ratio_rate5m")["data"]["result"]]
        assert any(0 < v < 1 for v in ratios), f"failed evals not in the error ratio: {ratios}"
        jobs = {s["metric"].get("exported_job") for s in prom.query(concrete(next(
            e for t, e in dashboard_exprs() if "maintenance" in t.lower())))["data"]["result"]}
        assert "schedule" in jobs, f"maintenance panel does not split by the worker's job label: {jobs}"
        assert prom.value('max(turnout_rollout_percentage)') == 0.5
        assert prom.value('max(turnout_force_legacy)') == 0
    finally:
        err = leg.cleanup()
    assert err is None, err
