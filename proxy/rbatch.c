#include "rbatch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

#define COPY_MAX_DEPTH 4

typedef struct slot {
    rbatch *b;
    int index;
} slot;

struct rbatch {
    rbatch_done_fn done;
    void *arg;
    int n;                 /* slots used */
    int outstanding;       /* commands sent, not yet completed, + 1 until run */
    const char *error;     /* static text */
    bool timed_out;
    rbatch_reply reply[RBATCH_MAX];
    slot slots[RBATCH_MAX];
};

rbatch *rbatch_new(rbatch_done_fn done, void *arg)
{
    rbatch *b = calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->done = done;
    b->arg = arg;
    b->outstanding = 1; /* held by the caller until rbatch_run */
    return b;
}

static void reply_clear(rbatch_reply *r)
{
    for (size_t i = 0; i < r->elements; i++) reply_clear(&r->element[i]);
    free(r->element);
    free(r->str);
    memset(r, 0, sizeof(*r));
}

static int reply_copy(rbatch_reply *dst, const redisReply *src, int depth)
{
    dst->type = src->type;
    dst->integer = src->integer;
    if (src->type == REDIS_REPLY_STRING || src->type == REDIS_REPLY_STATUS || src->type == REDIS_REPLY_ERROR) {
        dst->str = malloc(src->len + 1);
        if (!dst->str) return -1;
        memcpy(dst->str, src->str, src->len);
        dst->str[src->len] = '\0';
        dst->len = src->len;
    } else if (src->type == REDIS_REPLY_ARRAY && src->elements > 0) {
        if (depth >= COPY_MAX_DEPTH) return -1;
        dst->element = calloc(src->elements, sizeof(*dst->element));
        if (!dst->element) return -1;
        dst->elements = src->elements;
        for (size_t i = 0; i < src->elements; i++)
            if (reply_copy(&dst->element[i], src->element[i], depth + 1) != 0) return -1;
    }
    return 0;
}

static void finish_one(rbatch *b)
{
    if (--b->outstanding == 0) b->done(b, b->arg);
}

static void on_reply(struct redisReply *reply, const char *err, void *arg)
{
    slot *s = arg;
    rbatch *b = s->b;
    if (!reply) {
        if (!b->error) {
            b->error = err && strcmp(err, "timeout") == 0 ? "timeout" : "connection lost";
            b->timed_out = err && strcmp(err, "timeout") == 0;
        }
    } else if (reply_copy(&b->reply[s->index], reply, 0) != 0) {
        reply_clear(&b->reply[s->index]);
        if (!b->error) b->error = "out of memory copying a reply";
    }
    finish_one(b);
}

/* One command (script NULL) or script call into the next slot. */
static int add(rbatch *b, rclient *rc, rclient_script *script, int argc, const char **argv, const size_t *argvlen)
{
    if (b->n >= RBATCH_MAX) {
        if (!b->error) b->error = "too many commands in one batch";
        return -1;
    }
    int i = b->n;
    b->slots[i].b = b;
    b->slots[i].index = i;
    int sent = !rc ? -1
               : script ? rclient_eval(rc, script, on_reply, &b->slots[i], argc, argv, argvlen)
                        : rclient_command(rc, on_reply, &b->slots[i], argc, argv, argvlen);
    if (sent != 0) {
        if (!b->error) b->error = "redis not connected";
        return -1;
    }
    b->n++;
    b->outstanding++;
    return i;
}

int rbatch_add(rbatch *b, rclient *rc, int argc, const char **argv, const size_t *argvlen)
{
    return add(b, rc, NULL, argc, argv, argvlen);
}

int rbatch_add_eval(rbatch *b, rclient *rc, rclient_script *script, int argc, const char **argv,
                    const size_t *argvlen)
{
    return add(b, rc, script, argc, argv, argvlen);
}

void rbatch_run(rbatch *b) { finish_one(b); }

const rbatch_reply *rbatch_at(const rbatch *b, int i)
{
    if (i < 0 || i >= b->n || b->reply[i].type == 0) return NULL;
    return &b->reply[i];
}

const char *rbatch_error(const rbatch *b) { return b->error; }
bool rbatch_timed_out(const rbatch *b) { return b->timed_out; }

void rbatch_free(rbatch *b)
{
    if (!b) return;
    for (int i = 0; i < RBATCH_MAX; i++) reply_clear(&b->reply[i]);
    free(b);
}

const char *rbatch_str(const rbatch_reply *r, size_t *len)
{
    if (!r || r->type != REDIS_REPLY_STRING) return NULL;
    if (len) *len = r->len;
    return r->str;
}

long long rbatch_int(const rbatch_reply *r, long long dflt)
{
    if (!r) return dflt;
    if (r->type == REDIS_REPLY_INTEGER) return r->integer;
    if (r->type == REDIS_REPLY_STRING && r->len > 0) {
        char *end;
        errno = 0;
        long long v = strtoll(r->str, &end, 10);
        if (!errno && *end == '\0') return v;
    }
    return dflt;
}

const char *rbatch_redis_error(const rbatch_reply *r)
{
    return r && r->type == REDIS_REPLY_ERROR ? r->str : NULL;
}

/* ---------- proxy side ---------- */

void rbatch_finish_failure(preq *r, const rbatch *b, const char *redis_err, const char *what)
{
    char msg[400];
    enum pm_upstream why = redis_err ? UP_REDIS_ERROR
                           : (b && rbatch_timed_out(b)) ? UP_TIMEOUT
                                                        : UP_REDIS_DOWN;
    const char *detail = redis_err ? redis_err : (b && rbatch_error(b)) ? rbatch_error(b) : "redis not connected";
    px_count_upstream_error(r->p, PATH_NEW, why);
    LOG_WARN("redis request failed", "route", pm_route_names[r->route], "during", what, "error", detail);
    snprintf(msg, sizeof(msg), "Redis could not serve the request while %s (%.*s); retry after the Retry-After delay",
             what, UTF8_CUT(detail, 200));
    px_finish_error(r, 503, "redis_unavailable", msg, 1);
}
