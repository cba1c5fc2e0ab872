#include "gates.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const gate_names[GATE_COUNT] = {"system_errors", "program_failures", "latency"};
const char *const gate_verdict_names[3] = {"hold", "pass", "fail"};

/* The boundary is tightest around this much information: about 250
 * effective pairs, i.e. 500 evals on each path.  Fixed in advance, as the
 * mixture's validity needs. */
#define TARGET_TIME 250.0
#define MAX_SCALE 1e7 /* "needs more" is not estimated beyond this many times the evals so far */

gate_cfg gate_cfg_defaults(int nsteps)
{
    gate_cfg c = {.alpha = 0.01, .nsteps = nsteps, .min_samples = 50, .latency_quantile = 0.9};
    c.margin[GATE_SYSTEM] = 0.002;
    c.pass_margin[GATE_SYSTEM] = 0.01;
    c.margin[GATE_PROGRAM] = 0;
    c.pass_margin[GATE_PROGRAM] = 0.05;
    c.margin[GATE_LATENCY] = 0.02;
    c.pass_margin[GATE_LATENCY] = 0.05;
    return c;
}

int gate_bucket(double seconds)
{
    double ms = seconds * 1000.0;
    if (!(ms > 1.0)) return 0;
    int k = (int)ceil(4.0 * log2(ms)) - 1;
    if (k < 0) k = 0;
    return k >= GATE_NBUCKETS ? GATE_NBUCKETS - 1 : k;
}

double gate_bucket_edge(int k) { return pow(2.0, (k + 1) / 4.0) / 1000.0; }

/* Half-width factor of the normal-mixture confidence sequence at `time`
 * (in samples), one-sided at level alpha: the two-sided boundary of
 * Robbins' normal mixture at 2 alpha, as a multiple of the standard error
 * (Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas: time-uniform central limit
 * theory and asymptotic confidence sequences).  Its constants, once per
 * alpha: */
typedef struct bnd {
    double l, rho2;
} bnd;

static bnd bnd_of(double alpha)
{
    double a2 = 2 * alpha < 0.5 ? 2 * alpha : 0.5;
    double l = log(1 / a2);
    return (bnd){l, (2 * l + log(2 * l + 1)) / TARGET_TIME};
}

static double boundary(double time, bnd b)
{
    double tr = time * b.rho2;
    return sqrt(2 * (tr + 1) / tr * (b.l + 0.5 * log(tr + 1)));
}

/* A regularized ratio for the variance only: never 0 or 1, so a path
 * with no event yet still has an honest spread. */
static double smooth(long long n, long long x) { return ((double)x + 0.5) / ((double)n + 1.0); }

static double var_of(long long n, long long x)
{
    double p = smooth(n, x);
    return p * (1 - p) / (double)n;
}

static double eff_time(double n1, double n2) { return 1.0 / (1.0 / n1 + 1.0 / n2); }

void gate_diff_bounds(long long n1, long long x1, long long n2, long long x2, double alpha, double *lo, double *hi)
{
    if (n1 <= 0 || n2 <= 0) {
        if (lo) *lo = -1;
        if (hi) *hi = 1;
        return;
    }
    double d = (double)x1 / (double)n1 - (double)x2 / (double)n2;
    double half = sqrt(var_of(n1, x1) + var_of(n2, x2)) * boundary(eff_time((double)n1, (double)n2), bnd_of(alpha));
    if (lo) *lo = fmax(-1.0, d - half);
    if (hi) *hi = fmin(1.0, d + half);
}

/* Times the current evals (both paths in proportion, the ratios as they
 * are) at which the half-width falls to `gap`; 0 when it never does. */
static double scale_needed(long long n1, long long x1, long long n2, long long x2, bnd alpha, double gap)
{
    if (!(gap > 0)) return 0;
    double w = var_of(n1, x1) + var_of(n2, x2), t = eff_time((double)n1, (double)n2);
    double lo = 0, hi = log(MAX_SCALE);
    if (sqrt(w / MAX_SCALE) * boundary(t * MAX_SCALE, alpha) > gap) return 0;
    for (int i = 0; i < 24; i++) { /* to about 1e-6 of the scale */
        double mid = (lo + hi) / 2, k = exp(mid);
        if (sqrt(w / k) * boundary(t * k, alpha) <= gap) hi = mid;
        else lo = mid;
    }
    return exp(hi);
}

static void path_interval(long long n, long long x, bnd b, double *est, double *lo, double *hi)
{
    if (n <= 0) {
        *est = 0;
        *lo = 0;
        *hi = 1;
        return;
    }
    double p = (double)x / (double)n;
    double half = sqrt(var_of(n, x)) * boundary((double)n, b);
    *est = p;
    *lo = fmax(0.0, p - half);
    *hi = fmin(1.0, p + half);
}

static void judge_one(gate_check *g, long long n1, long long x1, long long n2, long long x2, long long min_samples,
                      double alpha_fail, double alpha_pass)
{
    g->n[0] = n1, g->x[0] = x1, g->n[1] = n2, g->x[1] = x2;
    bnd bf = bnd_of(alpha_fail), bp = bnd_of(alpha_pass), both = bnd_of(alpha_pass / 2);
    path_interval(n1, x1, both, &g->est[0], &g->lo[0], &g->hi[0]);
    path_interval(n2, x2, both, &g->est[1], &g->lo[1], &g->hi[1]);
    g->diff = g->est[0] - g->est[1];
    g->need[0] = g->need[1] = 0;
    if (n1 < min_samples || n2 < min_samples) {
        g->verdict = GATE_HOLD;
        g->diff_lo = -1;
        g->diff_hi = 1;
        g->need[0] = n1 < min_samples ? min_samples - n1 : 0;
        g->need[1] = n2 < min_samples ? min_samples - n2 : 0;
        return;
    }
    gate_diff_bounds(n1, x1, n2, x2, alpha_fail, &g->diff_lo, NULL);
    gate_diff_bounds(n1, x1, n2, x2, alpha_pass, NULL, &g->diff_hi);
    if (g->diff_lo > g->margin) {
        g->verdict = GATE_FAIL;
    } else if (g->diff_hi <= g->pass_margin) {
        g->verdict = GATE_PASS;
    } else {
        g->verdict = GATE_HOLD;
        /* the nearer of the two decisions the estimate points at */
        double kp = scale_needed(n1, x1, n2, x2, bp, g->pass_margin - g->diff);
        double kf = scale_needed(n1, x1, n2, x2, bf, g->diff - g->margin);
        double k = kp > 0 && (kf <= 0 || kp < kf) ? kp : kf;
        for (int i = 0; i < 2; i++)
            g->need[i] = k > 0 ? (long long)ceil((k - 1) * (double)g->n[i]) + 1 : -1;
    }
}

static long long lat_total(const gate_stats *s)
{
    long long t = 0;
    for (int k = 0; k < GATE_NBUCKETS; k++) t += s->buckets[k];
    return t;
}

static long long lat_above(const gate_stats *s, int bucket)
{
    long long t = 0;
    for (int k = bucket + 1; k < GATE_NBUCKETS; k++) t += s->buckets[k];
    return t;
}

/* The smallest bucket whose upper edge has at least `q` of the samples at or below it. */
static int quantile_bucket(const gate_stats *s, double q)
{
    long long total = lat_total(s), cum = 0;
    for (int k = 0; k < GATE_NBUCKETS; k++) {
        cum += s->buckets[k];
        if ((double)cum >= q * (double)total) return k;
    }
    return GATE_NBUCKETS - 1;
}

static int pp(char *buf, size_t n, double v) { return snprintf(buf, n, "%+.1f", 100 * v); }

static size_t describe(char *out, size_t cap, size_t at, int id, const gate_check *g)
{
    if (at >= cap) return at;
    char d[16], lo[16], hi[16], m[16], pm[16];
    pp(d, sizeof(d), g->diff);
    pp(lo, sizeof(lo), g->diff_lo);
    pp(hi, sizeof(hi), g->diff_hi);
    pp(m, sizeof(m), g->margin);
    pp(pm, sizeof(pm), g->pass_margin);
    int w;
    if (g->verdict == GATE_FAIL)
        w = snprintf(out + at, cap - at, "%s: new %.2f%% vs legacy %.2f%% (%lld/%lld vs %lld/%lld); new - legacy is at least %s pp, above the margin %s pp",
                     gate_names[id], 100 * g->est[0], 100 * g->est[1], g->x[0], g->n[0], g->x[1], g->n[1], lo, m);
    else if (g->verdict == GATE_PASS)
        w = snprintf(out + at, cap - at, "%s %s pp (at most %s, pass below %s)", gate_names[id], d, hi, pm);
    else if (g->need[0] < 0)
        w = snprintf(out + at, cap - at, "%s %s pp in [%s, %s]: undecided at this estimate", gate_names[id], d, lo, hi);
    else
        w = snprintf(out + at, cap - at, "%s needs about %lld more on the new path and %lld on legacy", gate_names[id],
                     g->need[0], g->need[1]);
    return w < 0 ? at : at + (size_t)w;
}

void gate_judge(const gate_stats *fresh, const gate_stats *legacy, const gate_stats *baseline, const gate_cfg *cfg,
                gate_ref *ref, gate_result *out)
{
    memset(out, 0, sizeof(*out));
    int nsteps = cfg->nsteps > 0 ? cfg->nsteps : 1;
    out->alpha_pass = cfg->alpha;
    out->alpha_fail = cfg->alpha / ((double)nsteps * GATE_COUNT);
    for (int i = 0; i < GATE_COUNT; i++) {
        out->g[i].margin = cfg->margin[i];
        out->g[i].pass_margin = cfg->pass_margin[i];
    }
    /* which legacy window: fixed at the first look that can judge */
    if (ref->source < 0) {
        if (legacy->n + legacy->sub_err >= cfg->min_samples) ref->source = 0;
        else if (baseline && baseline->n >= cfg->min_samples) ref->source = 1;
    }
    const gate_stats *against = ref->source == 1 && baseline ? baseline : legacy;
    out->baseline = ref->source == 1;
    if (ref->bucket < 0 && ref->source >= 0 && lat_total(against) >= cfg->min_samples) {
        ref->bucket = quantile_bucket(against, cfg->latency_quantile);
        ref->lat0[0] = lat_total(fresh);
        ref->above0[0] = lat_above(fresh, ref->bucket);
        /* an earlier step's window no longer grows: all of it is used */
        ref->lat0[1] = ref->source == 1 ? 0 : lat_total(against);
        ref->above0[1] = ref->source == 1 ? 0 : lat_above(against, ref->bucket);
    }
    judge_one(&out->g[GATE_SYSTEM], fresh->n + fresh->sub_err, fresh->sys + fresh->sub_err, against->n + against->sub_err,
              against->sys + against->sub_err, cfg->min_samples, out->alpha_fail, out->alpha_pass);
    judge_one(&out->g[GATE_PROGRAM], fresh->verdicts, fresh->prog_fail, against->verdicts, against->prog_fail,
              cfg->min_samples, out->alpha_fail, out->alpha_pass);
    if (ref->bucket >= 0) {
        out->latency_threshold_s = gate_bucket_edge(ref->bucket);
        judge_one(&out->g[GATE_LATENCY], lat_total(fresh) - ref->lat0[0], lat_above(fresh, ref->bucket) - ref->above0[0],
                  lat_total(against) - ref->lat0[1], lat_above(against, ref->bucket) - ref->above0[1], cfg->min_samples,
                  out->alpha_fail, out->alpha_pass);
    } else {
        judge_one(&out->g[GATE_LATENCY], 0, 0, lat_total(against), 0, cfg->min_samples, out->alpha_fail,
                  out->alpha_pass);
        out->g[GATE_LATENCY].need[0] = cfg->min_samples;
        out->g[GATE_LATENCY].need[1] = cfg->min_samples - lat_total(against) > 0 ? cfg->min_samples - lat_total(against) : 0;
    }

    int failed = -1, holding = 0;
    for (int i = 0; i < GATE_COUNT; i++) {
        if (out->g[i].verdict == GATE_FAIL && failed < 0) failed = i;
        if (out->g[i].verdict == GATE_HOLD) holding++;
    }
    size_t at = 0, cap = sizeof(out->why);
    if (failed >= 0) {
        out->overall = GATE_FAIL;
        at = describe(out->why, cap, 0, failed, &out->g[failed]);
    } else if (!holding) {
        out->overall = GATE_PASS;
        at = (size_t)snprintf(out->why, cap, "gates pass: ");
        for (int i = 0; i < GATE_COUNT; i++) {
            if (i && at + 2 < cap) at += (size_t)snprintf(out->why + at, cap - at, "; ");
            at = describe(out->why, cap, at, i, &out->g[i]);
        }
    } else {
        out->overall = GATE_HOLD;
        at = (size_t)snprintf(out->why, cap, "holding: ");
        int k = 0;
        for (int i = 0; i < GATE_COUNT; i++) {
            if (out->g[i].verdict != GATE_HOLD) continue;
            if (k++ && at + 2 < cap) at += (size_t)snprintf(out->why + at, cap - at, "; ");
            at = describe(out->why, cap, at, i, &out->g[i]);
        }
    }
    if (out->baseline && at < cap) snprintf(out->why + at, cap - at, " (legacy baseline: an earlier step)");
}
