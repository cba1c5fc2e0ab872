#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

const double metrics_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};
const size_t metrics_latency_nbuckets = sizeof(metrics_latency_buckets) / sizeof(double);

struct metrics_family {
    enum metrics_kind kind;
    const char *name, *help;
    size_t ndims;
    metrics_dim dims[METRICS_MAX_DIMS];
    size_t nseries;
    const double *buckets; /* borrowed */
    size_t nbuckets;
    /* counter/gauge: values[nseries].  histogram: per series nbuckets+1
     * non-cumulative counts (last = +Inf), then the sum, in `values`. */
    double *values;
    struct metrics_family *next;
};

struct metrics_registry {
    metrics_family *head, *tail;
};

metrics_registry *metrics_registry_new(void)
{
    return calloc(1, sizeof(metrics_registry));
}

void metrics_registry_free(metrics_registry *r)
{
    if (!r) return;
    metrics_family *f = r->head;
    while (f) {
        metrics_family *next = f->next;
        free(f->values);
        free(f);
        f = next;
    }
    free(r);
}

static size_t stride(const metrics_family *f)
{
    return f->kind == METRICS_HISTOGRAM ? f->nbuckets + 2 : 1;
}

metrics_family *metrics_family_add(metrics_registry *r, enum metrics_kind kind,
                                   const char *name, const char *help, size_t ndims,
                                   const metrics_dim *dims, const double *buckets,
                                   size_t nbuckets)
{
    if (!r || ndims > METRICS_MAX_DIMS || (kind == METRICS_HISTOGRAM && !buckets)) return NULL;
    metrics_family *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->kind = kind;
    f->name = name;
    f->help = help;
    f->ndims = ndims;
    f->nseries = 1;
    for (size_t i = 0; i < ndims; i++) {
        f->dims[i] = dims[i];
        f->nseries *= dims[i].nvalues;
    }
    if (kind == METRICS_HISTOGRAM) {
        f->buckets = buckets;
        f->nbuckets = nbuckets;
    }
    f->values = calloc(f->nseries * stride(f), sizeof(double));
    if (!f->values) {
        free(f);
        return NULL;
    }
    if (r->tail) r->tail->next = f;
    else r->head = f;
    r->tail = f;
    return f;
}

size_t metrics_at(const metrics_family *f, const size_t *coords)
{
    size_t idx = 0;
    for (size_t i = 0; i < f->ndims; i++) idx = idx * f->dims[i].nvalues + coords[i];
    return idx;
}

size_t metrics_nseries(const metrics_family *f) { return f->nseries; }

size_t metrics_dim_find(const metrics_dim *d, const char *value)
{
    for (size_t i = 0; i < d->nvalues; i++)
        if (strcmp(d->values[i], value) == 0) return i;
    return (size_t)-1;
}

void metrics_add(metrics_family *f, size_t series, double v)
{
    if (series < f->nseries && f->kind != METRICS_HISTOGRAM) f->values[series] += v;
}

void metrics_set(metrics_family *f, size_t series, double v)
{
    if (series < f->nseries && f->kind == METRICS_GAUGE) f->values[series] = v;
}

void metrics_observe(metrics_family *f, size_t series, double v)
{
    if (series >= f->nseries || f->kind != METRICS_HISTOGRAM) return;
    double *h = f->values + series * stride(f);
    size_t b = 0;
    while (b < f->nbuckets && v > f->buckets[b]) b++;
    h[b] += 1;
    h[f->nbuckets + 1] += v;
}

double metrics_get(const metrics_family *f, size_t series)
{
    if (series >= f->nseries) return 0;
    if (f->kind != METRICS_HISTOGRAM) return f->values[series];
    const double *h = f->values + series * stride(f);
    double n = 0;
    for (size_t b = 0; b <= f->nbuckets; b++) n += h[b];
    return n;
}

double metrics_hist_sum(const metrics_family *f, size_t series)
{
    if (series >= f->nseries || f->kind != METRICS_HISTOGRAM) return 0;
    return f->values[series * stride(f) + f->nbuckets + 1];
}

double metrics_quantile_of(const double *bounds, size_t nbuckets, const double *h, double q)
{
    double total = 0;
    for (size_t b = 0; b <= nbuckets; b++) total += h[b];
    if (total <= 0 || nbuckets == 0) return NAN;
    double rank = q * total, seen = 0;
    for (size_t b = 0; b <= nbuckets; b++) {
        if (seen + h[b] >= rank && h[b] > 0) {
            if (b == nbuckets) return bounds[nbuckets - 1]; /* +Inf: last bound */
            double lo = b == 0 ? 0 : bounds[b - 1];
            return lo + (bounds[b] - lo) * ((rank - seen) / h[b]);
        }
        seen += h[b];
    }
    return bounds[nbuckets - 1];
}

double metrics_hist_quantile(const metrics_family *f, size_t series, double q)
{
    if (f->kind != METRICS_HISTOGRAM) return NAN;
    return metrics_quantile_of(f->buckets, f->nbuckets, f->values + series * stride(f), q);
}

const double *metrics_hist_counts(const metrics_family *f, size_t series, const double **bounds, size_t *nbuckets)
{
    if (f->kind != METRICS_HISTOGRAM || series >= f->nseries) return NULL;
    *bounds = f->buckets;
    *nbuckets = f->nbuckets;
    return f->values + series * stride(f);
}

/* Label values are escaped as the text format requires: \\, \", \n. */
static void put_escaped(struct evbuffer *out, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        if (*s != '\\' && *s != '"' && *s != '\n') continue;
        evbuffer_add(out, run, (size_t)(s - run));
        evbuffer_add(out, *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : "\\n", 2);
        run = s + 1;
    }
    evbuffer_add(out, run, (size_t)(s - run));
}

/* Writes {a="x",b="y"[,le="..."]} for series `idx`. */
static void put_labels(struct evbuffer *out, const metrics_family *f, size_t idx, const char *le)
{
    if (f->ndims == 0 && !le) return;
    size_t coords[METRICS_MAX_DIMS];
    for (size_t i = f->ndims; i-- > 0;) {
        coords[i] = idx % f->dims[i].nvalues;
        idx /= f->dims[i].nvalues;
    }
    evbuffer_add(out, "{", 1);
    for (size_t i = 0; i < f->ndims; i++) {
        evbuffer_add_printf(out, "%s%s=\"", i ? "," : "", f->dims[i].name);
        put_escaped(out, f->dims[i].values[coords[i]]);
        evbuffer_add(out, "\"", 1);
    }
    if (le) evbuffer_add_printf(out, "%sle=\"%s\"", f->ndims ? "," : "", le);
    evbuffer_add(out, "}", 1);
}

/* Shortest text that reads back as the same double; integers without ".0". */
static void fmt_num(char *buf, size_t n, double v)
{
    if (isnan(v)) snprintf(buf, n, "NaN");
    else if (isinf(v)) snprintf(buf, n, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(long long)v && fabs(v) < 1e15) snprintf(buf, n, "%lld", (long long)v);
    else {
        snprintf(buf, n, "%.15g", v);
        if (strtod(buf, NULL) != v) snprintf(buf, n, "%.17g", v);
    }
}

int metrics_render(const metrics_registry *r, struct evbuffer *out)
{
    char num[40], le[40];
    for (const metrics_family *f = r->head; f; f = f->next) {
        static const char *const kinds[] = {"counter", "gauge", "histogram"};
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                            kinds[f->kind]);
        for (size_t s = 0; s < f->nseries; s++) {
            if (f->kind != METRICS_HISTOGRAM) {
                fmt_num(num, sizeof(num), f->values[s]);
                evbuffer_add_printf(out, "%s", f->name);
                put_labels(out, f, s, NULL);
                evbuffer_add_printf(out, " %s\n", num);
                continue;
            }
            const double *h = f->values + s * stride(f);
            double cum = 0;
            for (size_t b = 0; b <= f->nbuckets; b++) {
                cum += h[b];
                if (b < f->nbuckets) fmt_num(le, sizeof(le), f->buckets[b]);
                else snprintf(le, sizeof(le), "+Inf");
                fmt_num(num, sizeof(num), cum);
                evbuffer_add_printf(out, "%s_bucket", f->name);
                put_labels(out, f, s, le);
                evbuffer_add_printf(out, " %s\n", num);
            }
            fmt_num(num, sizeof(num), h[f->nbuckets + 1]);
            evbuffer_add_printf(out, "%s_sum", f->name);
            put_labels(out, f, s, NULL);
            evbuffer_add_printf(out, " %s\n", num);
            fmt_num(num, sizeof(num), cum);
            evbuffer_add_printf(out, "%s_count", f->name);
            put_labels(out, f, s, NULL);
            evbuffer_add_printf(out, " %s\n", num);
        }
    }
    return 0;
}

json_t *metrics_to_json(const metrics_registry *r)
{
    json_t *root = json_object();
    if (!root) return NULL;
    for (const metrics_family *f = r->head; f; f = f->next) {
        json_t *arr = json_array();
        if (!arr || json_object_set_new(root, f->name, arr) != 0) goto oom;
        for (size_t s = 0; s < f->nseries; s++) {
            json_t *labels = json_object(), *item = json_object();
            if (!labels || !item) {
                json_decref(labels);
                json_decref(item);
                goto oom;
            }
            size_t idx = s;
            for (size_t i = f->ndims; i-- > 0;) {
                json_object_set_new(labels, f->dims[i].name,
                                    json_string(f->dims[i].values[idx % f->dims[i].nvalues]));
                idx /= f->dims[i].nvalues;
            }
            json_object_set_new(item, "labels", labels);
            if (f->kind == METRICS_HISTOGRAM) {
                const double *h = f->values + s * stride(f);
                json_t *b = json_array();
                for (size_t k = 0; b && k <= f->nbuckets; k++) json_array_append_new(b, json_real(h[k]));
                json_object_set_new(item, "count", json_real(metrics_get(f, s)));
                json_object_set_new(item, "sum", json_real(h[f->nbuckets + 1]));
                if (b) json_object_set_new(item, "buckets", b);
            } else {
                json_object_set_new(item, "value", json_real(f->values[s]));
            }
            if (json_array_append_new(arr, item) != 0) goto oom;
        }
    }
    return root;
oom:
    json_decref(root);
    return NULL;
}
