/* Prometheus text for counters, gauges and histograms; every series at zero
 * from the start; quantile estimates. */
#include <stdlib.h>

#include <event2/buffer.h>

#include "metrics.h"
#include "pmetrics.h"
#include "unit.h"

static char *render(metrics_registry *r)
{
    struct evbuffer *b = evbuffer_new();
    CHECK_EQ_INT(metrics_render(r, b), 0);
    size_t n = evbuffer_get_length(b);
    char *s = malloc(n + 1);
    evbuffer_remove(b, s, n);
    s[n] = '\0';
    evbuffer_free(b);
    return s;
}

static void test_counter_and_labels(void)
{
    static const char *const paths[] = {"legacy", "new"};
    static const char *const odd[] = {"a\"b\\c\nd"};
    metrics_registry *r = metrics_registry_new();
    metrics_dim d[2] = {{"path", paths, 2}, {"x", odd, 1}};
    metrics_family *c = metrics_family_add(r, METRICS_COUNTER, "t_total", "help text", 2, d, NULL, 0);
    size_t at[2] = {1, 0};
    metrics_add(c, metrics_at(c, at), 3);
    metrics_add(c, metrics_at(c, at), 0.5);
    char *s = render(r);
    CHECK_CONTAINS(s, "# HELP t_total help text\n# TYPE t_total counter\n");
    CHECK_CONTAINS(s, "t_total{path=\"legacy\",x=\"a\\\"b\\\\c\\nd\"} 0\n");
    CHECK_CONTAINS(s, "t_total{path=\"new\",x=\"a\\\"b\\\\c\\nd\"} 3.5\n");
    free(s);
    metrics_registry_free(r);
}

static void test_histogram(void)
{
    static const char *const paths[] = {"legacy", "new"};
    metrics_registry *r = metrics_registry_new();
    metrics_dim d[1] = {{"path", paths, 2}};
    metrics_family *h = metrics_family_add(r, METRICS_HISTOGRAM, "lat_seconds", "latency", 1, d,
                                           metrics_latency_buckets, metrics_latency_nbuckets);
    metrics_observe(h, 0, 0.0004);
    metrics_observe(h, 0, 0.003);
    metrics_observe(h, 0, 0.005); /* on a bound: counts in le="0.005" */
    metrics_observe(h, 0, 99);
    char *s = render(r);
    CHECK_CONTAINS(s, "# TYPE lat_seconds histogram\n");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"legacy\",le=\"0.0005\"} 1\n");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"legacy\",le=\"0.0025\"} 1\n");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"legacy\",le=\"0.005\"} 3\n");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"legacy\",le=\"10\"} 3\n");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"legacy\",le=\"+Inf\"} 4\n");
    CHECK_CONTAINS(s, "lat_seconds_count{path=\"legacy\"} 4\n");
    CHECK_CONTAINS(s, "lat_seconds_sum{path=\"legacy\"} 99.0084");
    CHECK_CONTAINS(s, "lat_seconds_bucket{path=\"new\",le=\"+Inf\"} 0\n");
    CHECK_EQ_INT((long long)metrics_get(h, 0), 4);
    /* 2 of 4 by 0.005: the median sits in (0.0025, 0.005] */
    double q = metrics_hist_quantile(h, 0, 0.5);
    CHECK(q > 0.0025 && q <= 0.005);
    CHECK(isnan(metrics_hist_quantile(h, 1, 0.5)));
    free(s);
    metrics_registry_free(r);
}

static void test_proxy_families_at_zero(void)
{
    pmetrics m;
    CHECK_EQ_INT(pmetrics_init(&m, "evaluation"), 0);
    char *s = render(m.reg);
    CHECK_CONTAINS(s, "turnout_requests_total{route=\"submit\",path=\"new\",code=\"202\"} 0\n");
    CHECK_CONTAINS(s, "turnout_requests_total{route=\"passthrough\",path=\"none\",code=\"5xx\"} 0\n");
    CHECK_CONTAINS(s, "turnout_request_duration_seconds_bucket{route=\"submit\",path=\"legacy\",le=\"0.0005\"} 0\n");
    CHECK_CONTAINS(s, "turnout_routing_decisions_total{path=\"new\",reason=\"fallback\"} 0\n");
    CHECK_CONTAINS(s, "turnout_queue_depth{queue=\"evaluation\",priority=\"9\"} 0\n");
    CHECK_CONTAINS(s, "turnout_eval_completion_seconds_count{path=\"new\"} 0\n");
    CHECK_CONTAINS(s, "turnout_build_info{version=\"");
    CHECK_CONTAINS(s, "turnout_rollout_percentage 0\n");
    pmetrics_request(&m, RT_SUBMIT, PATH_NEW, 202, 0.001);
    pmetrics_request(&m, RT_PASSTHROUGH, PATH_NONE, 418, 0.001);
    free(s);
    s = render(m.reg);
    CHECK_CONTAINS(s, "turnout_requests_total{route=\"submit\",path=\"new\",code=\"202\"} 1\n");
    CHECK_CONTAINS(s, "turnout_requests_total{route=\"passthrough\",path=\"none\",code=\"4xx\"} 1\n");
    CHECK_CONTAINS(s, "turnout_request_duration_seconds_bucket{route=\"submit\",path=\"new\",le=\"0.001\"} 1\n");
    free(s);
    CHECK_EQ_INT(pmetrics_code_index(404), 7);
    CHECK_STR(pm_code_names[pmetrics_code_index(299)], "2xx");
    pmetrics_free(&m);
}

int main(void)
{
    RUN(test_counter_and_labels);
    RUN(test_histogram);
    RUN(test_proxy_families_at_zero);
    UNIT_END();
}
