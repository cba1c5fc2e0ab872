/* wcore — turnout-worker's running state, shared by its modules:
 * wmain (start-up, taking messages, HTTP, signals), wtask (one message from
 * taken to acknowledged) and wmaint (maintenance jobs, revokes, executors). */
#ifndef TURNOUT_WCORE_H
#define TURNOUT_WCORE_H

#include <stdbool.h>
#include <stddef.h>

#include "celery.h"
#include "httpc.h"
#include "rclient.h"
#include "wconfig.h"
#include "wmetrics.h"

struct event_base;
struct event;
struct evhttp;

#define WORKER_SLOT_GRACE_S 60 /* slot lease beyond the hard limit */
/* The request body limit of the reference executor, assumed for an
 * executor whose GET /capacity does not say its max_body_bytes. */
#define EXECUTOR_DEFAULT_MAX_BODY (2u * 1024 * 1024)
/* /healthz turns unhealthy after this many takes in a row fail. */
#define WORKER_TAKE_FAILS_UNHEALTHY 3

typedef struct executor {
    char *url;          /* as configured, no trailing slash */
    int capacity;       /* max_concurrent from GET /capacity; 0 = unknown or down */
    size_t max_body;    /* max_body_bytes from GET /capacity; 0 = not said */
    double down_until;  /* skipped until then (unix seconds) */
} executor;

typedef struct task task;
typedef struct worker worker;

struct worker {
    struct event_base *base;
    worker_settings cfg;
    wmetrics m;
    rclient *rc;   /* broker commands */
    rclient *res;  /* result backend (== rc when the same URL) */
    rclient *sub;  /* pub/sub: revokes */
    httpc *hc;
    executor *execs;
    size_t nexec;
    const char **exec_urls; /* for metric labels */
    size_t rr;              /* round-robin start */
    /* the lists to take from, in kombu's order: by step, then queue */
    char **keys;
    size_t *key_lens;
    char **key_queue; /* base queue name of each key */
    size_t nkeys;
    char tagset_key[300];
    char heartbeat_key[300];
    task *tasks;
    size_t in_flight;
    size_t finishing; /* of those, past their execution (storing, acking):
                         they no longer count against CELERY_CONCURRENCY */
    bool taking;
    bool ready;     /* own tags restored and executors known: may take work */
    double poll_delay;
    struct event *poll_timer;
    struct event *tick;
    struct event *grace_timer;
    struct evhttp *http;
    bool draining;
    bool returning; /* grace over: messages are being put back */
    double last_job[WJ_COUNT];
    unsigned long long token_seq;
    /* health of the take loop (/healthz) */
    unsigned take_fails;     /* takes failed in a row */
    char last_error[256];    /* the last broker error, UTF-8-safe */
    double last_error_at;    /* unix seconds; 0 = none */
    /* this process among workers of the same WORKER_NAME */
    char instance_id[37];
    char instance_key[300];
    bool name_clash_warned;
    struct event *reload_timer; /* SIGHUP: one reload per burst */
};

/* wmain.c */
void worker_pump(worker *w);          /* take more work if there is room */
void worker_task_done(worker *w);     /* a task left: pump, or finish draining */
bool worker_exec_usable(const worker *w, size_t i);
/* Holds turnout:worker:<name>:instance, warning when another process
 * holds it (two workers under one WORKER_NAME). */
#define WORKER_INSTANCE_TTL "15"
void worker_claim_name(worker *w);
/* Notes a failed broker command for /healthz and the error counter. */
void worker_broker_error(worker *w, enum wm_broker_op op, const char *error);

/* wtask.c */
/* What the take script read for the task id it found in the message's
 * headers, in the same round trip: its result record and revoke marker. */
typedef struct task_prefetch {
    const char *task_id; /* NULL: nothing prefetched */
    size_t task_id_len;
    const char *result;  /* NULL: none, or not read (another result backend) */
    size_t result_len;
    bool result_read;
    const char *revoked; /* NULL: not revoked */
    size_t revoked_len;
    size_t oversize_bytes; /* > 0: the message is this large, over the limit,
                              and only its head was read */
} task_prefetch;

/* Starts handling a message just taken (raw text copied; pre borrowed, may
 * be NULL). */
void task_start(worker *w, const char *raw, size_t len, const char *tag, size_t exec_index,
                const task_prefetch *pre);
/* A revoke for task_id arrived (pub/sub or marker poll). */
void task_revoke(worker *w, const char *task_id, bool terminate);
/* Refreshes unacked scores and polls revoke markers of running tasks. */
void task_tick_all(worker *w);
/* Grace is over: cancel executions, ask executors to kill them. */
void task_abandon_all(worker *w);
void task_free_all(worker *w);
/* REVOKED for a message dropped outside any task (a revoked retry). */
void task_write_revoked(worker *w, const char *task_id);

/* wmaint.c */
void maint_tick(worker *w);
void maint_probe_executors(worker *w, bool locked);
int maint_subscribe(worker *w) __attribute__((warn_unused_result));

#endif
