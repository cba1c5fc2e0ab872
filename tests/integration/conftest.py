"""Fixtures for the integration tests: real redis-server, real turnout-legacyd,
real turnout-proxy (see fixtures_turnout.py, shared with tests/interop)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures_turnout import (  # noqa: E402,F401  (fixtures and hooks are found by name)
    executor_factory,
    legacyd,
    proxy_factory,
    pytest_runtest_makereport,
    redis_server,
    worker_factory,
)
