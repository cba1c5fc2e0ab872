"""Helpers for the tests of the legacy side's RQ backend (LEGACY_BACKEND=rq):
a real `rq worker` process (RQ 1.13, Debian's python3-rq under
/usr/bin/python3) running tasks.evaluate_code from legacyd/rq/tasks.py against a
turnout-executor, and small wrappers around rq itself to enqueue a job the
way Queue.enqueue does and to read a job back.

Processes are started and stopped as fixtures_turnout does it: a log file
per process, stopped by pid (SIGTERM, wait, then SIGKILL of its process
group, which holds the work horse), every wait bounded.
"""
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import redis

from fixtures_turnout import ManagedProcess, WAIT_S, base_env, wait_until

PYTHON = "/usr/bin/python3"          # the python with python3-rq
TASKS_SRC = Path(__file__).resolve().parents[2] / "legacyd" / "rq" / "tasks.py"
QUEUES = ("high", "default", "low")  # LEGACY_RQ_QUEUES default
FUNCTION = "tasks.evaluate_code"     # LEGACY_RQ_FUNCTION default
JSON_SERIALIZER = "rq.serializers.JSONSerializer"
SERIALIZERS = {"pickle": None, "json": JSON_SERIALIZER}   # LEGACY_RQ_SERIALIZER -> rq's
RQ_TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")   # %Y-%m-%dT%H:%M:%S.%fZ

_SEQ = [0]


def serializer_of(name):
    """rq's serializer object for a LEGACY_RQ_SERIALIZER value (pickle|json)."""
    from rq.serializers import resolve_serializer
    return resolve_serializer(SERIALIZERS[name])


def rq_url(server, db=0):
    """redis://127.0.0.1:<port>/<db> of a fixtures_turnout.RedisServer."""
    return f"redis://{server.host}:{server.port}/{db}"


def connect(url):
    """A redis client for a redis:// URL (bytes replies, as rq wants)."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def priority_queue(priority, queues=QUEUES):
    """The RQ queue of a kombu-scale priority: 0-2 first, 3-5 second, 6-9 third."""
    return queues[0] if priority <= 2 else queues[1] if priority <= 5 else queues[2]


class RqWorker:
    """One `rq worker` process on loopback Redis, running legacyd/rq/tasks.py as
    `tasks` with EXECUTOR_SERVICE_URL set. Queues are listened to in the
    order given (RQ takes from the first non-empty one)."""

    def __init__(self, workdir, url, executor_url, queues=QUEUES, serializer=None, name=None):
        self.dir = Path(workdir)
        self.url = url
        self.executor_url = executor_url.url if hasattr(executor_url, "url") else str(executor_url)
        self.queues = list(queues)
        self.serializer = SERIALIZERS.get(serializer, serializer)   # "json"/"pickle" or a dotted path
        _SEQ[0] += 1
        self.name = name or f"rqw{_SEQ[0]}-{os.getpid()}"
        self.mp = None
        self._starts = 0

    @property
    def key(self):
        """The worker's key in rq:workers."""
        return f"rq:worker:{self.name}"

    @property
    def pid(self):
        return self.mp.pid if self.mp else None

    def argv(self):
        argv = [PYTHON, "-m", "rq.cli", "worker", "-u", self.url, "--path", str(self.dir),
                "-n", self.name, "--logging_level", "DEBUG"]
        if self.serializer:
            argv += ["--serializer", self.serializer]
        return argv + self.queues

    def start(self, wait=True, timeout=WAIT_S):
        self._starts += 1
        if self.mp is not None and self.mp.running():
            raise AssertionError(f"rq worker {self.name} is still running")
        if self.mp is not None:
            self.mp.forget()
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TASKS_SRC, self.dir / "tasks.py")
        env = base_env()
        env.update({"EXECUTOR_SERVICE_URL": self.executor_url, "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONUNBUFFERED": "1"})
        # its own process group: a SIGKILL after a timeout takes the work horse too
        self.mp = ManagedProcess(f"rq-worker:{self.name}", self.argv(), env,
                                 self.dir / f"rq-worker-{self._starts}.log", cwd=str(self.dir),
                                 new_session=True).start()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=WAIT_S):
        """Until the worker has registered itself in rq:workers."""
        c = connect(self.url)
        try:
            wait_until(lambda: c.sismember("rq:workers", self.key), timeout,
                       f"rq worker {self.name} in rq:workers", [self.mp])
        finally:
            c.close()
        return self

    def running(self):
        return self.mp is not None and self.mp.running()

    def log(self, tail=0):
        """The whole log (tail=0) or its last lines."""
        if self.mp is None:
            return ""
        if not tail:
            try:
                return self.mp.log_path.read_text(errors="replace")
            except OSError:
                return ""
        return self.mp.log(tail)

    def describe(self, tail=80):
        return self.mp.describe(tail) if self.mp else f"<rq worker {self.name} never started>"

    def stop(self, timeout=10.0):
        """SIGTERM to the worker alone (RQ's warm shutdown: the job in hand
        finishes); after timeout a second SIGTERM (cold shutdown: the horse
        is killed); 5 s later SIGKILL of the whole group. Returns the exit
        code, None if never started."""
        if self.mp is None or self.mp.proc is None:
            return None
        proc = self.mp.proc
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGTERM, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
        # exited: this closes the log and kills what is left of the group;
        # still running: SIGKILL of the group
        return self.mp.stop(signal.SIGKILL, 5.0)

    def cleanup(self):
        if self.mp is None:
            return None
        self.stop(timeout=2.0)
        self.mp.forget()
        return None


# --------------------------------------------------------------- rq itself

def queue(conn, name="default", serializer="pickle"):
    from rq import Queue
    return Queue(name, connection=conn, serializer=SERIALIZERS.get(serializer, serializer))


def enqueue(conn, eval_id, code, language="python", queue_name="default", serializer="pickle",
            job_timeout=40, **kwargs):
    """Enqueue tasks.evaluate_code(eval_id, code, language, **kwargs) with
    rq's own Queue.enqueue, job id = eval_id. Returns the rq Job."""
    q = queue(conn, queue_name, serializer)
    return q.enqueue(FUNCTION, eval_id, code, language, job_id=eval_id, job_timeout=job_timeout, **kwargs)


def job_hash(conn, job_id):
    """rq:job:<id> as {field: str} (data left as bytes), {} when absent."""
    raw = conn.hgetall(f"rq:job:{job_id}")
    return {k.decode(): (v if k == b"data" else v.decode("utf-8", "replace")) for k, v in raw.items()}


def job_status(conn, job_id):
    v = conn.hget(f"rq:job:{job_id}", "status")
    return v.decode() if v is not None else None


def fetch_job(conn, job_id, serializer="pickle"):
    from rq.job import Job
    return Job.fetch(job_id, connection=conn, serializer=SERIALIZERS.get(serializer, serializer))


def job_state(conn, job_id, serializer="pickle"):
    """What rq says of a job: {"status", "func_name", "args", "kwargs",
    "origin", "worker_name", "started_at", "ended_at", "result_type"
    (SUCCESSFUL|FAILED|STOPPED|None), "return_value", "exc_string"}, or None
    when the job hash is gone."""
    from rq.exceptions import NoSuchJobError
    try:
        job = fetch_job(conn, job_id, serializer)
    except NoSuchJobError:
        return None
    res = job.latest_result()
    return {
        "status": job.get_status(refresh=False),
        "func_name": job.func_name, "args": list(job.args), "kwargs": dict(job.kwargs),
        "origin": job.origin, "worker_name": job.worker_name,
        "started_at": job.started_at, "ended_at": job.ended_at,
        "result_type": res.type.name if res else None,
        "return_value": res.return_value if res else None,
        "exc_string": res.exc_string if res else None,
    }


def wait_job(conn, job_id, statuses, timeout=30, procs=(), serializer="pickle"):
    """Until the job's status is one of statuses; returns job_state()."""
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def done():
        st = job_status(conn, job_id)
        return job_state(conn, job_id, serializer) if st in statuses else None
    return wait_until(done, timeout, f"rq job {job_id} to be {sorted(statuses)}", procs, interval=0.1)
