#include "pmetrics.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "celery.h"
#include "evstatus.h"
#include "gates.h"
#include "util.h"

const char *const pm_route_names[RT_COUNT] = {"submit", "status", "cancel", "batch", "dlq", "admin",
                                              "passthrough"};
const char *const pm_upstream_names[UP_COUNT] = {"timeout", "connect", "bad_status", "bad_reply",
                                                 "redis_down", "redis_error", "queue_full"};
const char *const pm_code_names[PM_NCODES] = {"200", "201", "202", "204", "400", "401", "403",
                                              "404", "405", "409", "413", "415", "422", "429",
                                              "500", "502", "503", "504", "2xx", "4xx", "5xx"};
const char *const pm_reject_names[RJ_COUNT] = {"bad_json", "too_large", "media_type", "invalid_field",
                                               "overload", "no_path", "out_of_memory", "method", "fd_limit",
                                               "max_connections", "client_timeout", "eval_id_unchecked",
                                               "outcome_unknown", "bad_http", "cross_origin", "host"};
static const char *const auth_names[] = {"allowed", "denied", "error", "cached_allowed", "cached_denied"};
static const char *const side_names[PS_COUNT] = {"client", "upstream"};
static const char *const tunnel_names[PT_COUNT] = {"opened", "declined", "failed"};
static const char *const check_names[PC_COUNT] = {"queued", "not_queued", "unknown"};
const char *const pm_outcome_names[] = {"completed", "failed", "timeout", "cancelled"};
static const char *const shadow_names[] = {"match", "mismatch", "error"};
static const char *const gresult_names[] = {"hold", "pass", "fail"};
static const char *const path2_names[] = {"legacy", "new"};
static const char *const prio_names[] = {"0", "3", "6", "9"};
static const char *const version_names[] = {TURNOUT_VERSION};
/* Submit -> terminal spans queueing and the run (timeouts up to 900 s). */
static const double completion_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800};
#define COMPLETION_NBUCKETS (sizeof(completion_buckets) / sizeof(completion_buckets[0]))

size_t pmetrics_code_index(int status)
{
    /* called for every request: a table look-up, no formatting */
    static const int codes[PM_NCODES - 3] = {200, 201, 202, 204, 400, 401, 403, 404, 405,
                                             409, 413, 415, 422, 429, 500, 502, 503, 504};
    for (size_t i = 0; i < PM_NCODES - 3; i++)
        if (codes[i] == status) return i;
    if (status < 300) return PM_NCODES - 3;
    if (status < 500) return PM_NCODES - 2;
    return PM_NCODES - 1;
}

int pmetrics_init(pmetrics *m, const char *queue)
{
    memset(m, 0, sizeof(*m));
    /* The queue label has one value: the configured queue. Its storage must
     * outlive the registry, hence the copy kept in a static. */
    static const char *queue_names[1];
    queue_names[0] = queue;
    const metrics_dim D_ROUTE = {"route", pm_route_names, RT_COUNT};
    const metrics_dim D_PATH = {"path", route_path_names, PATH_COUNT};
    const metrics_dim D_CODE = {"code", pm_code_names, PM_NCODES};
    const metrics_dim D_REASON = {"reason", route_reason_names, REASON_COUNT};
    const metrics_dim D_UPREASON = {"reason", pm_upstream_names, UP_COUNT};
    const metrics_dim D_PATH2 = {"path", path2_names, 2};
    const metrics_dim D_OUTCOME = {"outcome", pm_outcome_names, 4};
    const metrics_dim D_QUEUE = {"queue", queue_names, 1};
    const metrics_dim D_PRIO = {"priority", prio_names, 4};
    const metrics_dim D_REJECT = {"reason", pm_reject_names, RJ_COUNT};
    const metrics_dim D_VERSION = {"version", version_names, 1};
    const metrics_dim D_GATE = {"gate", gate_names, GATE_COUNT};
    const metrics_dim D_PATHOUT = {"outcome", ev_pathout_names, EV_PATHOUT_COUNT};
    const metrics_dim D_SYSCLASS = {"class", ev_sys_names, EV_SYS_COUNT};
    const metrics_dim D_VERDICT = {"verdict", ev_verdict_names, EV_VERDICT_COUNT};
    const metrics_dim D_GRESULT = {"result", gresult_names, 3};
    const metrics_dim D_SHADOW = {"result", shadow_names, 3};
    const metrics_dim D_RBREASON = {"reason", gate_names, GATE_COUNT};
    const metrics_dim D_CHECK = {"result", check_names, PC_COUNT};
    const metrics_dim D_SIDE = {"side", side_names, PS_COUNT};
    const metrics_dim D_AUTH = {"result", auth_names, 5};
    const metrics_dim D_TUNNEL = {"result", tunnel_names, PT_COUNT};

    m->reg = metrics_registry_new();
    if (!m->reg) return -1;
#define PM_ADD(field, kind, name, help, ...)                                                   \
    do {                                                                                       \
        const metrics_dim dims[] = {__VA_ARGS__};                                              \
        bool wide = strcmp(name, "turnout_eval_completion_seconds") == 0;                      \
        m->field = metrics_family_add(m->reg, kind, name, help, sizeof(dims) / sizeof(dims[0]), \
                                      dims, wide ? completion_buckets : metrics_latency_buckets, \
                                      wide ? COMPLETION_NBUCKETS : metrics_latency_nbuckets);  \
        if (!m->field) goto oom;                                                               \
    } while (0);
/* Families without labels pass an empty list through a dummy first element. */
#define PM_ADD0(field, kind, name, help)                                                        \
    do {                                                                                       \
        m->field = metrics_family_add(m->reg, kind, name, help, 0, NULL,                       \
                                      metrics_latency_buckets, metrics_latency_nbuckets);      \
        if (!m->field) goto oom;                                                               \
    } while (0);
#define PM_PICK(_1, _2, _3, _4, _5, _6, _7, NAME, ...) NAME
#define PM_DISPATCH(...) PM_PICK(__VA_ARGS__, PM_ADD, PM_ADD, PM_ADD, PM_ADD0, x, x, x)(__VA_ARGS__)
    PROXY_METRICS(PM_DISPATCH)
#undef PM_DISPATCH
#undef PM_PICK
#undef PM_ADD0
#undef PM_ADD
    metrics_set(m->build_info, 0, 1);
    return 0;
oom:
    pmetrics_free(m);
    return -1;
}

void pmetrics_free(pmetrics *m)
{
    metrics_registry_free(m->reg);
    memset(m, 0, sizeof(*m));
}

void pmetrics_request(pmetrics *m, enum pm_route route, enum route_path path, int status,
                      double seconds)
{
    if (route >= RT_COUNT) return;
    size_t c3[3] = {route, path, pmetrics_code_index(status)};
    metrics_add(m->requests, metrics_at(m->requests, c3), 1);
    size_t c2[2] = {route, path};
    metrics_observe(m->request_duration, metrics_at(m->request_duration, c2), seconds);
}
