#include "records.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "jsonw.h"
#include "log.h"
#include "pserver.h"
#include "util.h"
#include "pscripts.h"

/* One record waiting for Redis. */
typedef struct held {
    char eval_id[SUB_MAX_EVAL_ID + 1];
    char *record;
    double submitted_at;
    bool release; /* delete the record if it is this one, instead of writing it */
} held;

struct records {
    proxy *p;
    held *held;       /* ring of ROUTE_PENDING_MAX */
    size_t cap, head, count;
    size_t flushing;  /* writes sent and not yet answered */
};

records *records_new(proxy *p)
{
    records *rs = calloc(1, sizeof(*rs));
    if (!rs) return NULL;
    rs->p = p;
    rs->cap = (size_t)p->cfg.route_pending_max;
    if (rs->cap && !(rs->held = calloc(rs->cap, sizeof(held)))) {
        free(rs);
        return NULL;
    }
    return rs;
}

void records_free(records *rs)
{
    if (!rs) return;
    for (size_t i = 0; i < rs->count; i++) free(rs->held[(rs->head + i) % rs->cap].record);
    free(rs->held);
    free(rs);
}

size_t records_pending(const records *rs) { return rs ? rs->count : 0; }

void records_key(const char *eval_id, char key[ROUTE_KEY_MAX])
{
    size_t n = strnlen(eval_id, ROUTE_KEY_MAX - sizeof(ROUTE_PREFIX));
    memcpy(key, ROUTE_PREFIX, sizeof(ROUTE_PREFIX) - 1);
    memcpy(key + sizeof(ROUTE_PREFIX) - 1, eval_id, n);
    key[sizeof(ROUTE_PREFIX) - 1 + n] = '\0';
}

char *records_build(const submission *sub, enum route_path path, const route_decision *dec, double submitted_at)
{
    char stack[512];
    jsonw w;
    jw_init(&w, stack, sizeof(stack));
    jw_obj_open(&w);
    jw_lit_key(&w, "eval_id");
    jw_cstring(&w, sub->eval_id);
    jw_lit_key(&w, "path");
    jw_cstring(&w, route_path_names[path]);
    jw_lit_key(&w, "reason");
    jw_cstring(&w, route_reason_names[dec->reason]);
    jw_lit_key(&w, "priority");
    jw_int(&w, sub->priority);
    jw_lit_key(&w, "priority_name");
    jw_cstring(&w, sub->priority_name);
    jw_lit_key(&w, "bucket");
    if (dec->bucket >= 0) jw_int(&w, dec->bucket);
    else jw_null(&w);
    jw_lit_key(&w, "submitted_at");
    jw_real(&w, submitted_at);
    jw_lit_key(&w, "timeout"); /* the eval's own: a wait beyond it is the path's doing */
    jw_int(&w, sub->timeout);
    jw_obj_close(&w);
    char *text = jw_detach(&w, NULL);
    jw_free(&w);
    return text;
}

json_t *records_parse(const char *text, size_t len)
{
    json_t *o = text ? json_loadb(text, len, 0, NULL) : NULL;
    if (o && (!json_is_object(o) || !json_is_string(json_object_get(o, "path")))) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

enum route_path records_path(json_t *rec)
{
    const char *path = json_string_value(json_object_get(rec, "path"));
    if (path && strcmp(path, "new") == 0) return PATH_NEW;
    if (path && strcmp(path, "legacy") == 0) return PATH_LEGACY;
    return PATH_UNKNOWN;
}

/* ---------- scripts with a reply ---------- */

typedef struct script_call {
    rec_cb cb;
    void *arg;
} script_call;

static void on_script(struct redisReply *reply, const char *err, void *arg)
{
    script_call *c = arg;
    rec_result res = {REC_FAILED, 0, NULL, err, false, false};
    if (!reply) {
        /* sent, and no reply: whether it acted is not known */
        res.lost = true;
        res.timeout = err && strcmp(err, "timeout") == 0;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        res.err = reply->str; /* refused before its first write: nothing done */
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
               reply->element[0]->type == REDIS_REPLY_INTEGER) {
        redisReply *second = reply->element[1];
        long long code = reply->element[0]->integer;
        if (code == 1) {
            res.outcome = REC_WRITTEN;
            res.depth = second->type == REDIS_REPLY_INTEGER ? second->integer : -1;
        } else if (code == 2) {
            res.outcome = REC_EXPIRED;
            res.err = "the command reached Redis after its deadline and did nothing";
        } else if (code == 3) {
            res.outcome = REC_FULL;
            res.depth = second->type == REDIS_REPLY_INTEGER ? second->integer : -1;
            res.err = "the new queue is full (CELERY_QUEUE_MAX_DEPTH)";
        } else if (second->type == REDIS_REPLY_STRING) {
            res.outcome = REC_DUPLICATE;
            res.existing = second->str;
        } else {
            res.err = "unexpected reply from the route record script";
        }
    } else {
        res.err = "unexpected reply from the route record script";
    }
    c->cb(&res, c->arg);
    free(c);
}

static int run_script(records *rs, rclient_script *script, int argc, const char **argv, const size_t *lens,
                      rec_cb cb, void *arg)
{
    script_call *c = malloc(sizeof(*c));
    if (!c) return -1;
    c->cb = cb;
    c->arg = arg;
    if (rclient_eval(rs->p->broker, script, on_script, c, argc, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

typedef struct lookup_call {
    rec_cb cb;
    void *arg;
} lookup_call;

static void on_lookup(struct redisReply *reply, const char *err, void *arg)
{
    lookup_call *c = arg;
    rec_result res = {REC_FAILED, 0, NULL, err, false, false};
    if (!reply) {
        res.lost = true;
        res.timeout = err && strcmp(err, "timeout") == 0;
    } else if (reply->type == REDIS_REPLY_STRING) {
        res.outcome = REC_DUPLICATE;
        res.existing = reply->str;
    } else if (reply->type == REDIS_REPLY_NIL) {
        res.outcome = REC_ABSENT;
    } else {
        res.err = reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply to GET";
    }
    c->cb(&res, c->arg);
    free(c);
}

int records_lookup(records *rs, const char *eval_id, rec_cb cb, void *arg)
{
    char route_key[ROUTE_KEY_MAX];
    records_key(eval_id, route_key);
    lookup_call *c = malloc(sizeof(*c));
    if (!c) return -1;
    c->cb = cb;
    c->arg = arg;
    const char *argv[] = {"GET", route_key};
    size_t lens[] = {3, strlen(route_key)};
    if (rclient_command(rs->p->broker, on_lookup, c, 2, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int records_claim(records *rs, const char *eval_id, const char *record, rec_cb cb, void *arg)
{
    char route_key[ROUTE_KEY_MAX], ttl[24], deadline[24];
    if (!rclient_is_up(rs->p->broker) || !rclient_deadline(rs->p->broker, deadline)) return -1;
    records_key(eval_id, route_key);
    snprintf(ttl, sizeof(ttl), "%lld", rs->p->cfg.route_record_ttl_s);
    const char *argv[] = {"1", route_key, record, ttl, deadline};
    size_t lens[5];
    for (int i = 0; i < 5; i++) lens[i] = strlen(argv[i]);
    return run_script(rs, &pscript_claim, 5, argv, lens, cb, arg);
}

void records_release(records *rs, const char *eval_id, const char *record)
{
    char route_key[ROUTE_KEY_MAX];
    records_key(eval_id, route_key);
    const char *argv[] = {"1", route_key, record};
    size_t lens[3];
    for (int i = 0; i < 3; i++) lens[i] = strlen(argv[i]);
    (void)!rclient_eval(rs->p->broker, &pscript_release, rclient_noop, NULL, 3, argv, lens);
}

/* ---------- records held while Redis is away ---------- */

static void set_gauge(records *rs)
{
    metrics_set(rs->p->m.route_records_pending, 0, (double)rs->count);
}

static void hold_entry(records *rs, const char *eval_id, const char *record, double submitted_at, bool release)
{
    char *copy = strdup(record);
    if (!copy || rs->count == rs->cap) {
        free(copy);
        if (release) {
            LOG_WARN("route record claim not undone: the in-memory table is full (ROUTE_PENDING_MAX); a "
                     "resubmission of this eval_id may be answered as a duplicate of a run that never happened",
                     "eval_id", eval_id);
        } else {
            LOG_WARN("route record dropped: the in-memory table is full (ROUTE_PENDING_MAX) or memory is short; "
                     "status and cancel will not find this eval, and a resubmission of its eval_id will not be "
                     "recognised as a duplicate (it would run again)",
                     "eval_id", eval_id);
        }
        metrics_add(rs->p->m.route_records_dropped, 0, 1);
        return;
    }
    held *h = &rs->held[(rs->head + rs->count) % rs->cap];
    snprintf(h->eval_id, sizeof(h->eval_id), "%s", eval_id);
    h->record = copy;
    h->submitted_at = submitted_at;
    h->release = release;
    rs->count++;
    set_gauge(rs);
}

static void hold(records *rs, const char *eval_id, const char *record, double submitted_at)
{
    hold_entry(rs, eval_id, record, submitted_at, false);
}

const char *records_held_find(const records *rs, const char *eval_id)
{
    /* only while Redis is away, over at most ROUTE_PENDING_MAX entries */
    for (size_t i = 0; rs && i < rs->count; i++) {
        const held *h = &rs->held[(rs->head + i) % rs->cap];
        if (!h->release && strcmp(h->eval_id, eval_id) == 0) return h->record;
    }
    return NULL;
}

void records_release_later(records *rs, const char *eval_id, const char *record)
{
    hold_entry(rs, eval_id, record, 0, true);
    records_flush(rs); /* at once if Redis is there after all */
}

typedef struct flush_call {
    records *rs;
    char eval_id[SUB_MAX_EVAL_ID + 1];
    char *record;
    double submitted_at;
    bool release;
} flush_call;

static void on_flushed(struct redisReply *reply, const char *err, void *arg)
{
    flush_call *c = arg;
    records *rs = c->rs;
    rs->flushing--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* back in the table; the next flush tries again */
        LOG_WARN("route record not written yet", "eval_id", c->eval_id, "error",
                 reply ? reply->str : err ? err : "redis error");
        hold_entry(rs, c->eval_id, c->record, c->submitted_at, c->release);
    }
    free(c->record);
    free(c);
}

static int send_flush(records *rs, const char *eval_id, char *record, double submitted_at, bool release)
{
    char route_key[ROUTE_KEY_MAX], ttl[24], at[32];
    flush_call *c = malloc(sizeof(*c));
    if (!c) return -1;
    c->rs = rs;
    snprintf(c->eval_id, sizeof(c->eval_id), "%s", eval_id);
    c->record = record;
    c->submitted_at = submitted_at;
    c->release = release;
    records_key(eval_id, route_key);
    snprintf(ttl, sizeof(ttl), "%lld", rs->p->cfg.route_record_ttl_s);
    snprintf(at, sizeof(at), "%.6f", submitted_at);
    const char *argv[] = {"2", route_key, INFLIGHT_LEGACY, record, ttl, eval_id, at};
    const char *rargv[] = {"1", route_key, record};
    size_t lens[7];
    int argc = release ? 3 : 7;
    const char **v = release ? rargv : argv;
    for (int i = 0; i < argc; i++) lens[i] = strlen(v[i]);
    if (rclient_eval(rs->p->broker, release ? &pscript_release : &pscript_flush, on_flushed, c, argc, v, lens) != 0) {
        free(c);
        return -1;
    }
    rs->flushing++;
    return 0;
}

void records_flush(records *rs)
{
    if (!rs || !rs->count || !rclient_is_up(rs->p->broker)) return;
    size_t sent = 0;
    while (rs->count) {
        held *h = &rs->held[rs->head];
        if (send_flush(rs, h->eval_id, h->record, h->submitted_at, h->release) != 0) break;
        h->record = NULL; /* owned by the call now */
        rs->head = (rs->head + 1) % rs->cap;
        rs->count--;
        sent++;
    }
    set_gauge(rs);
    if (sent) {
        char n[24];
        snprintf(n, sizeof(n), "%zu", sent);
        LOG_INFO("held route records written", "count", n);
    }
}

char *records_mark_unconfirmed(const char *record, bool unconfirmed)
{
    json_t *o = records_parse(record, strlen(record));
    char *text = NULL;
    if (o && (unconfirmed ? json_object_set_new(o, "unconfirmed", json_true()) : json_object_del(o, "unconfirmed")) >= -1)
        text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

bool records_is_unconfirmed(json_t *rec)
{
    return records_path(rec) == PATH_LEGACY && json_is_true(json_object_get(rec, "unconfirmed"));
}

void records_replace_legacy(records *rs, const char *eval_id, const char *record, const char *unconfirmed,
                            double submitted_at, bool claimed)
{
    if (claimed) {
        char route_key[ROUTE_KEY_MAX], at[32];
        records_key(eval_id, route_key);
        snprintf(at, sizeof(at), "%.6f", submitted_at);
        const char *argv[] = {"2", route_key, INFLIGHT_LEGACY, record, unconfirmed, eval_id, at};
        size_t lens[7];
        for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
        if (rclient_eval(rs->p->broker, &pscript_replace, rclient_noop, NULL, 7, argv, lens) == 0) return;
    }
    hold(rs, eval_id, unconfirmed, submitted_at);
}

void records_confirm_legacy(records *rs, const char *eval_id, const char *record, double submitted_at,
                            bool claimed)
{
    if (claimed && rclient_is_up(rs->p->broker)) {
        char *copy = strdup(record);
        if (copy && send_flush(rs, eval_id, copy, submitted_at, false) == 0) return;
        free(copy);
    }
    hold(rs, eval_id, record, submitted_at);
}
