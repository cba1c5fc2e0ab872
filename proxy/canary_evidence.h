/* canary_evidence — the canary's step windows in Redis and the verdict's
 * explanation; canary.c walks the steps with them. */
#ifndef TURNOUT_CANARY_EVIDENCE_H
#define TURNOUT_CANARY_EVIDENCE_H

#include "evstatus.h"
#include "gates.h"
#include "rbatch.h"
#include "rclient.h"
#include "router.h"

typedef struct json_t json_t;

#define CANARY_WINDOW_PREFIX "turnout:canary:w:"

/* Counts a finished eval (classified, submit -> finished seconds, < 0
 * unknown) or a refused submission of `path` into the window of the
 * running step `state` names; nothing when no step runs. */
void canary_window_count(rclient *rc, json_t *state, enum route_path path, ev_class cls, double seconds);
void canary_window_submit_error(rclient *rc, json_t *state, enum route_path path);

/* A window's HGETALL reply as gate_stats, and its system errors by class. */
void canary_read_window(const rbatch_reply *r, gate_stats *s, long long classes[EV_SYS_COUNT]);

/* The step's fixed reference (gate_ref) as the state keeps it, and back. */
gate_ref canary_ref_of(json_t *state);
json_t *canary_ref_json(const gate_ref *r);

/* The verdict, explained: per gate the estimate on each path with its
 * interval, the difference's bounds, the margins, the decision, and what
 * it needs to decide.  New reference. */
json_t *canary_check_json(const gate_result *g, const gate_stats *fresh, const gate_stats *against,
                          const long long cls_new[EV_SYS_COUNT], const long long cls_leg[EV_SYS_COUNT]);

#endif
