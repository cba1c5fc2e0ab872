/* shadow — opt-in comparison of the two paths on the same work:
 * SHADOW_PERCENTAGE of the legacy-routed submissions are also enqueued on
 * the new path as task `shadow-<eval_id>` (priority 9, after everything
 * real; its eval_id argument is `shadow-<eval_id>` too, so executors and
 * storage never confuse the two runs), never returned to the client and
 * never written as its result.
 * When both have finished, outcome, exit status and output (trailing
 * whitespace ignored) are compared: turnout_shadow_comparisons_total
 * {result=match|mismatch|error}; the last SHADOW_MISMATCHES_KEPT
 * mismatches are kept at `turnout:shadow:mismatches`.
 *
 * Redis: `turnout:shadow:<eval_id>` (hash: submitted_at, and each side's
 * verdict as it arrives; TTL ROUTE_RECORD_TTL_S) and the in-flight set
 * `turnout:inflight:shadow`, swept like the new path's.  The side that
 * completes the pair takes the hash (one script), so a comparison is made
 * once however many proxies hear of it. */
#ifndef TURNOUT_SHADOW_H
#define TURNOUT_SHADOW_H

#include <stdbool.h>

#include "router.h"
#include "submission.h"

typedef struct proxy proxy;
typedef struct json_t json_t;
struct evhttp_request;

#define SHADOW_TASK_PREFIX "shadow-"
#define SHADOW_KEY_PREFIX "turnout:shadow:"
#define SHADOW_MISMATCHES "turnout:shadow:mismatches"
#define INFLIGHT_SHADOW "turnout:inflight:shadow"

/* Whether this legacy-routed submission gets a shadow (SHADOW_PERCENTAGE). */
bool shadow_draw(const proxy *p);

/* Enqueues the shadow task, fire and forget: it never delays or fails the
 * submission that asked for it. */
void shadow_start(proxy *p, const submission *sub);
/* A submission a path took: shadowed on the new path when it went to
 * legacy and the SHADOW_PERCENTAGE draw says so. */
void shadow_mirror(proxy *p, enum route_path path, const submission *sub);

/* One side's verdict: side "legacy" with the Queue Service's task JSON, or
 * side "new" with the Celery result record of shadow-<eval_id>. */
void shadow_report_legacy(proxy *p, const char *eval_id, json_t *task);
void shadow_report_new(proxy *p, const char *eval_id, json_t *celery_record);

/* Pure: the comparison of two side verdicts {status, output, exit_code};
 * "match", "mismatch" or "error", and which fields differ (into `differs`,
 * a JSON array, when given). */
const char *shadow_compare(json_t *legacy, json_t *fresh, json_t *differs);

/* GET /admin/shadow/mismatches?limit=N */
void shadow_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

#endif
