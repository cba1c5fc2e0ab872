/* canary — walks the rollout through ROLLOUT_STEPS while the evidence is
 * good and rolls it back by itself when it is not (like Flagger or Argo
 * Rollouts, for a queue migration).
 *
 * State: `turnout:canary` (JSON {status, step, steps, interval_s, window,
 * step_started_at, last_good, ref, last_check, reason, version, updated_at,
 * updated_by}); status idle | running | paused | rolled_back | completed |
 * aborted.  Every proxy reads it each second; one proxy leads
 * (`turnout:lock:canary`) and judges the running step (gates.h).
 * Completions and submission errors counted by any proxy during a step go
 * to that step's window, `turnout:canary:w:<window>:<path>` (a hash: n,
 * sys, sub, v, pf, s:<system error class>, b<latency bucket>), so the
 * verdict covers the whole fleet.  `ref` is what the step fixed at its
 * first judgeable look (gate_ref).  Transitions are compare-and-set on the
 * state's version and land in the rollout history list. */
#ifndef TURNOUT_CANARY_H
#define TURNOUT_CANARY_H

#include "evstatus.h"
#include "router.h"

typedef struct proxy proxy;
typedef struct canary canary;

#define CANARY_KEY "turnout:canary"
#define CANARY_LOCK "turnout:lock:canary"

canary *canary_new(proxy *p, char err[256]);
void canary_stop(canary *c);
void canary_free(canary *c);

/* A finished eval of `path`, classified, and its submit -> finished time
 * (< 0: unknown), for the running step's window; nothing when no step
 * runs. */
void canary_record(canary *c, enum route_path path, ev_class cls, double seconds);
/* A submission `path` could not take (5xx, fallback), likewise. */
void canary_submit_error(canary *c, enum route_path path);

/* The canary as GET /admin/canary shows it; new reference. */
typedef struct json_t json_t;
json_t *canary_view(canary *c);

/* An admin action ("start", "pause", "resume", "abort") by `by`, decided
 * on the state as Redis holds it now (re-read and decided again, up to
 * three times, when another proxy writes first).  `done` is called once,
 * later: 200 with what changed once it is in force here, or the refusal
 * (409 with its code, 503 when Redis is away).  -1: not started (done is
 * never called). */
typedef void (*canary_done_fn)(int status, const char *code, const char *msg, int retry_after, void *arg);
int canary_act(canary *c, const char *action, const char *by, canary_done_fn done, void *arg);

#endif
