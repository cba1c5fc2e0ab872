"""Configuration that cannot be mistyped, the same for all four binaries: a
misspelt turnout variable is a warning naming the closest setting in the
environment, and an error (start refused, reload refused) in
TURNOUT_ENV_FILE; a setting of another binary or a name of the project's own
tooling is never reported; booleans take one set of words everywhere.  Real
binaries, real redis-server and legacyd for the running proxy."""
import pathlib
import re
import signal
import subprocess

import pytest

from fixtures_turnout import base_env, binary, free_port, mval, wait_until

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
BINARIES = ["turnout-proxy", "turnout-worker", "turnout-legacyd", "turnout-executor"]
NOT_OURS = "is not a turnout setting"


def run(name, env_extra=None, args=("--check-config",), timeout=10):
    env = base_env()
    env.update(env_extra or {})
    return subprocess.run([binary(name), *args], env=env, capture_output=True, text=True, timeout=timeout)


def table(name):
    """{variable: default} of a binary's --print-config-markdown."""
    out = run(name, args=("--print-config-markdown",)).stdout
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (?:`([^`]*)`|\(empty\)) \|", out, re.M)
    assert rows, out
    return {k: v for k, v in rows}


# A typo of one of each binary's own settings, and the name it should suggest.
TYPOS = {
    "turnout-proxy": ("CELERY_PERCENTGE", "0.5", "CELERY_PERCENTAGE"),
    "turnout-worker": ("CELERY_CONCURENCY", "4", "CELERY_CONCURRENCY"),
    "turnout-legacyd": ("LEGACYD_MAX_QUEU", "10", "LEGACYD_MAX_QUEUE"),
    "turnout-executor": ("EXECUTOR_MEMORY_MBB", "64", "EXECUTOR_MEMORY_MB"),
}


@pytest.mark.parametrize("name", BINARIES)
def test_check_config_warns_on_a_misspelt_variable_and_names_the_closest(name):
    typo, value, meant = TYPOS[name]
    r = run(name, {typo: value})
    assert r.returncode == 0, f"{name}: a warning must not change the exit status\n{r.stdout}{r.stderr}"
    assert "configuration OK" in r.stdout, r.stdout + r.stderr
    assert f"{typo} is not a turnout setting; did you mean {meant}?" in r.stderr, r.stderr
    assert "warning" in r.stderr, r.stderr
    # a real problem next to it still fails as before, and both are said
    bad = {"turnout-proxy": ("CELERY_PERCENTAGE", "50"), "turnout-worker": ("CELERY_CONCURRENCY", "0"),
           "turnout-legacyd": ("LEGACYD_MAX_QUEUE", "0"), "turnout-executor": ("EXECUTOR_MEMORY_MB", "1")}[name]
    r = run(name, {typo: value, bad[0]: bad[1]})
    assert r.returncode == 2 and f"did you mean {meant}?" in r.stderr and f'{bad[0]}="{bad[1]}"' in r.stderr, \
        r.stdout + r.stderr


def test_the_proxy_at_start_up_warns_too(proxy_factory):
    p = proxy_factory(CELERY_PERCENTGE="0.5")
    wait_until(lambda: "CELERY_PERCENTGE is not a turnout setting; did you mean CELERY_PERCENTAGE?"
               in p.mp.log_path.read_text(errors="replace"), 5, "the start-up warning", [p.mp])
    assert p.get("/healthz").status_code == 200


@pytest.mark.parametrize("name", BINARIES)
def test_every_binarys_settings_are_known_to_all_four(name):
    # One environment holding every setting of every binary (each with its
    # default, so valid): nothing in it is unknown to any of them.
    env = {}
    for other in BINARIES:
        env.update({k: v for k, v in table(other).items() if v})
    env["WORKER_NAME"] = "w1"  # another binary's setting, as in a shared env file
    r = run(name, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert NOT_OURS not in r.stderr, f"{name} reports a setting of a turnout binary as unknown:\n{r.stderr}"


def test_project_names_and_other_teams_names_are_not_reported():
    # The names the tests, scripts, demo and benchmarks read from the
    # environment (found in their sources, so a new one is covered too) ...
    found = set()
    for path in [*REPO.glob("scripts/*"), *REPO.glob("tests/**/*.py"), *REPO.glob("bench/**/*.py"),
                 REPO / "Makefile"]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        found |= set(re.findall(r"""environ(?:\.get)?[\[(]\s*["']([A-Z][A-Z0-9_]+)["']""", text))
        found |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):?[-=]", text))
    assert "TURNOUT_BIN_DIR" in found and "DEMO_PROXY_PORT" in found, sorted(found)
    env = {k: "1" for k in found if k not in ("PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "USER")}
    # ... and other teams' names, with or without a word of ours inside
    env.update({"MYAPP_DEBUG": "1", "TIME_STYLE": "iso", "APP_CELERY_X": "1", "DATABASE_URL": "x"})
    for name in BINARIES:
        r = run(name, env)
        assert NOT_OURS not in r.stderr, f"{name}:\n{r.stderr}"


@pytest.mark.parametrize("name", BINARIES)
def test_start_refused_with_a_misspelt_name_in_the_env_file(name, tmp_path):
    envf = tmp_path / "turnout.env"
    envf.write_text("# shared by every binary\nCELERY_ENABLED=true\nFORCE_LEGACY_QUEU=true\n")
    listen = f"127.0.0.1:{free_port()}"
    env = {"TURNOUT_ENV_FILE": str(envf), "PROXY_LISTEN": listen, "WORKER_METRICS_LISTEN": listen,
           "LEGACYD_LISTEN": listen, "EXECUTOR_LISTEN": listen}
    for args in ((), ("--check-config",)):
        r = run(name, env, args=args)
        assert r.returncode == 2, f"{name} {args}: rc={r.returncode}\n{r.stdout}{r.stderr}"
        assert f"{envf} line 3: FORCE_LEGACY_QUEU is not a turnout setting; did you mean FORCE_LEGACY_QUEUE?" \
            in r.stderr, r.stderr


def test_start_up_takes_the_env_file_and_its_lenient_booleans(proxy_factory, tmp_path):
    # the file is read at start-up as on SIGHUP: a restart keeps its kill switch
    envf = tmp_path / "turnout.env"
    envf.write_text("CELERY_ENABLED=YES\nCELERY_PERCENTAGE=1\nFORCE_LEGACY_QUEUE=on\n")
    p = proxy_factory(TURNOUT_ENV_FILE=str(envf), CELERY_ENABLED=None, CELERY_PERCENTAGE=None)
    s = p.get("/admin/rollout").json()
    assert s["force_legacy"] is True and s["force_legacy_source"] == "env" and s["enabled"] is True, s
    assert mval(p.metrics(), "turnout_force_legacy") == 1


def test_sighup_refuses_a_misspelt_kill_switch_and_takes_the_right_one(proxy_factory, tmp_path):
    envf = tmp_path / "turnout.env"
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\n")
    p = proxy_factory(TURNOUT_ENV_FILE=str(envf), CELERY_ENABLED=True, CELERY_PERCENTAGE=1)

    def state():
        r = p.get("/admin/rollout")
        assert r.status_code == 200, r.text
        return r.json()

    def log():
        return p.mp.log_path.read_text(errors="replace")

    assert state()["force_legacy"] is False
    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=0.5\nFORCE_LEGACY_QUEU=true\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "FORCE_LEGACY_QUEU is not a turnout setting" in log(), 5, "the refused reload", [p.mp])
    line = [ln for ln in log().splitlines() if "FORCE_LEGACY_QUEU is not" in ln][-1]
    assert "reload failed, keeping the old settings" in line, line
    assert "line 3" in line and "did you mean FORCE_LEGACY_QUEUE?" in line, line
    s = state()
    assert s["force_legacy"] is False and s["percentage"] == 1.0, f"the old settings must stay: {s}"
    assert mval(p.metrics(), "turnout_force_legacy") == 0

    envf.write_text("CELERY_ENABLED=true\nCELERY_PERCENTAGE=1\nFORCE_LEGACY_QUEUE=yes\n")
    p.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: state()["force_legacy"] is True, 5, "the kill switch by reload", [p.mp])
    assert mval(p.metrics(), "turnout_force_legacy") == 1
    r = p.submit(eval_id="after-kill")
    assert r.status_code == 202 and r.json()["path"] == "legacy", r.text


def test_legacyd_reload_with_a_misspelt_name_is_refused(tmp_path):
    from legacyd_helpers import Legacyd

    envf = tmp_path / "legacyd.env"
    envf.write_text("LEGACYD_MAX_QUEUE=1\n")
    with Legacyd(tmp_path, TURNOUT_ENV_FILE=str(envf)) as d:
        assert d.submit("h1").status_code in (200, 201)
        envf.write_text("LEGACYD_MAX_QUEUE=1\nLEGACYD_RESULT_TTL=5\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.logs(), 5, "the refused reload", [])
        assert "line 2: LEGACYD_RESULT_TTL is not a turnout setting; did you mean LEGACYD_RESULT_TTL_S?" \
            in d.logs(), d.logs()
        assert d.submit("h2").status_code == 503  # still the old queue limit of 1
