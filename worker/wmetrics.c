#include "wmetrics.h"

#include <string.h>

#include "util.h"

const char *const wm_outcome_names[WO_COUNT] = {"completed", "failed", "timeout", "killed",
                                               "revoked", "retried", "dead_lettered", "duplicate",
                                               "malformed", "scheduled", "returned", "hard_time_limit"};
const char *const wm_policy_names[WP_COUNT] = {"default", "network_error"};
const char *const wm_job_names[WJ_COUNT] = {"restore", "schedule", "dlq_prune", "orphans", "executors"};
const char *const wm_broker_op_names[WB_COUNT] = {"ack", "dead_letter", "result", "take"};
static const char *const reload_outcome_names[] = {"ok", "error"};
static const char *const exec_outcome_names[WE_COUNT] = {"ok", "busy", "connect", "timeout", "error"};
static const char *const job_outcome_names[WJO_COUNT] = {"ok", "error", "skipped"};
static const char *const version_names[] = {TURNOUT_VERSION};

int wmetrics_init(wmetrics *m, const char *const *executors, size_t nexec)
{
    memset(m, 0, sizeof(*m));
    m->reg = metrics_registry_new();
    if (!m->reg) return -1;
    const metrics_dim outcome = {"outcome", wm_outcome_names, WO_COUNT};
    const metrics_dim policy = {"policy", wm_policy_names, WP_COUNT};
    const metrics_dim exec[2] = {{"executor", executors, nexec}, {"outcome", exec_outcome_names, WE_COUNT}};
    const metrics_dim job[2] = {{"job", wm_job_names, WJ_COUNT}, {"outcome", job_outcome_names, WJO_COUNT}};
    const metrics_dim version = {"version", version_names, 1};
    const metrics_dim op = {"op", wm_broker_op_names, WB_COUNT};
    const metrics_dim reload = {"outcome", reload_outcome_names, 2};
    m->tasks = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_tasks_total",
                                  "Messages handled, by outcome", 1, &outcome, NULL, 0);
    m->duration = metrics_family_add(m->reg, METRICS_HISTOGRAM, "turnout_worker_task_duration_seconds",
                                     "Time from taking a message to storing its result", 0, NULL,
                                     metrics_latency_buckets, metrics_latency_nbuckets);
    m->in_flight = metrics_family_add(m->reg, METRICS_GAUGE, "turnout_worker_in_flight",
                                      "Messages this worker holds", 0, NULL, NULL, 0);
    m->retries = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_retries_total",
                                    "Retries scheduled, by policy", 1, &policy, NULL, 0);
    m->exec_requests = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_executor_requests_total",
                                          "Calls to executors, by executor and outcome", 2, exec, NULL, 0);
    m->maintenance = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_maintenance_runs_total",
                                        "Maintenance job runs, by job and outcome", 2, job, NULL, 0);
    m->build_info = metrics_family_add(m->reg, METRICS_GAUGE, "turnout_worker_build_info",
                                       "Always 1; the version label says which build", 1, &version, NULL, 0);
    m->broker_errors = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_broker_errors_total",
                                          "Broker commands that failed (error reply, timeout, not connected), by op",
                                          1, &op, NULL, 0);
    m->reloads = metrics_family_add(m->reg, METRICS_COUNTER, "turnout_worker_reloads_total",
                                    "Settings reloads (SIGHUP), by outcome", 1, &reload, NULL, 0);
    if (!m->tasks || !m->duration || !m->in_flight || !m->retries || !m->exec_requests ||
        !m->maintenance || !m->build_info || !m->broker_errors || !m->reloads) {
        wmetrics_free(m);
        return -1;
    }
    metrics_set(m->build_info, 0, 1);
    return 0;
}

void wmetrics_free(wmetrics *m)
{
    metrics_registry_free(m->reg);
    memset(m, 0, sizeof(*m));
}

void wmetrics_task(wmetrics *m, enum wm_outcome o)
{
    metrics_add(m->tasks, (size_t)o, 1);
}

void wmetrics_exec(wmetrics *m, size_t executor, enum wm_exec_outcome o)
{
    size_t c[2] = {executor, (size_t)o};
    metrics_add(m->exec_requests, metrics_at(m->exec_requests, c), 1);
}

void wmetrics_job(wmetrics *m, enum wm_job job, enum wm_job_outcome o)
{
    size_t c[2] = {(size_t)job, (size_t)o};
    metrics_add(m->maintenance, metrics_at(m->maintenance, c), 1);
}
