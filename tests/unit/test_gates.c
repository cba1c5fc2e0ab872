/* The canary's gates: samples first, then error ratio, then p99. */
#include "gates.h"
#include "unit.h"

static void fill(gate_stats *s, long long n, long long err, double seconds)
{
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->err = err;
    s->buckets[gate_bucket(seconds)] = n;
}

static void test_buckets(void)
{
    CHECK_EQ_INT(gate_bucket(0), 0);
    CHECK_EQ_INT(gate_bucket(0.001), 0);
    CHECK_EQ_INT(gate_bucket(0.002), 3);       /* 2 ms = 2^(4/4): upper edge of bucket 3 */
    CHECK_EQ_INT(gate_bucket(0.0021), 4);
    CHECK_EQ_INT(gate_bucket(1e9), GATE_NBUCKETS - 1);
    gate_stats s;
    fill(&s, 10, 0, 0.5);
    double p = gate_p99(&s);
    CHECK(p >= 0.5 && p < 0.5 * 1.19 + 1e-9); /* the edge at or just above */
    memset(&s, 0, sizeof(s));
    CHECK(gate_p99(&s) == 0);
    /* 99 fast and 1 slow: p99 is the fast edge; 98 + 2: the slow one */
    memset(&s, 0, sizeof(s));
    s.buckets[gate_bucket(0.01)] = 99;
    s.buckets[gate_bucket(5)] = 1;
    CHECK(gate_p99(&s) < 0.02);
    s.buckets[gate_bucket(0.01)] = 98;
    s.buckets[gate_bucket(5)] = 2;
    CHECK(gate_p99(&s) >= 5);
}

static void test_verdicts(void)
{
    gate_cfg cfg = {0.05, 2.0, 20};
    gate_stats n, l;
    gate_result r;
    fill(&n, 19, 0, 0.1); /* one short of the minimum: hold, whatever else */
    fill(&l, 100, 0, 0.1);
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.overall, GATE_HOLD);
    CHECK_EQ_INT(r.samples, GATE_HOLD);
    CHECK_CONTAINS(r.why, "too few");
    fill(&n, 40, 19, 0.1); /* even when everything fails */
    fill(&l, 5, 0, 0.1);
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.overall, GATE_HOLD);

    fill(&n, 40, 2, 0.1); /* 5 % vs 0 % + 5 %: pass at the edge */
    fill(&l, 40, 0, 0.1);
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.error, GATE_PASS);
    CHECK_EQ_INT(r.overall, GATE_PASS);
    fill(&n, 40, 3, 0.1); /* 7.5 %: fail */
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.error, GATE_FAIL);
    CHECK_EQ_INT(r.overall, GATE_FAIL);
    CHECK_CONTAINS(r.why, "error_ratio");

    fill(&n, 40, 0, 0.35); /* p99 0.35 s vs 2 x 0.1 s: fail */
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.latency, GATE_FAIL);
    CHECK_EQ_INT(r.overall, GATE_FAIL);
    CHECK_CONTAINS(r.why, "latency_p99");
    fill(&n, 40, 0, 0.15); /* 0.15 s: within 2 x */
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.latency, GATE_PASS);
    CHECK(r.p99_new > 0.1 && r.p99_legacy >= 0.1);
    /* a legacy path that is all failures does not make a failing new path pass by ratio alone */
    fill(&l, 40, 40, 0.1);
    fill(&n, 40, 40, 0.1);
    gate_judge(&n, &l, &cfg, &r);
    CHECK_EQ_INT(r.error, GATE_PASS);
}

int main(void)
{
    RUN(test_buckets);
    RUN(test_verdicts);
    UNIT_END();
}
