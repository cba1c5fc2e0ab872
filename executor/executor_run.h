/* executor_run — one evaluation in a sandboxed child process, driven by the
 * event loop (turnout-executor, DESIGN §8).
 *
 * A run gets its own temp dir (cwd and HOME, removed afterwards), stdin from
 * /dev/null, a new session and process group, rlimits (CPU, address space,
 * file size, processes, core, files), a minimal environment, and its stdout
 * and stderr captured through pipes up to a byte cap (beyond it the rest is
 * read and dropped so the child never blocks).  Nothing here blocks: pipes
 * are read by events, the end is seen through SIGCHLD (an evsignal of the
 * context), and the wall-clock limit is a timer.  The whole process group is
 * SIGKILLed when the run ends for any reason, so nothing it started
 * survives it; the executor is a child subreaper so orphans are reaped too.
 *
 * Every started run calls its completion exactly once, from the event loop,
 * never from inside exec_run_start() or exec_run_kill(). */
#ifndef TURNOUT_EXECUTOR_RUN_H
#define TURNOUT_EXECUTOR_RUN_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;

typedef struct exec_ctx exec_ctx;
typedef struct exec_run exec_run;

typedef enum {
    EXEC_COMPLETED, /* exited with code 0 */
    EXEC_FAILED,    /* non-zero exit, or ended by a signal it caused (rlimits) */
    EXEC_TIMEOUT,   /* wall clock over the timeout: group SIGKILLed */
    EXEC_KILLED,    /* stopped by exec_run_kill() */
} exec_outcome;

const char *exec_outcome_name(exec_outcome o); /* "completed", ... */

typedef struct exec_limits {
    long long memory_mb;    /* RLIMIT_AS */
    long long file_mb;      /* RLIMIT_FSIZE */
    long long max_procs;    /* RLIMIT_NPROC (per uid; not enforced for root) */
    size_t output_limit;    /* bytes kept of stdout and of stderr, each */
} exec_limits;

typedef struct exec_spec {
    const char *eval_id;    /* borrowed; for logs */
    const char *code;       /* borrowed; copied into the temp dir */
    size_t code_len;
    double timeout_s;       /* wall clock; RLIMIT_CPU is this + 1 s */
} exec_spec;

/* What a run produced.  Everything is borrowed and valid only during the
 * completion callback. */
typedef struct exec_result {
    exec_outcome outcome;
    const char *out;        /* stdout, truncated at the cap + marker */
    size_t out_len;
    const char *err;        /* stderr, same rule */
    size_t err_len;
    bool exited;            /* exit_code is meaningful */
    int exit_code;
    int term_signal;        /* > 0 when ended by a signal */
    double duration_s;      /* spawn to reap, monotonic */
    double timeout_s;       /* the wall-clock limit it ran under */
    const char *kill_reason;/* EXEC_KILLED: why (from exec_run_kill) */
} exec_result;

typedef void (*exec_done_fn)(const exec_result *res, void *ud);

/* The SIGCHLD handling and shared state of all runs on `base`.  Makes the
 * process a child subreaper.  NULL with err filled on failure.  `tmp_root`
 * (borrowed, copied) is where the per-run dirs are made. */
exec_ctx *exec_ctx_new(struct event_base *base, const exec_limits *limits, const char *tmp_root,
                       char err[256]) __attribute__((warn_unused_result));

/* Kills and reaps whatever still runs (synchronously: only at exit), removes
 * their temp dirs; their completions are NOT called. */
void exec_ctx_free(exec_ctx *ctx);

/* Limits for runs started from now on (a reload). */
void exec_ctx_set_limits(exec_ctx *ctx, const exec_limits *limits);

/* Starts a run.  Returns the run (owned by ctx; valid until its completion
 * returns) or NULL with err filled; *busy is set when the failure is
 * transient (fork/pipe/fd exhaustion), so the caller can say "retry". */
exec_run *exec_run_start(exec_ctx *ctx, const exec_spec *spec, exec_done_fn done, void *ud, char err[256],
                         bool *busy) __attribute__((warn_unused_result));

/* SIGKILLs the run's process group; its completion then reports EXEC_KILLED
 * with `reason` (a static string) unless it had already ended.  Safe to call
 * more than once. */
void exec_run_kill(exec_run *r, const char *reason);

#endif
