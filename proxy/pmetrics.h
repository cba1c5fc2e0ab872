/* pmetrics — the proxy's metrics (DESIGN §9), declared once in an X-macro
 * that makes the families, their label sets and the Prometheus names. */
#ifndef TURNOUT_PMETRICS_H
#define TURNOUT_PMETRICS_H

#include <stddef.h>

#include "metrics.h"
#include "router.h"

/* Fixed route templates: `route` is never a raw URL.  RT_PROBE (/healthz,
 * /readyz, /metrics) is not counted: probes and scrapes would drown the
 * traffic the metrics are for. */
enum pm_route { RT_SUBMIT, RT_STATUS, RT_CANCEL, RT_BATCH, RT_DLQ, RT_ADMIN, RT_PASSTHROUGH,
                RT_COUNT, RT_PROBE = RT_COUNT };
extern const char *const pm_route_names[RT_COUNT];

/* Upstream error reasons. */
enum pm_upstream { UP_TIMEOUT, UP_CONNECT, UP_BAD_STATUS, UP_BAD_REPLY, UP_REDIS_DOWN,
                   UP_REDIS_ERROR, UP_QUEUE_FULL, UP_COUNT };
extern const char *const pm_upstream_names[UP_COUNT];

/*  X(field, kind, name, help, dims...) — dims name a label list below. */
#define PROXY_METRICS(X)                                                                      \
    X(requests, METRICS_COUNTER, "turnout_requests_total",                                    \
      "HTTP requests answered, by route template, path and status code", D_ROUTE, D_PATH, D_CODE) \
    X(request_duration, METRICS_HISTOGRAM, "turnout_request_duration_seconds",                \
      "Time from request received to reply sent", D_ROUTE, D_PATH)                            \
    X(routing_decisions, METRICS_COUNTER, "turnout_routing_decisions_total",                  \
      "Submissions routed, by final path and reason", D_PATH, D_REASON)                       \
    X(upstream_errors, METRICS_COUNTER, "turnout_upstream_errors_total",                      \
      "Failed calls to a path's backend, by path and reason", D_PATH, D_UPREASON)             \
    X(in_flight, METRICS_GAUGE, "turnout_in_flight_requests",                                 \
      "Requests waiting on a backend, by path", D_PATH)                                       \
    X(rollout_percentage, METRICS_GAUGE, "turnout_rollout_percentage",                        \
      "Fraction 0..1 of submissions routed to the new path")                                  \
    X(celery_enabled, METRICS_GAUGE, "turnout_celery_enabled", "1 when the new path is enabled") \
    X(force_legacy, METRICS_GAUGE, "turnout_force_legacy", "1 when the kill switch is on")    \
    X(evals_completed, METRICS_COUNTER, "turnout_evals_completed_total",                      \
      "Evaluations that reached a terminal state, by path and outcome", D_PATH2, D_OUTCOME)   \
    X(eval_completion, METRICS_HISTOGRAM, "turnout_eval_completion_seconds",                  \
      "Time from submission to terminal state, by path", D_PATH2)                             \
    X(path_outcomes, METRICS_COUNTER, "turnout_eval_path_outcomes_total",                     \
      "Finished evaluations by path and the path's outcome (ok: it took, ran and answered the eval, " \
      "whatever the program did; system_error; path_timeout: it waited past its own timeout; lost)", \
      D_PATH2, D_PATHOUT)                                                                     \
    X(system_errors, METRICS_COUNTER, "turnout_eval_system_errors_total",                     \
      "System errors by path and class (submit: the path could not take the submission; the rest " \
      "ended a finished eval: executor, worker, rejected, unreadable, lost, path_timeout)", D_PATH2, D_SYSCLASS) \
    X(verdicts, METRICS_COUNTER, "turnout_eval_verdicts_total",                               \
      "Finished evaluations with a program verdict, by path and verdict (completed: exit 0; failed: " \
      "non-zero exit; timeout: its own time limit; killed: cancelled)", D_PATH2, D_VERDICT)   \
    X(evals_pending, METRICS_GAUGE, "turnout_evals_unfinished",                               \
      "Routed evals not yet seen in a terminal state, by path (Redis in-flight sets)", D_PATH2) \
    X(completion_untracked, METRICS_COUNTER, "turnout_completion_untracked_total",           \
      "Tracked evals given up without a terminal state (the backend forgot them), by path", D_PATH2) \
    X(duplicates, METRICS_COUNTER, "turnout_duplicate_submissions_total",                     \
      "Submissions whose eval_id already had a route record (nothing enqueued), by path", D_PATH2) \
    X(route_records_pending, METRICS_GAUGE, "turnout_route_records_pending",                  \
      "Route records held in memory until Redis is back")                                     \
    X(route_records_dropped, METRICS_COUNTER, "turnout_route_records_dropped_total",          \
      "Route records lost because the in-memory table (ROUTE_PENDING_MAX) was full: a resubmission of " \
      "such an eval_id is not recognised")                                                    \
    X(unchecked_submissions, METRICS_COUNTER, "turnout_unchecked_submissions_total",          \
      "Submissions with their own eval_id sent to legacy while Redis could not check it "      \
      "(ACCEPT_UNCHECKED_EVAL_IDS=true): each may be a second run")                            \
    X(outcome_checks, METRICS_COUNTER, "turnout_new_path_outcome_checks_total",               \
      "New-path submissions whose Redis reply was lost, settled by asking Redis once the script's " \
      "deadline had passed, by what was found (queued: it is on the new path; not_queued: it never " \
      "ran, so it fell back; unknown: Redis did not answer in time, 503 outcome_unknown)", D_CHECK) \
    X(rollout_step, METRICS_GAUGE, "turnout_rollout_step",                                    \
      "Canary step in force, 1-based (0: no canary running or paused)")                      \
    X(gate_checks, METRICS_COUNTER, "turnout_rollout_gate_checks_total",                      \
      "Canary gate evaluations by the leading proxy, by gate and result", D_GATE, D_GRESULT)  \
    X(rollbacks, METRICS_COUNTER, "turnout_rollout_rollbacks_total",                          \
      "Automatic canary rollbacks, by the gate that failed", D_RBREASON)                      \
    X(shadow_comparisons, METRICS_COUNTER, "turnout_shadow_comparisons_total",               \
      "Shadow runs compared with their legacy run, by result", D_SHADOW)                     \
    X(queue_depth, METRICS_GAUGE, "turnout_queue_depth",                                      \
      "Messages waiting in the new queue, by queue and priority step", D_QUEUE, D_PRIO)       \
    X(dlq_size, METRICS_GAUGE, "turnout_dlq_size", "Entries in the dead-letter queue")        \
    X(passthrough_aborted, METRICS_COUNTER, "turnout_passthrough_aborted_total",              \
      "Pass-through responses cut before their end, by the side that went away (client: it closed "    \
      "its connection, the upstream call was cancelled; upstream: it failed or fell silent mid-body)", D_SIDE) \
    X(tunnels, METRICS_COUNTER, "turnout_tunnels_total",                                      \
      "Upgrade requests (WebSocket) passed through, by result (opened: the upstream switched "  \
      "protocols; declined: it answered otherwise; failed: it could not be reached)", D_TUNNEL) \
    X(auth_requests, METRICS_COUNTER, "turnout_auth_requests_total",                          \
      "Forward-auth checks (AUTH_URL), by result (allowed, denied: 401/403 passed back, error: 503 "  \
      "auth_unavailable, cached_allowed, cached_denied: decided by AUTH_CACHE_TTL_S)", D_AUTH)  \
    X(tunnels_open, METRICS_GAUGE, "turnout_tunnels_open", "Upgraded (WebSocket) tunnels open now") \
    X(rejected, METRICS_COUNTER, "turnout_rejected_requests_total",                           \
      "Requests refused by a limit or validation, by reason", D_REJECT)                       \
    X(build_info, METRICS_GAUGE, "turnout_build_info", "Always 1; the version label says which build", D_VERSION)

enum pm_code_dim_size { PM_NCODES = 21 };
extern const char *const pm_code_names[PM_NCODES];
enum pm_reject { RJ_BAD_JSON, RJ_TOO_LARGE, RJ_MEDIA_TYPE, RJ_INVALID_FIELD, RJ_OVERLOAD,
                 RJ_NO_PATH, RJ_OOM, RJ_METHOD, RJ_FD_LIMIT, RJ_MAX_CONNECTIONS, RJ_CLIENT_TIMEOUT,
                 RJ_UNCHECKED, RJ_OUTCOME_UNKNOWN, RJ_BAD_HTTP, RJ_CROSS_ORIGIN, RJ_HOST, RJ_COUNT };
enum pm_side { PS_CLIENT, PS_UPSTREAM, PS_COUNT };
enum pm_tunnel { PT_OPENED, PT_DECLINED, PT_FAILED, PT_COUNT };
enum pm_check { PC_QUEUED, PC_NOT_QUEUED, PC_UNKNOWN, PC_COUNT };
extern const char *const pm_reject_names[RJ_COUNT];
extern const char *const pm_outcome_names[];

typedef struct pmetrics {
#define PM_FIELD(field, ...) metrics_family *field;
    PROXY_METRICS(PM_FIELD)
#undef PM_FIELD
    metrics_registry *reg;
} pmetrics;

/* Builds every family with every label combination at zero.  -1 on OOM. */
int pmetrics_init(pmetrics *m, const char *queue) __attribute__((warn_unused_result));
void pmetrics_free(pmetrics *m);

/* Index of a status code in pm_code_names (exact, else its class "4xx"). */
size_t pmetrics_code_index(int status);

/* One request finished: requests_total + duration. */
void pmetrics_request(pmetrics *m, enum pm_route route, enum route_path path, int status,
                      double seconds);

#endif
