#include "wconfig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rclient.h"
#include "util.h"

#define F(field) offsetof(worker_settings, field)

const cfg_option wconfig_table[] = {
    {"CELERY_BROKER_URL", CFG_URL, "redis://127.0.0.1:6379/0", 0, 0, "redis", F(broker_url),
     "Redis of the queue", false},
    {"CELERY_RESULT_BACKEND", CFG_URL, "", 0, 0, "redis", F(result_backend),
     "Redis for celery-task-meta-* (empty: the broker URL)", false},
    {"CELERY_QUEUES", CFG_LIST, "evaluation", 0, 0, NULL, F(queues), "comma list of queues to consume", false},
    {"CELERY_CONCURRENCY", CFG_INT, "2", 1, 1000, NULL, F(concurrency), "evaluations in flight per worker", true},
    {"CELERY_TASK_NAME", CFG_STRING, "tasks.evaluate_code", 0, 200, NULL, F(task_name),
     "the task this worker runs; other task names are dead-lettered", true},
    {"EXECUTOR_SERVICE_URL", CFG_LIST, "http://127.0.0.1:8083", 0, 0, NULL, F(executors),
     "comma list of executors, used round-robin", false},
    {"STORAGE_SERVICE_URL", CFG_URL, "", 0, 0, "http|https", F(storage_url),
     "optional: results are also PUT to <url>/results/<eval_id>", true},
    {"WORKER_METRICS_LISTEN", CFG_ADDR, "127.0.0.1:9808", 0, 0, NULL, F(metrics_listen),
     "address:port of /metrics and /healthz", false},
    {"WORKER_NAME", CFG_STRING, "", 0, 200, NULL, F(name), "node name (default turnout@<hostname>)", false},
    {"VISIBILITY_TIMEOUT_S", CFG_INT, "3600", 1, 604800, NULL, F(visibility_timeout_s),
     "unacked messages older than this are restored to their queue", true},
    {"SOFT_TIME_LIMIT_S", CFG_FRACTION, "270", 0.1, 86400, NULL, F(soft_limit_s),
     "an execution running this long is asked to stop; result timeout", true},
    {"TIME_LIMIT_S", CFG_FRACTION, "300", 0.1, 86400, NULL, F(hard_limit_s),
     "an execution running this long is killed", true},
    {"RESULT_EXPIRES_S", CFG_INT, "86400", 1, 31536000, NULL, F(result_expires_s),
     "lifetime of celery-task-meta-* records", true},
    {"DLQ_RETENTION_DAYS", CFG_INT, "30", 1, 3650, NULL, F(dlq_retention_days),
     "dead-letter entries older than this are pruned", true},
    {"RETRY_DEFAULT_MAX", CFG_INT, "3", 0, 100, NULL, F(retry_default.max), "retries of policy default", true},
    {"RETRY_DEFAULT_BASE_S", CFG_FRACTION, "5", 0.01, 86400, NULL, F(retry_default.base_s),
     "first delay of policy default", true},
    {"RETRY_DEFAULT_FACTOR", CFG_FRACTION, "2", 1, 10, NULL, F(retry_default.factor),
     "delay growth of policy default", true},
    {"RETRY_DEFAULT_CAP_S", CFG_FRACTION, "300", 0.01, 86400, NULL, F(retry_default.cap_s),
     "longest delay of policy default", true},
    {"RETRY_NETWORK_MAX", CFG_INT, "5", 0, 100, NULL, F(retry_network.max),
     "retries of policy network_error (connect errors, 5xx, 429)", true},
    {"RETRY_NETWORK_BASE_S", CFG_FRACTION, "10", 0.01, 86400, NULL, F(retry_network.base_s),
     "first delay of policy network_error", true},
    {"RETRY_NETWORK_FACTOR", CFG_FRACTION, "1.5", 1, 10, NULL, F(retry_network.factor),
     "delay growth of policy network_error", true},
    {"RETRY_NETWORK_CAP_S", CFG_FRACTION, "600", 0.01, 86400, NULL, F(retry_network.cap_s),
     "longest delay of policy network_error", true},
    {"RETRY_JITTER", CFG_BOOL, "true", 0, 0, NULL, F(retry_jitter),
     "spread each delay over its upper half at random", true},
    {"REDIS_TIMEOUT_MS", CFG_INT, "2000", 10, 60000, NULL, F(redis_timeout_ms),
     "deadline of one Redis command; on expiry the connection is re-made", false},
    {"PROGRESS_INTERVAL_S", CFG_FRACTION, "5", 0.1, 3600, NULL, F(progress_interval_s),
     "how often a running evaluation's PROGRESS state is written", true},
    {"WORKER_SHUTDOWN_GRACE_S", CFG_INT, "30", 0, 3600, NULL, F(shutdown_grace_s),
     "on SIGTERM, how long running evaluations may finish before their messages are returned", true},
    {"WORKER_POLL_MAX_S", CFG_FRACTION, "0.05", 0.001, 5, NULL, F(poll_max_s),
     "longest pause between polls of empty queues", true},
    {"WORKER_MAX_MESSAGE_BYTES", CFG_INT, "100663296", 65536, 536870912, NULL, F(max_message_bytes),
     "a queued message larger than this is dead-lettered unread (reason too_large); default 96 MiB, above "
     "the ~86 MiB envelope of the largest body the proxy takes", true},
    {"WORKER_RESULT_RETRY_S", CFG_FRACTION, "60", 1, 3600, NULL, F(result_retry_s),
     "how long a finished evaluation's result is retried while Redis refuses it; then the message is given back "
     "later (5 s, 20 s, 80 s) and dead-lettered after the third time (reason given_back)", true},
    {"LOG_LEVEL", CFG_ENUM, "info", 0, 0, "debug|info|warn|error", F(log_level), "log threshold", true},
    {"LOG_FORMAT", CFG_ENUM, "logfmt", 0, 0, "logfmt|json", F(log_format), "log line format", true},
    {"TURNOUT_ENV_FILE", CFG_STRING, "", 0, 4096, NULL, F(env_file), "KEY=value file re-read on SIGHUP", false},
};
const size_t wconfig_count = sizeof(wconfig_table) / sizeof(wconfig_table[0]);

int wconfig_load(worker_settings *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
{
    worker_settings tmp = {0};
    int n = cfg_parse(wconfig_table, wconfig_count, &tmp, lookup, ud, errs, errs_size);
    const char *const names[2] = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"};
    const char *const urls[2] = {tmp.broker_url, tmp.result_backend};
    n += rclient_check_urls(names, urls, 2, errs, errs_size);
    if (!tmp.executors[0]) {
        n++;
        cfg_append_error(errs, errs_size, "EXECUTOR_SERVICE_URL=\"\": name at least one executor, e.g. http://127.0.0.1:8083\n");
    }
    for (const char *p = tmp.executors; *p;) {
        while (*p == ' ') p++;
        size_t len = strcspn(p, ",");
        if (len && strncmp(p, "http://", 7) != 0 && strncmp(p, "https://", 8) != 0) {
            n++;
            /* the item ends at a comma or the end: a cut there is between characters */
            int shown = (int)(len <= 200 ? len : util_utf8_prefix(p, 200));
            cfg_append_error(errs, errs_size, "EXECUTOR_SERVICE_URL: \"%.*s\" must start with http:// or https://\n",
                             shown, p);
        }
        p += len;
        if (*p == ',') p++;
    }
    if (!tmp.queues[0]) {
        n++;
        cfg_append_error(errs, errs_size, "CELERY_QUEUES=\"\": name at least one queue, e.g. evaluation\n");
    }
    if (tmp.soft_limit_s > tmp.hard_limit_s) {
        n++;
        cfg_append_error(errs, errs_size,
               "SOFT_TIME_LIMIT_S=%g is above TIME_LIMIT_S=%g: the soft limit must come first\n",
               tmp.soft_limit_s, tmp.hard_limit_s);
    }
    if (n) {
        cfg_free(wconfig_table, wconfig_count, &tmp);
        return n;
    }
    if (!tmp.name[0]) {
        char host_name[256] = "localhost", *name = NULL;
        (void)gethostname(host_name, sizeof(host_name) - 1);
        host_name[sizeof(host_name) - 1] = '\0';
        if (asprintf(&name, "turnout@%s", host_name) < 0) {
            cfg_free(wconfig_table, wconfig_count, &tmp);
            cfg_append_error(errs, errs_size, "out of memory\n");
            return 1;
        }
        free(tmp.name);
        tmp.name = name;
    }
    wconfig_free(s);
    *s = tmp;
    return 0;
}

static int load_any(void *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
{
    return wconfig_load(s, lookup, ud, errs, errs_size);
}

int wconfig_read(worker_settings *s, const char *env_file, char *errs, size_t errs_size)
{
    return cfg_load_with_env_file(env_file, load_any, s, errs, errs_size);
}

void wconfig_free(worker_settings *s)
{
    cfg_free(wconfig_table, wconfig_count, s);
}
