/* wconfig — turnout-worker settings: the one table of environment variables. */
#ifndef TURNOUT_WCONFIG_H
#define TURNOUT_WCONFIG_H

#include <stdbool.h>

#include "cfg.h"

typedef struct retry_policy {
    long long max;     /* retries before dead-lettering */
    double base_s;     /* first delay */
    double factor;     /* growth per retry */
    double cap_s;      /* longest delay */
} retry_policy;

typedef struct worker_settings {
    char *broker_url;
    char *result_backend;
    char *queues;
    long long concurrency;
    char *task_name;
    char *executors;
    char *storage_url;
    char *metrics_listen;
    char *name;
    long long visibility_timeout_s;
    double soft_limit_s;
    double hard_limit_s;
    long long result_expires_s;
    long long dlq_retention_days;
    retry_policy retry_default;
    retry_policy retry_network;
    bool retry_jitter;
    long long redis_timeout_ms;
    double progress_interval_s;
    long long shutdown_grace_s;
    double poll_max_s;
    long long max_message_bytes;
    double result_retry_s;
    char *log_level;
    char *log_format;
    char *env_file;
} worker_settings;

extern const cfg_option wconfig_table[];
extern const size_t wconfig_count;

/* Loads and cross-checks; the number of problems (one line each in errs). */
int wconfig_load(worker_settings *s, cfg_lookup_fn lookup, void *ud, char *errs, size_t errs_size)
    __attribute__((warn_unused_result));
/* wconfig_load over the environment with the TURNOUT_ENV_FILE `env_file`
 * over it (NULL or "": none), at start-up and on SIGHUP; a misspelt name in
 * the file is a problem and nothing changes. */
int wconfig_read(worker_settings *s, const char *env_file, char *errs, size_t errs_size)
    __attribute__((warn_unused_result));
void wconfig_free(worker_settings *s);

#endif
