/* stats — GET /api/stats, the JSON the built-in page draws: per path, the
 * submit request rate, error ratio and latency quantiles, completions and
 * their latency, over windows of this proxy's own metrics (a snapshot
 * every STATS_STEP_S seconds, STATS_POINTS kept: the last 10 minutes), plus
 * the shared state from Redis: queue depth, DLQ with its newest entries,
 * rollout and canary state with the latest history, shadow results. */
#ifndef TURNOUT_STATS_H
#define TURNOUT_STATS_H

typedef struct proxy proxy;
typedef struct stats stats;
struct evhttp_request;

#define STATS_STEP_S 2
#define STATS_POINTS 300

stats *stats_new(proxy *p);
void stats_free(stats *s);

void stats_api_handle(proxy *p, struct evhttp_request *req, double t0);

#endif
