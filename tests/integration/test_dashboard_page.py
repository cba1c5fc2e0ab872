"""The built-in page (issue 6): GET /dashboard is one self-contained HTML
document (no external assets), GET /api/stats the JSON it draws, and a
real headless Chromium (Debian's chromium + chromium-driver, driven by
Debian's python3-selenium) loads the page against a running stack, waits
for the numbers of both paths, is refused a control without the token,
and acts with it.  A screenshot is kept in build/test-artifacts/."""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from fixtures_turnout import Legacyd, msum, wait_until

TOKEN = "page-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def stack(redis_server, executor_factory, worker_factory, proxy_factory, tmp_path):
    ex = executor_factory(EXECUTOR_MAX_CONCURRENT=6)
    leg = Legacyd(tmp_path / "legacyd", env={"EXECUTOR_SERVICE_URL": ex.url}).start()
    worker_factory(ex, CELERY_CONCURRENCY=4)
    p = proxy_factory(CELERY_ENABLED=True, CELERY_PERCENTAGE=0.5, LEGACY_QUEUE_URL=leg.url, ADMIN_TOKEN=TOKEN,
                      COMPLETION_POLL_S=1, ROLLOUT_STEPS="0.5,1.0")
    yield p
    err = leg.cleanup()
    assert err is None, err


def load(p, n=24):
    paths = {}
    for i in range(n):
        code = "raise SystemExit(3)" if i % 8 == 7 else f"print({i})"
        r = p.submit(eval_id=f"page-{i}", code=code)
        assert r.status_code == 202, r.text
        paths[f"page-{i}"] = r.json()["path"]
    want = {path: sum(1 for v in paths.values() if v == path) for path in ("legacy", "new")}
    wait_until(lambda: all(msum(p.metrics(), "turnout_evals_completed_total", path=k) == v for k, v in want.items()),
               40, f"completions {want}", [p.mp])
    return want


def test_page_is_self_contained_and_stats_document_their_shape(stack):
    p = stack
    r = p.get("/dashboard")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html"), r.headers
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    html = r.text
    assert len(html) < 64 * 1024, "the page stays small"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "no external assets"
    assert "https://" not in html and "http://" not in html
    want = load(p)
    s = p.get("/api/stats").json()
    assert set(s) >= {"at", "step_s", "paths", "series", "queue", "rollout", "canary", "shadow", "history", "redis"}
    for path in ("legacy", "new"):
        ps = s["paths"][path]
        assert set(ps) >= {"request_rate", "error_ratio", "p50", "p95", "p99", "completion_rate",
                           "completion_error_ratio", "completion_p50", "completion_p95", "completion_p99",
                           "completed", "unfinished", "requests_total", "system_error_ratio",
                           "program_failure_ratio", "system_errors", "verdicts", "path_outcomes"}, ps
        assert sum(ps["completed"].values()) == want[path], ps
        assert sum(ps["verdicts"].values()) == want[path] and ps["path_outcomes"]["ok"] == want[path], ps
        assert sum(ps["system_errors"].values()) == 0 and ps["system_error_ratio"] == 0, ps
        assert ps["requests_total"] == want[path] and ps["request_rate"] > 0, ps
        assert 0 < ps["p99"] < 5 and 0 < ps["completion_p99"] < 60, ps
    assert s["queue"]["depth"] == {"0": 0, "3": 0, "6": 0, "9": 0} and s["queue"]["dlq_newest"] == []
    assert s["rollout"]["percentage"] == 0.5 and s["canary"]["status"] == "idle" and s["redis"] == "up"
    assert len(s["series"]) >= 1 and set(s["series"][-1]) == {"t", "legacy", "new"}
    assert p.post("/api/stats").status_code == 405
    # the page and its polling are not counted as API traffic
    assert msum(p.metrics(), "turnout_requests_total", route="passthrough") == 0


def browser(tmp_path):
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert os.access(tool, os.X_OK), f"{tool} is missing: run make deps (Debian chromium, chromium-driver)"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:  # pragma: no cover - a broken install must fail, not skip
        pytest.fail(f"python3-selenium is missing ({e}): run make deps", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1900", f"--user-data-dir={tmp_path / 'chromium'}", "--no-first-run"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_headless_chromium_shows_both_paths_and_guards_the_controls(stack, tmp_path):
    from selenium.webdriver.common.by import By
    p = stack
    want = load(p)
    d = browser(tmp_path)
    try:
        d.set_page_load_timeout(20)
        d.get(p.url("/dashboard"))
        text = lambda i: d.find_element(By.ID, i).text  # noqa: E731
        wait_until(lambda: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1", 15,
                   "the page polled /api/stats")
        def shown(path):
            try:
                return sum(int(text(f"{path}-v-{o}")) for o in ("completed", "failed", "timeout", "killed"))
            except ValueError:  # not drawn yet ("–")
                return -1
        wait_until(lambda: shown("legacy") == want["legacy"] and shown("new") == want["new"], 15,
                   f"completions {want} on the page")
        wait_until(lambda: int(d.find_element(By.ID, "chart-rps").get_attribute("data-points") or 0) > 0, 15,
                   "a chart drawn")
        assert text("ro-percentage") == "50.0 %" and text("ro-force") == "off"
        assert text("legacy-rps") not in ("", "–") and text("new-rps") not in ("", "–")
        # the failing programs are verdicts, not errors of either path
        assert int(text("legacy-v-failed")) + int(text("new-v-failed")) == 3
        assert int(text("legacy-s-executor")) == 0 and int(text("new-s-executor")) == 0
        assert text("legacy-sys") == "0.0 %" and text("new-sys") == "0.0 %", (text("legacy-sys"), text("new-sys"))
        assert text("legacy-pf") not in ("", "–") and text("new-pf") not in ("", "–")
        # a control without the token: asked to confirm, then refused by the proxy
        d.find_element(By.ID, "pct").send_keys("100")
        d.find_element(By.ID, "apply-pct").click()
        assert d.find_element(By.ID, "confirm").is_displayed()
        d.find_element(By.ID, "confirm-yes").click()
        wait_until(lambda: "refused (401" in text("notice"), 10, "refusal shown")
        assert p.get("/admin/rollout").json()["version"] == 0, "nothing changed"
        # cancelling the confirmation does nothing at all
        d.find_element(By.ID, "kill-on").click()
        d.find_element(By.ID, "confirm-no").click()
        assert not d.find_element(By.ID, "confirm").is_displayed()
        # with the token: the kill switch, shown on the page and in force
        d.find_element(By.ID, "token").send_keys(TOKEN)
        d.find_element(By.ID, "kill-on").click()
        d.find_element(By.ID, "confirm-yes").click()
        wait_until(lambda: text("ro-force").startswith("ON"), 10, "kill switch shown")
        ro = p.get("/admin/rollout").json()
        assert ro["force_legacy"] is True and ro["reason"] == "dashboard kill switch", ro
        wait_until(lambda: "dashboard kill switch" in text("history"), 10, "history shown")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        shutil.copy(shot, tmp_path / "dashboard.png")
        print(f"screenshot: {shot}")
    finally:
        d.quit()
