#include "gates.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const gate_verdict_names[3] = {"hold", "pass", "fail"};

int gate_bucket(double seconds)
{
    double ms = seconds * 1000.0;
    if (!(ms > 1.0)) return 0;
    int k = (int)ceil(4.0 * log2(ms)) - 1;
    if (k < 0) k = 0;
    return k >= GATE_NBUCKETS ? GATE_NBUCKETS - 1 : k;
}

static double bucket_edge(int k) { return pow(2.0, (k + 1) / 4.0) / 1000.0; }

double gate_p99(const gate_stats *s)
{
    long long total = 0;
    for (int k = 0; k < GATE_NBUCKETS; k++) total += s->buckets[k];
    if (total <= 0) return 0;
    double want = 0.99 * (double)total;
    long long cum = 0;
    for (int k = 0; k < GATE_NBUCKETS; k++) {
        cum += s->buckets[k];
        if ((double)cum >= want) return bucket_edge(k);
    }
    return bucket_edge(GATE_NBUCKETS - 1);
}

void gate_judge(const gate_stats *fresh, const gate_stats *legacy, const gate_cfg *cfg, gate_result *out)
{
    memset(out, 0, sizeof(*out));
    out->err_new = fresh->n ? (double)fresh->err / (double)fresh->n : 0;
    out->err_legacy = legacy->n ? (double)legacy->err / (double)legacy->n : 0;
    out->p99_new = gate_p99(fresh);
    out->p99_legacy = gate_p99(legacy);
    if (fresh->n < cfg->min_samples || legacy->n < cfg->min_samples) {
        out->samples = out->error = out->latency = out->overall = GATE_HOLD;
        snprintf(out->why, sizeof(out->why), "too few finished evals to judge: new %lld, legacy %lld (GATE_MIN_SAMPLES %lld)",
                 fresh->n, legacy->n, cfg->min_samples);
        return;
    }
    out->samples = GATE_PASS;
    out->error = out->err_new <= out->err_legacy + cfg->error_delta + 1e-12 ? GATE_PASS : GATE_FAIL;
    /* both p99s are bucket edges; the legacy one is at least the first edge */
    double floor_p99 = out->p99_legacy > 0 ? out->p99_legacy : bucket_edge(0);
    out->latency = out->p99_new <= cfg->latency_ratio * floor_p99 + 1e-12 ? GATE_PASS : GATE_FAIL;
    if (out->error == GATE_FAIL) {
        out->overall = GATE_FAIL;
        snprintf(out->why, sizeof(out->why), "error_ratio: new %.3f > legacy %.3f + %.3f (%lld/%lld vs %lld/%lld)",
                 out->err_new, out->err_legacy, cfg->error_delta, fresh->err, fresh->n, legacy->err, legacy->n);
    } else if (out->latency == GATE_FAIL) {
        out->overall = GATE_FAIL;
        snprintf(out->why, sizeof(out->why), "latency_p99: new %.3fs > %.2f x legacy %.3fs", out->p99_new,
                 cfg->latency_ratio, out->p99_legacy);
    } else {
        out->overall = GATE_PASS;
        snprintf(out->why, sizeof(out->why), "gates pass: error ratio new %.3f / legacy %.3f, p99 new %.3fs / legacy %.3fs, %lld / %lld evals",
                 out->err_new, out->err_legacy, out->p99_new, out->p99_legacy, fresh->n, legacy->n);
    }
}
