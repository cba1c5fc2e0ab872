/* wmetrics — turnout-worker's metrics (DESIGN §9), declared once. */
#ifndef TURNOUT_WMETRICS_H
#define TURNOUT_WMETRICS_H

#include <stddef.h>

#include "metrics.h"

enum wm_outcome { WO_COMPLETED, WO_FAILED, WO_TIMEOUT, WO_KILLED, WO_REVOKED, WO_RETRIED,
                  WO_DEAD_LETTERED, WO_DUPLICATE, WO_MALFORMED, WO_SCHEDULED, WO_RETURNED,
                  WO_HARD_LIMIT, WO_COUNT };
enum wm_policy { WP_DEFAULT, WP_NETWORK, WP_COUNT };
enum wm_exec_outcome { WE_OK, WE_BUSY, WE_CONNECT, WE_TIMEOUT, WE_ERROR, WE_COUNT };
enum wm_job { WJ_RESTORE, WJ_SCHEDULE, WJ_DLQ_PRUNE, WJ_ORPHANS, WJ_EXECUTORS, WJ_COUNT };
enum wm_job_outcome { WJO_OK, WJO_ERROR, WJO_SKIPPED, WJO_COUNT };
/* Broker commands whose failures are counted (WB_ACK first: the default). */
enum wm_broker_op { WB_ACK, WB_DEAD_LETTER, WB_RESULT, WB_TAKE, WB_COUNT };

extern const char *const wm_outcome_names[WO_COUNT];
extern const char *const wm_policy_names[WP_COUNT];
extern const char *const wm_job_names[WJ_COUNT];
extern const char *const wm_broker_op_names[WB_COUNT];

typedef struct wmetrics {
    metrics_registry *reg;
    metrics_family *tasks;         /* turnout_worker_tasks_total{outcome} */
    metrics_family *duration;      /* turnout_worker_task_duration_seconds */
    metrics_family *in_flight;     /* turnout_worker_in_flight */
    metrics_family *retries;       /* turnout_worker_retries_total{policy} */
    metrics_family *exec_requests; /* turnout_worker_executor_requests_total{executor,outcome} */
    metrics_family *maintenance;   /* turnout_worker_maintenance_runs_total{job,outcome} */
    metrics_family *build_info;
    metrics_family *broker_errors; /* turnout_worker_broker_errors_total{op} */
    metrics_family *reloads;       /* turnout_worker_reloads_total{outcome} */
} wmetrics;

/* executors: the configured executor URLs (borrowed; outlive the registry). */
int wmetrics_init(wmetrics *m, const char *const *executors, size_t nexec)
    __attribute__((warn_unused_result));
void wmetrics_free(wmetrics *m);

void wmetrics_task(wmetrics *m, enum wm_outcome o);
void wmetrics_exec(wmetrics *m, size_t executor, enum wm_exec_outcome o);
void wmetrics_job(wmetrics *m, enum wm_job job, enum wm_job_outcome o);

#endif
