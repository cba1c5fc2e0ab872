"""Fixtures for the Celery interop tests: the integration fixtures (real
redis-server, turnout-legacyd, turnout-proxy) plus a real Celery worker."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

from fixtures_turnout import (  # noqa: E402,F401  (fixtures and hooks are found by name)
    executor_factory,
    legacyd,
    proxy_factory,
    pytest_runtest_makereport,
    redis_server,
    worker_factory,
)
