/* The canary's judge (gates.c): the bounds, each gate's decision, the
 * legacy window it compares with, and what it says.  tests/sim runs the
 * same code over thousands of simulated canaries. */
#include "gates.h"
#include "pconfig.h"
#include "unit.h"

static gate_cfg cfg_default(void) { return gate_cfg_defaults(5); }

static const char *no_env(const char *name, void *ud)
{
    (void)name;
    (void)ud;
    return NULL;
}

/* The simulation's figures are the shipped defaults' only if these agree. */
static void test_defaults_are_the_proxys(void)
{
    proxy_settings s = {0};
    char errs[2048] = "";
    CHECK_EQ_INT(pconfig_load(&s, no_env, NULL, errs, sizeof(errs)), 0);
    gate_cfg c = gate_cfg_defaults(5);
    CHECK(s.gate_alpha == c.alpha && s.gate_min_samples == c.min_samples);
    CHECK(s.gate_latency_quantile == c.latency_quantile);
    for (int g = 0; g < GATE_COUNT; g++)
        CHECK(s.gate_margin[g] == c.margin[g] && s.gate_pass_margin[g] == c.pass_margin[g]);
    pconfig_free(&s);
}

/* n finished evals: `sys` system errors, the rest ran, `fail` of them
 * failed; their latencies split between `fast` and `slow` seconds, `nslow`
 * of them slow. */
static void fill(gate_stats *s, long long n, long long sys, long long fail, double fast, double slow, long long nslow)
{
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->sys = sys;
    s->verdicts = n - sys;
    s->prog_fail = fail;
    s->buckets[gate_bucket(fast)] += s->verdicts - nslow;
    s->buckets[gate_bucket(slow)] += nslow;
}

static void test_buckets(void)
{
    CHECK_EQ_INT(gate_bucket(0), 0);
    CHECK_EQ_INT(gate_bucket(0.001), 0);
    CHECK_EQ_INT(gate_bucket(0.002), 3); /* 2 ms = 2^(4/4): upper edge of bucket 3 */
    CHECK_EQ_INT(gate_bucket(0.0021), 4);
    CHECK_EQ_INT(gate_bucket(1e9), GATE_NBUCKETS - 1);
    CHECK(gate_bucket_edge(gate_bucket(0.5)) >= 0.5 && gate_bucket_edge(gate_bucket(0.5)) < 0.5 * 1.19 + 1e-9);
}

static void test_bounds(void)
{
    double lo, hi, lo2, hi2;
    /* equal ratios: the interval holds 0, narrows with more evals */
    gate_diff_bounds(100, 10, 100, 10, 0.01, &lo, &hi);
    CHECK(lo < 0 && hi > 0);
    gate_diff_bounds(10000, 1000, 10000, 1000, 0.01, &lo2, &hi2);
    CHECK(lo2 < 0 && hi2 > 0 && hi2 - lo2 < (hi - lo) / 5);
    /* a smaller alpha widens it */
    gate_diff_bounds(10000, 1000, 10000, 1000, 0.0001, &lo, &hi);
    CHECK(hi - lo > hi2 - lo2);
    /* a clear difference excludes 0 */
    gate_diff_bounds(2000, 400, 2000, 200, 0.001, &lo, &hi);
    CHECK(lo > 0.05 && hi < 0.15);
    /* no events on either side still has width (smoothed variance) */
    gate_diff_bounds(100, 0, 100, 0, 0.01, &lo, &hi);
    CHECK(lo < -0.01 && hi > 0.01);
    /* nothing on a side: the whole range */
    gate_diff_bounds(0, 0, 100, 0, 0.01, &lo, &hi);
    CHECK(lo == -1 && hi == 1);
}

static void test_too_few(void)
{
    gate_cfg cfg = cfg_default();
    gate_stats n, l;
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    fill(&n, 49, 49, 0, 0.1, 0.1, 0); /* every one an error, one short of the minimum: hold */
    fill(&l, 500, 0, 0, 0.1, 0.1, 0);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.overall, GATE_HOLD);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_HOLD);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].need[0], 1);
    CHECK_CONTAINS(r.why, "needs about 1 more on the new path");
    CHECK_EQ_INT(ref.source, 0); /* legacy had enough: the step compares with it */
}

static void test_program_failures_are_not_system_errors(void)
{
    /* 40 % of programs fail on both paths, 2000 evals each: the system gate
     * sees no error, the program gate no difference */
    gate_cfg cfg = cfg_default();
    gate_stats n, l;
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    fill(&n, 2000, 0, 800, 1, 1, 0);
    fill(&l, 2000, 0, 800, 1, 1, 0);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_PASS);
    CHECK(r.g[GATE_SYSTEM].est[0] == 0);
    CHECK(r.g[GATE_PROGRAM].est[0] > 0.39 && r.g[GATE_PROGRAM].est[0] < 0.41);
    CHECK(r.g[GATE_PROGRAM].verdict != GATE_FAIL);
}

static void test_system_error_regression_fails(void)
{
    gate_cfg cfg = cfg_default();
    gate_stats n, l;
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    fill(&n, 1000, 60, 100, 1, 1, 0); /* 6 % vs 0.5 % */
    fill(&l, 1000, 5, 100, 1, 1, 0);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_FAIL);
    CHECK_EQ_INT(r.overall, GATE_FAIL);
    CHECK(r.g[GATE_SYSTEM].diff_lo > cfg.margin[GATE_SYSTEM]);
    CHECK_CONTAINS(r.why, "system_errors: new 6.00% vs legacy 0.50%");
    /* submission errors count too, on top of finished evals */
    fill(&n, 1000, 5, 100, 1, 1, 0);
    n.sub_err = 60;
    ref = (gate_ref)GATE_REF_INIT;
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_FAIL);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].n[0], 1060);
    /* the same counts with the new path better: no failure */
    fill(&n, 1000, 5, 100, 1, 1, 0);
    fill(&l, 1000, 60, 100, 1, 1, 0);
    ref = (gate_ref)GATE_REF_INIT;
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_PASS);
}

static void test_alpha_shared_among_steps(void)
{
    /* a difference just decisive for one step is not for twenty */
    gate_cfg cfg = cfg_default();
    gate_stats n, l;
    gate_result r;
    gate_ref ref;
    long long x;
    for (x = 100; x < 400; x++) {
        fill(&n, 2000, 0, x, 1, 1, 0);
        fill(&l, 2000, 0, 100, 1, 1, 0);
        cfg.nsteps = 1;
        ref = (gate_ref)GATE_REF_INIT;
        gate_judge(&n, &l, NULL, &cfg, &ref, &r);
        if (r.g[GATE_PROGRAM].verdict == GATE_FAIL) break;
    }
    CHECK(x < 400);
    cfg.nsteps = 20;
    ref = (gate_ref)GATE_REF_INIT;
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK(r.g[GATE_PROGRAM].verdict != GATE_FAIL);
    CHECK(r.alpha_fail < 0.01 / 20 / 3 + 1e-12 && r.alpha_pass == 0.01);
}

static void test_latency_threshold(void)
{
    gate_cfg cfg = cfg_default();
    gate_stats n = {0}, l = {0};
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    /* 100 legacy evals: 90 at 1 s, 10 at 3 s; the p90 is the 1 s bucket */
    fill(&l, 100, 0, 0, 1, 3, 10);
    fill(&n, 100, 0, 0, 1, 3, 10);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(ref.bucket, gate_bucket(1));
    CHECK(r.latency_threshold_s >= 1 && r.latency_threshold_s < 1.2);
    CHECK_EQ_INT(ref.lat0[1], 100);
    CHECK_EQ_INT(ref.above0[1], 10);
    CHECK_EQ_INT(r.g[GATE_LATENCY].verdict, GATE_HOLD); /* nothing counted after the choice yet */
    CHECK_EQ_INT(r.g[GATE_LATENCY].n[0], 0);
    /* then 1000 more each: legacy as before, new path half of them slow */
    gate_stats n2, l2;
    fill(&l2, 1100, 0, 0, 1, 3, 110);
    fill(&n2, 1100, 0, 0, 1, 3, 510);
    gate_ref kept = ref;
    gate_judge(&n2, &l2, NULL, &cfg, &ref, &r);
    CHECK(memcmp(&kept, &ref, sizeof(ref)) == 0); /* fixed for the step */
    CHECK_EQ_INT(r.g[GATE_LATENCY].n[0], 1000);
    CHECK_EQ_INT(r.g[GATE_LATENCY].x[0], 500);
    CHECK_EQ_INT(r.g[GATE_LATENCY].x[1], 100);
    CHECK_EQ_INT(r.g[GATE_LATENCY].verdict, GATE_FAIL);
    CHECK_CONTAINS(r.why, "latency: new 50.00% vs legacy 10.00%");
}

static void test_baseline(void)
{
    /* at 100 % the legacy window stays empty: an earlier step's is used, whole */
    gate_cfg cfg = cfg_default();
    gate_stats n, l = {0}, base;
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    fill(&base, 3000, 3, 300, 1, 3, 300);
    fill(&n, 3000, 3, 300, 1, 3, 300);
    gate_judge(&n, &l, &base, &cfg, &ref, &r);
    CHECK_EQ_INT(ref.source, 1);
    CHECK(r.baseline);
    CHECK_EQ_INT(r.g[GATE_LATENCY].n[1], 2997);
    CHECK_EQ_INT(r.g[GATE_SYSTEM].verdict, GATE_PASS);
    CHECK_EQ_INT(r.g[GATE_PROGRAM].verdict, GATE_PASS);
    CHECK_CONTAINS(r.why, "legacy baseline");
    /* once fixed, the source does not move when the legacy window fills */
    fill(&l, 3000, 3, 300, 1, 3, 300);
    gate_judge(&n, &l, &base, &cfg, &ref, &r);
    CHECK_EQ_INT(ref.source, 1);
}

static void test_pass_needs_confidence(void)
{
    /* identical, but few: hold, with how many more it needs */
    gate_cfg cfg = cfg_default();
    gate_stats n, l;
    gate_ref ref = GATE_REF_INIT;
    gate_result r;
    fill(&n, 200, 1, 20, 1, 1, 0);
    fill(&l, 200, 1, 20, 1, 1, 0);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.overall, GATE_HOLD);
    CHECK_EQ_INT(r.g[GATE_PROGRAM].verdict, GATE_HOLD);
    CHECK(r.g[GATE_PROGRAM].need[0] > 100 && r.g[GATE_PROGRAM].need[0] < 5000);
    /* with that many more (same ratios) it passes */
    long long more = r.g[GATE_PROGRAM].need[0];
    long long total = 200 + more + 10;
    fill(&n, total, total / 200, total / 10, 1, 1, 0);
    fill(&l, total, total / 200, total / 10, 1, 1, 0);
    gate_judge(&n, &l, NULL, &cfg, &ref, &r);
    CHECK_EQ_INT(r.g[GATE_PROGRAM].verdict, GATE_PASS);
    CHECK(r.g[GATE_PROGRAM].diff_hi <= cfg.pass_margin[GATE_PROGRAM]);
}

int main(void)
{
    RUN(test_defaults_are_the_proxys);
    RUN(test_buckets);
    RUN(test_bounds);
    RUN(test_too_few);
    RUN(test_program_failures_are_not_system_errors);
    RUN(test_system_error_regression_fails);
    RUN(test_alpha_shared_among_steps);
    RUN(test_latency_threshold);
    RUN(test_baseline);
    RUN(test_pass_needs_confidence);
    UNIT_END();
}
