/* router — the routing rule of DESIGN §3, exactly, so anyone can recompute it. */
#ifndef TURNOUT_ROUTER_H
#define TURNOUT_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum route_path { PATH_LEGACY = 0, PATH_NEW, PATH_NONE, PATH_COUNT };
enum route_reason { REASON_FORCED = 0, REASON_DISABLED, REASON_PERCENTAGE, REASON_FALLBACK, REASON_COUNT };

extern const char *const route_path_names[PATH_COUNT];     /* legacy, new, none */

/* A route_path is a label (metrics, replies): legacy, new, or none for what
 * no path answered (refused, probes, the pass-through to the API).  What a
 * route record says when it names no known path (no record, or one of an
 * older shape) is PATH_UNKNOWN: never a label, never an index. */
#define PATH_UNKNOWN PATH_COUNT
extern const char *const route_reason_names[REASON_COUNT]; /* forced, disabled, percentage, fallback */

#define ROUTE_BUCKETS 10000

typedef struct route_state {
    bool force_legacy;
    bool enabled;
    double percentage; /* 0..1 */
    bool sticky;       /* false: random */
    const char *salt;  /* borrowed */
} route_state;

typedef struct route_decision {
    enum route_path path;
    enum route_reason reason;
    int bucket; /* -1 when no bucket was drawn (forced, disabled) */
} route_decision;

/* (first 8 bytes of SHA-256(salt ":" key), big-endian) mod 10000. */
int route_bucket(const char *salt, const char *key, size_t keylen);

/* Seeds the random-mode generator from the kernel; -1 on failure. */
int route_seed(void) __attribute__((warn_unused_result));

route_decision route_decide(const route_state *st, const char *key, size_t keylen);

#endif
