/* gates — the canary's verdict on one step's window, pure so the unit tests
 * pin it: at least GATE_MIN_SAMPLES finished evals on each path before any
 * verdict; new-path error ratio (failed + timeout over finished) at most
 * legacy's + GATE_ERROR_DELTA; new-path p99 (submit -> finished) at most
 * GATE_LATENCY_RATIO x legacy's. */
#ifndef TURNOUT_GATES_H
#define TURNOUT_GATES_H

/* Latency buckets: index k holds durations up to 2^((k+1)/4) ms (about
 * 19 % apart), from 1 ms to about 9 h. */
#define GATE_NBUCKETS 100

typedef struct gate_stats {
    long long n, err;
    long long buckets[GATE_NBUCKETS];
} gate_stats;

typedef struct gate_cfg {
    double error_delta, latency_ratio;
    long long min_samples;
} gate_cfg;

enum gate_verdict { GATE_HOLD, GATE_PASS, GATE_FAIL };
extern const char *const gate_verdict_names[3]; /* hold, pass, fail */

typedef struct gate_result {
    enum gate_verdict samples, error, latency, overall;
    double err_new, err_legacy, p99_new, p99_legacy;
    char why[300]; /* what decided, for the audit list */
} gate_result;

int gate_bucket(double seconds);
/* Upper edge (seconds) of the bucket holding the 99th percentile; 0 when empty. */
double gate_p99(const gate_stats *s);
void gate_judge(const gate_stats *fresh, const gate_stats *legacy, const gate_cfg *cfg, gate_result *out);

#endif
