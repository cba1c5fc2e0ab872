"""Fixtures for the fault and load tests (issue 7): the integration fixtures
(real redis-server, turnout-legacyd, turnout-proxy, turnout-executor,
turnout-worker; see tests/integration/fixtures_turnout.py) made available
here, plus faultlib.py's helpers. TURNOUT_SOAK=1 switches every test to its
long form; the default short form of the whole directory stays well under
90 s on two cores."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.path.insert(0, HERE)

from fixtures_turnout import (  # noqa: E402,F401  (fixtures and hooks are found by name)
    executor_factory,
    legacyd,
    proxy_factory,
    pytest_runtest_makereport,
    redis_server,
    worker_factory,
)

from faultlib import raw_server  # noqa: E402,F401  (a fixture)
