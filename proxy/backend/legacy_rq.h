/* legacy_rq — RQ 1.13's Redis layout as the legacy queue (legacy_rq.c). */
#ifndef TURNOUT_LEGACY_RQ_H
#define TURNOUT_LEGACY_RQ_H

#include <stdbool.h>

#include "backend.h"

struct event_base;

typedef struct legacy_rq legacy_rq;

typedef struct legacy_rq_opts {
    const char *url;      /* LEGACY_RQ_URL */
    const char *queues;   /* LEGACY_RQ_QUEUES: three names, comma-separated */
    const char *function; /* LEGACY_RQ_FUNCTION */
    bool pickle;          /* LEGACY_RQ_SERIALIZER=pickle, else json */
    long long result_ttl_s;
    long timeout_ms;      /* each Redis command */
    size_t max_result_bytes; /* LEGACY_MAX_REPLY_BYTES: a larger result is not read (0: the default) */
} legacy_rq_opts;

/* Connects at once (and again whenever the connection drops).  NULL with
 * err on a bad URL or OOM. */
backend *legacy_rq_new(struct event_base *base, const legacy_rq_opts *o, char err[256]);

#endif
