/* rollout — the routing state every proxy on one Redis obeys, changed at
 * run time without restarts (DESIGN §3, §4).
 *
 * Shared state: `turnout:rollout` (JSON {enabled, percentage,
 * force_legacy, mode, version, updated_at, updated_by, reason}); every
 * change is one Lua script that merges the change, bumps the version,
 * appends to the audit list `turnout:rollout:history` and PUBLISHes on
 * `turnout:rollout:changed`.  Each proxy applies a notice at once and
 * re-reads the key every second and after every reconnect, so a lost
 * notice costs at most a second.  With no shared state the environment's
 * values are in force.  FORCE_LEGACY_QUEUE=true in a proxy's own
 * environment beats the shared state in that proxy. */
#ifndef TURNOUT_ROLLOUT_H
#define TURNOUT_ROLLOUT_H

#include <stdbool.h>

#include "pmetrics.h"

typedef struct proxy proxy;
typedef struct rollout rollout;
typedef struct json_t json_t;
struct evhttp_request;

#define ROLLOUT_KEY "turnout:rollout"
#define ROLLOUT_HISTORY "turnout:rollout:history"
#define ROLLOUT_CHANNEL "turnout:rollout:changed"
#define ROLLOUT_HISTORY_MAX 1000

rollout *rollout_new(proxy *p, char err[256]);
void rollout_free(rollout *ro);

/* Applies the state in force (shared, else environment; the environment's
 * kill switch always) to the router and the gauges.  Called after a
 * reload too. */
void rollout_apply(rollout *ro);

/* The state in force as the API shows it; new reference. */
json_t *rollout_view(const rollout *ro);

/* The shared state's version (0: none in Redis yet). */
long long rollout_version(const rollout *ro);

/* Canary and admin writes: merges `patch` (borrowed) into the shared
 * state when its version is still `expected` (-1: any), with audit entry.
 * cb gets the new state JSON (NULL + err on failure, NULL + NULL err when
 * the version had moved).  0 when sent. */
typedef void (*rollout_cb)(const char *state, const char *err, void *arg);
int rollout_update(rollout *ro, json_t *patch, const char *by, const char *reason, long long expected,
                   rollout_cb cb, void *arg) __attribute__((warn_unused_result));

/* GET|PUT /admin/rollout, GET /admin/rollout/history. */
void rollout_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0);

/* Who wrote, for the audit list: the token's label and the optional
 * X-Turnout-Actor header ("admin", "admin (alice)"). */
void rollout_actor(proxy *p, struct evhttp_request *req, char out[128]);

#endif
