/* gates — the canary's judge: one step's windows in, a verdict out.  Pure,
 * so the unit tests and the simulation (tests/sim) drive the very code the
 * leading proxy runs once a second.
 *
 * Three gates, each a comparison of two proportions, new minus legacy:
 *   system_errors     evals the path could not take, run or answer (submit
 *                     errors, executor and worker errors, lost, unreadable,
 *                     queued past their own timeout) over all it was given;
 *   program_failures  programs that failed or timed out by their own limit
 *                     over programs that ran to a verdict;
 *   latency           evals slower than the legacy path's
 *                     GATE_LATENCY_QUANTILE (chosen once per step from the
 *                     legacy side, then counted on both from there on).
 * Each gate keeps an anytime-valid confidence sequence for the difference
 * (a normal mixture boundary: valid at every look, so judging every second
 * does not inflate false alarms).  A gate FAILS when the lower bound is
 * above its margin; the false-alarm rate of a whole canary run is at most
 * GATE_ALPHA, shared among steps x gates.  A gate PASSES when the upper
 * bound is below its pass margin (confidence GATE_ALPHA each); a step
 * passes when all three do.  Otherwise it HOLDs, and says how many more
 * evals it expects to need. */
#ifndef TURNOUT_GATES_H
#define TURNOUT_GATES_H

#include <stdbool.h>

/* Latency buckets: index k holds durations up to 2^((k+1)/4) ms (about
 * 19 % apart), from 1 ms to about 9 h. */
#define GATE_NBUCKETS 100

enum gate_id { GATE_SYSTEM, GATE_PROGRAM, GATE_LATENCY, GATE_COUNT };
extern const char *const gate_names[GATE_COUNT]; /* system_errors, program_failures, latency */

enum gate_verdict { GATE_HOLD, GATE_PASS, GATE_FAIL };
extern const char *const gate_verdict_names[3]; /* hold, pass, fail */

/* One path's window. */
typedef struct gate_stats {
    long long n;         /* finished evals */
    long long sys;       /* of them, ended by a system error (any class) */
    long long sub_err;   /* submissions the path could not take (5xx, fallback) */
    long long verdicts;  /* finished with a program verdict: completed, failed, timeout */
    long long prog_fail; /* of them, failed or timed out by their own limit */
    long long buckets[GATE_NBUCKETS]; /* submit -> finished, of evals the path ran */
} gate_stats;

typedef struct gate_cfg {
    double alpha;       /* false-alarm rate of a whole canary run */
    int nsteps;         /* steps of the run (the fail side shares alpha among steps x gates) */
    long long min_samples;
    double margin[GATE_COUNT];      /* fail when new - legacy is surely above this */
    double pass_margin[GATE_COUNT]; /* pass when new - legacy is surely below this */
    double latency_quantile;        /* of the legacy latency: the threshold */
} gate_cfg;

/* What a step fixes at its first judgeable look and keeps: which legacy
 * window it compares with (its own, or an earlier step's when its own is
 * too thin), and the latency threshold with the counts at that moment
 * (only evals after it are counted, so the threshold does not lean on the
 * data that test it). */
typedef struct gate_ref {
    int source;              /* -1: not fixed yet; 0: own legacy window; 1: the baseline */
    int bucket;              /* latency threshold bucket; -1: not chosen yet */
    long long lat0[2];       /* latency samples when chosen: new, legacy */
    long long above0[2];     /* of them above the threshold */
} gate_ref;
#define GATE_REF_INIT {-1, -1, {0, 0}, {0, 0}}

typedef struct gate_check {
    enum gate_verdict verdict;
    long long n[2], x[2];       /* new, legacy: trials and events */
    double est[2], lo[2], hi[2]; /* each path's ratio and its interval (confidence 1 - GATE_ALPHA) */
    double diff;                 /* new - legacy */
    double diff_lo;              /* lower bound at the fail side's confidence, compared with margin */
    double diff_hi;              /* upper bound at the pass side's confidence, compared with pass_margin */
    double margin, pass_margin;
    long long need[2];           /* about how many more trials each path needs to decide; -1: no estimate */
} gate_check;

typedef struct gate_result {
    enum gate_verdict overall;
    bool baseline;               /* compared with the earlier step's legacy window */
    gate_check g[GATE_COUNT];
    double latency_threshold_s;  /* 0 until chosen */
    double alpha_fail, alpha_pass;
    char why[400];               /* what decided, for the audit list */
} gate_result;

/* The shipped settings (the defaults of turnout-proxy's GATE_* table; the
 * unit tests hold the two equal), for the simulation and the tests. */
gate_cfg gate_cfg_defaults(int nsteps);

int gate_bucket(double seconds);
double gate_bucket_edge(int k); /* upper edge, seconds */

/* One-sided anytime-valid bounds for p1 - p2 from x1 of n1 and x2 of n2,
 * each holding with probability 1 - alpha over every look.  *lo or *hi may
 * be NULL. */
void gate_diff_bounds(long long n1, long long x1, long long n2, long long x2, double alpha, double *lo, double *hi);

/* The verdict on one step.  `legacy` is the step's own legacy window,
 * `baseline` an earlier step's (NULL: none); `ref` is the step's fixed
 * choices, updated here (start each step with GATE_REF_INIT). */
void gate_judge(const gate_stats *fresh, const gate_stats *legacy, const gate_stats *baseline, const gate_cfg *cfg,
                gate_ref *ref, gate_result *out);

#endif
