"""Celery app for the interop tests: a real Celery 5.2 worker runs the
messages turnout-proxy enqueued. Started by the tests as
`/usr/bin/python3 -m celery -A tasks_eval worker ...` with BROKER and BACKEND
in the environment."""
import os

import redis
from celery import Celery

app = Celery("tasks", broker=os.environ["BROKER"], backend=os.environ["BACKEND"])
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_redis = None


def _order_client():
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["BACKEND"])
    return _redis


# No **kwargs: a message carrying any other keyword fails with TypeError,
# which the tests would see as FAILURE.
@app.task(name="tasks.evaluate_code")
def evaluate_code(eval_id, code, language, timeout=30, engine="docker", priority=None):
    _order_client().rpush("interop:order", eval_id)
    return {
        "eval_id": eval_id,
        "status": "completed",
        "output": f"ran {len(code)} bytes",
        "language": language,
        "timeout": timeout,
        "engine": engine,
    }
