/* metrics — a registry of metric families with fixed label dimensions.
 *
 * Every label takes values from a list fixed at start-up, so every series
 * exists (at zero) from the start and a series is addressed by its index:
 * the mixed-radix number of its label value indexes (metrics_at()).  One
 * process, one thread: updates are plain arithmetic, no locks.  The registry
 * renders Prometheus text format 0.0.4 and a JSON view for /api/stats. */
#ifndef TURNOUT_METRICS_H
#define TURNOUT_METRICS_H

#include <stddef.h>

struct evbuffer;
typedef struct json_t json_t;

typedef struct metrics_registry metrics_registry;
typedef struct metrics_family metrics_family;

enum metrics_kind { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

typedef struct metrics_dim {
    const char *name;            /* label name */
    const char *const *values;   /* label values; borrowed, must outlive the registry */
    size_t nvalues;
} metrics_dim;

#define METRICS_MAX_DIMS 4

/* Histogram buckets shared by every latency histogram, so paths compare. */
extern const double metrics_latency_buckets[];
extern const size_t metrics_latency_nbuckets;

metrics_registry *metrics_registry_new(void);
void metrics_registry_free(metrics_registry *r);

/* Adds a family; name and help are borrowed (string literals).  For
 * histograms, buckets are upper bounds in increasing order (+Inf implied).
 * Returns NULL on out of memory or invalid arguments. */
metrics_family *metrics_family_add(metrics_registry *r, enum metrics_kind kind,
                                   const char *name, const char *help,
                                   size_t ndims, const metrics_dim *dims,
                                   const double *buckets, size_t nbuckets);

/* Index of the series whose label value indexes are coords[0..ndims). */
size_t metrics_at(const metrics_family *f, const size_t *coords);
size_t metrics_nseries(const metrics_family *f);

void metrics_add(metrics_family *f, size_t series, double v);  /* counter, gauge */
void metrics_set(metrics_family *f, size_t series, double v);  /* gauge */
void metrics_observe(metrics_family *f, size_t series, double v); /* histogram */
double metrics_get(const metrics_family *f, size_t series);    /* value, or histogram count */
double metrics_hist_sum(const metrics_family *f, size_t series);
/* Estimated quantile q (0..1) of a histogram series by linear interpolation
 * inside the bucket, as Prometheus' histogram_quantile does; NaN if empty. */
double metrics_hist_quantile(const metrics_family *f, size_t series, double q);

/* The same over explicit non-cumulative counts h[0..nbuckets] (last = +Inf). */
double metrics_quantile_of(const double *bounds, size_t nbuckets, const double *h, double q);
/* A histogram series' nbuckets+1 non-cumulative counts (borrowed; last =
 * +Inf) and its bounds; NULL for other kinds. */
const double *metrics_hist_counts(const metrics_family *f, size_t series, const double **bounds, size_t *nbuckets);

/* Index of `value` among a dimension's values, or (size_t)-1. */
size_t metrics_dim_find(const metrics_dim *d, const char *value);

/* Appends the Prometheus text exposition of every family.  0 or -1 (OOM). */
int metrics_render(const metrics_registry *r, struct evbuffer *out)
    __attribute__((warn_unused_result));

/* New JSON object {name: [{labels:{..}, value|count,sum,buckets}, ...]}; NULL on OOM. */
json_t *metrics_to_json(const metrics_registry *r);

#endif
