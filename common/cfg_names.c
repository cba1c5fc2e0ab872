/* cfg_names — the names of every setting of every turnout binary, in one
 * place, so each binary also knows the others' names: one env file (or one
 * environment) shared by all four is normal, and WORKER_NAME in the proxy's
 * environment is not a typo.  The unknown-name checks (cfg.c) use this list.
 *
 * It cannot drift from the tables: every binary compares its own table with
 * its entry here when it starts (cfg_cli -> cfg_check_names) and refuses to
 * run when they differ, naming the setting to add or remove. */
#include "cfg.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const char *const proxy_names[] = {
    "PROXY_LISTEN", "CELERY_ENABLED", "CELERY_PERCENTAGE", "FORCE_LEGACY_QUEUE", "ROUTING_MODE",
    "ROLLOUT_SALT", "FALLBACK_TO_LEGACY", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_QUEUE",
    "CELERY_TASK_NAME", "LEGACY_BACKEND", "LEGACY_QUEUE_URL", "LEGACY_RQ_URL", "LEGACY_RQ_QUEUES",
    "LEGACY_RQ_FUNCTION", "LEGACY_RQ_SERIALIZER", "LEGACY_RQ_RESULT_TTL_S", "UPSTREAM_API_URL", "ADMIN_TOKEN", "ADMIN_TOKEN_LABEL", "READ_TOKEN",
    "ALLOWED_HOSTS", "ALLOWED_ORIGINS",
    "MAX_BODY_BYTES", "ALLOWED_LANGUAGES", "LOG_LEVEL", "LOG_FORMAT", "PROXY_TLS_CERT", "PROXY_TLS_KEY",
    "LEGACY_TIMEOUT_MS", "LEGACY_MAX_REPLY_BYTES", "UPSTREAM_TIMEOUT_MS", "PASSTHROUGH_BUFFER_BYTES", "TRUST_FORWARDED_HEADERS", "FORWARDED_HEADER", "WEBSOCKET_IDLE_TIMEOUT_S", "AUTH_URL", "AUTH_TIMEOUT_MS", "AUTH_RESPONSE_HEADERS", "AUTH_STICKY_HEADER", "AUTH_CACHE_TTL_S", "REDIS_TIMEOUT_MS", "CLIENT_REQUEST_TIMEOUT_S",
    "CLIENT_TIMEOUT_S", "MAX_CLIENT_CONNECTIONS", "SHUTDOWN_GRACE_S", "MAX_IN_FLIGHT", "ROUTE_RECORD_TTL_S",
    "ROUTE_PENDING_MAX", "ACCEPT_UNCHECKED_EVAL_IDS", "CELERY_QUEUE_MAX_DEPTH", "COMPLETION_POLL_S", "COMPLETION_POLL_BATCH", "ROLLOUT_STEPS",
    "ROLLOUT_STEP_INTERVAL_S", "GATE_ALPHA", "GATE_MIN_SAMPLES", "GATE_SYSTEM_ERROR_MARGIN",
    "GATE_SYSTEM_ERROR_PASS_MARGIN", "GATE_PROGRAM_FAILURE_MARGIN", "GATE_PROGRAM_FAILURE_PASS_MARGIN",
    "GATE_LATENCY_QUANTILE", "GATE_LATENCY_MARGIN", "GATE_LATENCY_PASS_MARGIN",
    "ROLLOUT_ROLLBACK_TO", "SHADOW_PERCENTAGE", "SHADOW_MISMATCHES_KEPT", "TURNOUT_ENV_FILE",
};

static const char *const worker_names[] = {
    "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_QUEUES", "CELERY_CONCURRENCY", "CELERY_TASK_NAME",
    "EXECUTOR_SERVICE_URL", "STORAGE_SERVICE_URL", "WORKER_METRICS_LISTEN", "WORKER_NAME",
    "VISIBILITY_TIMEOUT_S", "SOFT_TIME_LIMIT_S", "TIME_LIMIT_S", "RESULT_EXPIRES_S", "DLQ_RETENTION_DAYS",
    "RETRY_DEFAULT_MAX", "RETRY_DEFAULT_BASE_S", "RETRY_DEFAULT_FACTOR", "RETRY_DEFAULT_CAP_S",
    "RETRY_NETWORK_MAX", "RETRY_NETWORK_BASE_S", "RETRY_NETWORK_FACTOR", "RETRY_NETWORK_CAP_S",
    "RETRY_JITTER", "REDIS_TIMEOUT_MS", "PROGRESS_INTERVAL_S", "WORKER_SHUTDOWN_GRACE_S",
    "WORKER_POLL_MAX_S", "WORKER_MAX_MESSAGE_BYTES", "WORKER_RESULT_RETRY_S", "LOG_LEVEL", "LOG_FORMAT", "TURNOUT_ENV_FILE",
};

static const char *const legacyd_names[] = {
    "LEGACYD_LISTEN", "EXECUTOR_SERVICE_URL", "LEGACYD_CONCURRENCY", "LEGACYD_MAX_QUEUE",
    "LEGACYD_RESULT_TTL_S", "LOG_LEVEL", "LOG_FORMAT",
};

static const char *const executor_names[] = {
    "EXECUTOR_LISTEN", "EXECUTOR_MAX_CONCURRENT", "EXECUTOR_ID", "EXECUTOR_MEMORY_MB", "EXECUTOR_FILE_MB",
    "EXECUTOR_MAX_PROCS", "EXECUTOR_OUTPUT_LIMIT", "LOG_LEVEL", "LOG_FORMAT",
};

const cfg_program_names cfg_programs[] = {
    {"turnout-proxy", proxy_names, N(proxy_names)},
    {"turnout-worker", worker_names, N(worker_names)},
    {"turnout-legacyd", legacyd_names, N(legacyd_names)},
    {"turnout-executor", executor_names, N(executor_names)},
};
const size_t cfg_nprograms = N(cfg_programs);

/* Names with a turnout prefix that the project uses outside the binaries
 * (tests, scripts, the demo, benchmarks): never reported as unknown.  A
 * trailing '*' matches any rest. */
const char *const cfg_outside_names[] = {
    "TURNOUT_BIN_DIR",           /* tests: where the binaries are */
    "TURNOUT_SOAK",              /* tests/faults: the long form (make soak) */
    "TURNOUT_PYTEST_PATHS",      /* scripts/run-pytest.sh */
    "TURNOUT_VALGRIND",          /* make valgrind: its log directory */
    "TURNOUT_VALGRIND_SKIP",     /* make valgrind: binaries run without it */
    "TURNOUT_VALGRIND_SLOWDOWN", /* make valgrind: the time factor */
    "DEMO_*",                    /* make run: DEMO_PROXY_PORT and friends */
    "FUZZ_*",                    /* make fuzz: FUZZ_SECONDS, FUZZ_KEEP_CORPUS */
    "BENCH_*",                   /* make bench */
};
const size_t cfg_noutside = N(cfg_outside_names);

/* Settings an earlier release read and this one does not: named with what
 * replaced them, so an old env file says what to change instead of "not a
 * turnout setting". */
const cfg_retired_name cfg_retired[] = {
    {"GATE_ERROR_DELTA", "the canary's error gate counted programs that fail as path errors; it is now two "
                         "gates: GATE_SYSTEM_ERROR_MARGIN (errors of the path) and GATE_PROGRAM_FAILURE_MARGIN "
                         "(programs' failures), README \"The canary judge\""},
    {"GATE_LATENCY_RATIO", "the canary's latency gate compares the share of evals slower than legacy's "
                           "GATE_LATENCY_QUANTILE: set GATE_LATENCY_MARGIN, README \"The canary judge\""},
};
const size_t cfg_nretired = N(cfg_retired);
