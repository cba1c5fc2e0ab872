#include "dlq_api.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "admin_auth.h"
#include "dlq_op.h"
#include "dlq_retry.h"
#include "celery.h"
#include "jsafe.h"
#include "keys.h"
#include "log.h"
#include "pserver.h"
#include "reply.h"
#include "rbatch.h"
#include "results.h"
#include "util.h"
#include "pscripts.h"

#define DLQ_INDEX KEY_DLQ_INDEX
#define DLQ_CLASSES KEY_DLQ_CLASSES
#define TASK_PREFIX "celery-"
#define MALFORMED_SHOWN 1024

/* ---------- pure parts ---------- */

static int parse_long(const char *s, long min, long max, long *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max) return -1;
    *out = (long)v;
    return 0;
}

int dlq_api_parse_query(const char *query, dlq_query *out, char msg[256])
{
    memset(out, 0, sizeof(*out));
    out->limit = DLQ_LIMIT_DEFAULT;
    if (!query || !*query) return 0;
    struct evkeyvalq q = {0};
    if (evhttp_parse_query_str(query, &q) != 0) {
        snprintf(msg, 256, "the query string is malformed; use limit=1..%d&offset=0..&eval_id=<id>",
                 DLQ_LIMIT_MAX);
        return -1;
    }
    int rc = -1;
    const char *v;
    if ((v = evhttp_find_header(&q, "limit")) && parse_long(v, 1, DLQ_LIMIT_MAX, &out->limit) != 0) {
        snprintf(msg, 256, "limit=\"%.*s\": must be an integer from 1 to %d (default %d)", UTF8_CUT(v, 40), DLQ_LIMIT_MAX,
                 DLQ_LIMIT_DEFAULT);
        goto done;
    }
    if ((v = evhttp_find_header(&q, "offset")) && parse_long(v, 0, DLQ_OFFSET_MAX, &out->offset) != 0) {
        snprintf(msg, 256, "offset=\"%.*s\": must be an integer from 0 to %ld (default 0)", UTF8_CUT(v, 40), DLQ_OFFSET_MAX);
        goto done;
    }
    if ((v = evhttp_find_header(&q, "eval_id"))) {
        size_t n = strlen(v);
        if (!util_valid_id(v, n, sizeof(out->eval_id) - 1)) {
            snprintf(msg, 256, "eval_id: must be 1 to %zu characters of [A-Za-z0-9_.:-]", sizeof(out->eval_id) - 1);
            goto done;
        }
        memcpy(out->eval_id, v, n + 1);
        out->has_eval_id = true;
    }
    rc = 0;
done:
    evhttp_clear_headers(&q);
    return rc;
}

/* The worker's own rule (celery_task_id_ok): whatever it accepts, the API
 * can address. */
bool dlq_api_valid_task_id(const char *id, size_t len) { return celery_task_id_ok(id, len); }

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes seg[0..n) into out (room for max bytes): its length,
 * or -1 when it is not percent-encoding or decodes to more than max. */
static long percent_decode(const char *seg, size_t n, char *out, size_t max)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = seg[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int hi = hex_value(seg[i + 1]), lo = hex_value(seg[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (o == max) return -1;
        out[o++] = c;
    }
    return (long)o;
}

enum dlq_target dlq_api_target(const char *path, char tid[DLQ_TASK_ID_MAX + 1], size_t *tid_len)
{
    if (strncmp(path, "/api/dlq/", 9) != 0) return DLQ_T_NONE;
    const char *rest = path + 9;
    if (strcmp(rest, "list") == 0) return DLQ_T_LIST;
    if (strcmp(rest, "stats") == 0) return DLQ_T_STATS;
    /* the id is one segment: a '/' in it comes as %2F */
    const char *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    enum dlq_target t;
    if (!slash) t = DLQ_T_ENTRY;
    else if (strcmp(slash, "/retry") == 0) t = DLQ_T_RETRY;
    else return DLQ_T_NONE;
    long len = percent_decode(rest, n, tid, DLQ_TASK_ID_MAX);
    if (len < 0 || !dlq_api_valid_task_id(tid, (size_t)len)) {
        tid[0] = '\0';
        *tid_len = 0;
        return DLQ_T_BAD_ID;
    }
    tid[len] = '\0';
    *tid_len = (size_t)len;
    return t;
}

/* The fields of an entry that hold what was submitted (the code is args[1];
 * message is the whole original envelope, message_head its first bytes):
 * shown only with READ_TOKEN or ADMIN_TOKEN. */
static const char *const sensitive[] = {"args", "kwargs", "message", "message_head"};
#define NSENSITIVE (sizeof(sensitive) / sizeof(sensitive[0]))
#define REDACTED_NOTE PX_REDACTED_NOTE "args, kwargs and the original message"

/* Leaves the sensitive fields out of entry `e` and names them in
 * "redacted_fields".  -1 on OOM. */
static int redact_entry(json_t *e)
{
    json_t *gone = json_array();
    if (!gone) return -1;
    for (size_t i = 0; i < NSENSITIVE; i++)
        if (json_object_get(e, sensitive[i])) {
            json_object_del(e, sensitive[i]);
            json_array_append_new(gone, json_string(sensitive[i]));
        }
    if (json_object_get(e, "malformed_entry")) { /* its text may be any of them */
        json_object_del(e, "malformed_entry");
        json_object_set_new(e, "malformed", json_true());
        json_array_append_new(gone, json_string("malformed_entry"));
    }
    return json_object_set_new(e, "redacted_fields", gone);
}

/* The stored entry as JSON; an unparsable one is shown, not hidden, so it
 * can be found and deleted.  `redact`: without the sensitive fields.  New
 * reference; NULL on OOM. */
static json_t *entry_json(const char *raw, size_t len, json_t *tid, bool redact)
{
    /* \u0000 is valid JSON: an exception message may quote NUL bytes */
    json_t *e = json_loadb(raw, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(e)) {
        json_decref(e);
        /* shown as text (cut at a character boundary, odd bytes as U+FFFD) */
        size_t shown = util_utf8_trim_end(raw, len > MALFORMED_SHOWN ? (size_t)MALFORMED_SHOWN : len);
        e = json_pack("{s:O, s:o}", "task_id", tid, "malformed_entry", jsafe_stringn(raw, shown));
    }
    if (e && redact && redact_entry(e) != 0) {
        json_decref(e);
        return NULL;
    }
    return e;
}

/* ---------- GET /api/dlq/list ---------- */

static json_t *list_body(dlq_op *op, json_t *entries)
{
    json_t *o = json_pack("{s:I, s:i, s:i, s:o}", "total", (json_int_t)op->total, "limit", (int)op->q.limit,
                          "offset", (int)op->q.offset, "entries", entries);
    if (o && op->redact) json_object_set_new(o, "redacted", json_string(REDACTED_NOTE));
    return o;
}

static void on_list_entries(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "reading DLQ entries");
        goto done;
    }
    json_t *entries = json_array();
    if (!entries) {
        dlq_op_finish_oom(op);
        goto done;
    }
    /* MGET answers in the order asked; an id whose entry went in between is
     * skipped (deleted or retried since the index was read). */
    const rbatch_reply *ids = rep->type == REDIS_REPLY_ARRAY ? rep : NULL;
    for (size_t i = 0; ids && i < ids->elements; i++) {
        const rbatch_reply *e = &ids->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        json_t *j = entry_json(e->str, e->len, json_array_get(op->ids, i), op->redact);
        if (!j || json_array_append_new(entries, j) != 0) {
            json_decref(entries);
            dlq_op_finish_oom(op);
            goto done;
        }
    }
    dlq_op_finish_json(op, 200, list_body(op, entries));
done:
    rbatch_free(b);
}

static void on_list_ids(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *card = rbatch_at(b, 0), *ids = rbatch_at(b, 1);
    const char **argv = NULL;
    size_t *lens = NULL;
    char *keys = NULL;
    if (rbatch_error(b) || !card || !ids || rbatch_redis_error(card) || rbatch_redis_error(ids)) {
        dlq_op_finish_failure(op, b, card && rbatch_redis_error(card) ? card->str : rbatch_redis_error(ids),
                          "reading the DLQ index");
        goto done;
    }
    op->total = rbatch_int(card, 0);
    size_t n = ids->type == REDIS_REPLY_ARRAY ? ids->elements : 0;
    if (n == 0) {
        json_t *entries = json_array();
        if (!entries) dlq_op_finish_oom(op);
        else dlq_op_finish_json(op, 200, list_body(op, entries));
        goto done;
    }
    argv = calloc(n + 1, sizeof(*argv));
    lens = calloc(n + 1, sizeof(*lens));
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += sizeof(KEY_DLQ_ENTRY_PREFIX) + ids->element[i].len;
    keys = malloc(total ? total : 1);
    op->ids = json_array();
    if (!argv || !lens || !keys || !op->ids) {
        dlq_op_finish_oom(op);
        goto done;
    }
    argv[0] = "MGET";
    lens[0] = 4;
    char *k = keys;
    for (size_t i = 0; i < n; i++) {
        const rbatch_reply *id = &ids->element[i];
        size_t plen = sizeof(KEY_DLQ_ENTRY_PREFIX) - 1;
        memcpy(k, KEY_DLQ_ENTRY_PREFIX, plen);
        if (id->len) memcpy(k + plen, id->str, id->len);
        argv[i + 1] = k;
        lens[i + 1] = plen + id->len;
        k += plen + id->len;
        if (json_array_append_new(op->ids, jsafe_stringn(id->str ? id->str : "", id->len)) != 0) {
            dlq_op_finish_oom(op);
            goto done;
        }
    }
    rbatch *b2 = dlq_op_batch(op, on_list_entries);
    if (!b2) goto done;
    rbatch_add(b2, op->r->p->broker, (int)n + 1, argv, lens);
    rbatch_run(b2);
done:
    free(argv);
    free(lens);
    free(keys);
    rbatch_free(b);
}

static void on_list_one(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "reading a DLQ entry");
        goto done;
    }
    json_t *entries = json_array();
    if (!entries) {
        dlq_op_finish_oom(op);
        goto done;
    }
    if (rep->type == REDIS_REPLY_STRING) {
        op->total = 1;
        json_t *tid = json_string(op->tid);
        json_t *j = op->q.offset == 0 && tid ? entry_json(rep->str, rep->len, tid, op->redact) : NULL;
        if (j) json_array_append_new(entries, j);
        json_decref(tid);
    }
    dlq_op_finish_json(op, 200, list_body(op, entries));
done:
    rbatch_free(b);
}

static void handle_list(proxy *p, struct evhttp_request *req, double t0)
{
    dlq_query q;
    char msg[256];
    int access = px_read_access(p, req, RT_DLQ, t0);
    if (access < 0) return;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    if (dlq_api_parse_query(uri ? evhttp_uri_get_query(uri) : NULL, &q, msg) != 0) {
        px_count_reject(p, RJ_INVALID_FIELD);
        px_reply_error(p, req, RT_DLQ, t0, 422, "invalid_parameter", msg, 0);
        return;
    }
    char tid[sizeof(q.eval_id) + sizeof(TASK_PREFIX)];
    size_t tid_len = 0;
    if (q.has_eval_id) tid_len = (size_t)snprintf(tid, sizeof(tid), TASK_PREFIX "%s", q.eval_id);
    dlq_op *op = dlq_op_new(p, req, t0, q.has_eval_id ? tid : NULL, tid_len);
    if (!op) return;
    op->q = q;
    op->redact = access == 0;
    rbatch *b = dlq_op_batch(op, q.has_eval_id ? on_list_one : on_list_ids);
    if (!b) return;
    if (q.has_eval_id) {
        const char *argv[] = {"GET", op->entry_key};
        size_t lens[] = {3, strlen(op->entry_key)};
        rbatch_add(b, p->broker, 2, argv, lens);
    } else {
        char start[32], stop[32];
        snprintf(start, sizeof(start), "%ld", q.offset);
        snprintf(stop, sizeof(stop), "%ld", q.offset + q.limit - 1);
        const char *card[] = {"ZCARD", DLQ_INDEX};
        size_t card_len[] = {5, sizeof(DLQ_INDEX) - 1};
        const char *range[] = {"ZREVRANGE", DLQ_INDEX, start, stop};
        size_t range_len[] = {9, sizeof(DLQ_INDEX) - 1, strlen(start), strlen(stop)};
        if (rbatch_add(b, p->broker, 2, card, card_len) == 0) rbatch_add(b, p->broker, 4, range, range_len);
    }
    rbatch_run(b);
}

/* ---------- GET /api/dlq/stats ---------- */

static json_t *score_of(const rbatch_reply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[1].type != REDIS_REPLY_STRING)
        return json_null();
    char *end;
    double v = strtod(r->element[1].str, &end);
    return *end ? json_null() : json_real(v);
}

static void on_stats(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *card = rbatch_at(b, 0), *classes = rbatch_at(b, 1), *oldest = rbatch_at(b, 2),
                       *newest = rbatch_at(b, 3);
    const char *rerr = NULL;
    for (int i = 0; i < 4 && !rerr; i++) rerr = rbatch_redis_error(rbatch_at(b, i));
    if (rbatch_error(b) || rerr || !card || !classes || !oldest || !newest) {
        dlq_op_finish_failure(op, b, rerr, "reading DLQ statistics");
        goto done;
    }
    json_t *by = json_object();
    if (!by) {
        dlq_op_finish_oom(op);
        goto done;
    }
    for (size_t i = 0; classes->type == REDIS_REPLY_ARRAY && i + 1 < classes->elements; i += 2) {
        const rbatch_reply *k = &classes->element[i];
        json_t *name = k->type == REDIS_REPLY_STRING ? jsafe_stringn(k->str, k->len) : NULL; /* any bytes */
        if (name) json_object_set_new(by, json_string_value(name), json_integer(rbatch_int(&classes->element[i + 1], 0)));
        json_decref(name);
    }
    json_t *o = json_pack("{s:I, s:o, s:o, s:o}", "count", (json_int_t)rbatch_int(card, 0), "by_exception_class",
                          by, "oldest_failure_at", score_of(oldest), "newest_failure_at", score_of(newest));
    if (!o) dlq_op_finish_oom(op);
    else dlq_op_finish_json(op, 200, o);
done:
    rbatch_free(b);
}

static void handle_stats(proxy *p, struct evhttp_request *req, double t0)
{
    dlq_op *op = dlq_op_new(p, req, t0, NULL, 0);
    if (!op) return;
    rbatch *b = dlq_op_batch(op, on_stats);
    if (!b) return;
    size_t il = sizeof(DLQ_INDEX) - 1;
    const char *card[] = {"ZCARD", DLQ_INDEX};
    size_t card_len[] = {5, il};
    const char *classes[] = {"HGETALL", DLQ_CLASSES};
    size_t classes_len[] = {7, sizeof(DLQ_CLASSES) - 1};
    const char *oldest[] = {"ZRANGE", DLQ_INDEX, "0", "0", "WITHSCORES"};
    size_t oldest_len[] = {6, il, 1, 1, 10};
    const char *newest[] = {"ZREVRANGE", DLQ_INDEX, "0", "0", "WITHSCORES"};
    size_t newest_len[] = {9, il, 1, 1, 10};
    if (rbatch_add(b, p->broker, 2, card, card_len) == 0 && rbatch_add(b, p->broker, 2, classes, classes_len) == 1 &&
        rbatch_add(b, p->broker, 5, oldest, oldest_len) == 2)
        rbatch_add(b, p->broker, 5, newest, newest_len);
    rbatch_run(b);
}

/* ---------- GET /api/dlq/{task_id} ---------- */

static void on_get(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "reading a DLQ entry");
    else if (rep->type != REDIS_REPLY_STRING) dlq_op_not_found(op);
    else {
        json_t *tid = json_string(op->tid);
        json_t *j = tid ? entry_json(rep->str, rep->len, tid, op->redact) : NULL;
        json_decref(tid);
        if (j && op->redact && json_object_set_new(j, "redacted", json_string(REDACTED_NOTE)) != 0) {
            json_decref(j);
            j = NULL;
        }
        if (!j) dlq_op_finish_oom(op);
        else dlq_op_finish_json(op, 200, j);
    }
    rbatch_free(b);
}

/* ---------- DELETE /api/dlq/{task_id} ---------- */


static void on_deleted(rbatch *b, void *arg)
{
    dlq_op *op = arg;
    const rbatch_reply *rep = rbatch_at(b, 0);
    if (rbatch_error(b) || !rep || rbatch_redis_error(rep)) {
        dlq_op_finish_failure(op, b, rbatch_redis_error(rep), "deleting a DLQ entry");
    } else if (rbatch_int(rep, 0) == 0) {
        dlq_op_not_found(op);
    } else {
        LOG_INFO("DLQ entry deleted", "task_id", op->tid);
        json_t *o = json_pack("{s:s, s:b}", "task_id", op->tid, "deleted", 1);
        if (!o) dlq_op_finish_oom(op);
        else dlq_op_finish_json(op, 200, o);
    }
    rbatch_free(b);
}

static void start_delete(dlq_op *op)
{
    rbatch *b = dlq_op_batch(op, on_deleted);
    if (!b) return;
    const char *argv[] = {"3", op->entry_key, DLQ_INDEX, DLQ_CLASSES, op->tid};
    size_t lens[] = {1, strlen(op->entry_key), sizeof(DLQ_INDEX) - 1, sizeof(DLQ_CLASSES) - 1, strlen(op->tid)};
    rbatch_add_eval(b, op->r->p->broker, &pscript_dlq_delete, 5, argv, lens);
    rbatch_run(b);
}

/* ---------- dispatch ---------- */

void dlq_api_handle(proxy *p, struct evhttp_request *req, const char *path, double t0)
{
    char tid[DLQ_TASK_ID_MAX + 1];
    size_t tid_len = 0;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    enum dlq_target t = dlq_api_target(path, tid, &tid_len);
    char msg[320];
    switch (t) {
    case DLQ_T_NONE:
        px_reply_error(p, req, RT_DLQ, t0, 404, "not_found",
                       "DLQ endpoints: GET /api/dlq/list, GET /api/dlq/stats, GET|DELETE /api/dlq/{task_id}, "
                       "POST /api/dlq/{task_id}/retry",
                       0);
        return;
    case DLQ_T_BAD_ID:
        px_count_reject(p, RJ_INVALID_FIELD);
        snprintf(msg, sizeof(msg),
                 "task_id: must be 1 to %d bytes of UTF-8 text without control characters (spaces allowed), "
                 "percent-encoded as one path segment, e.g. GET /api/dlq/celery-a%%20b%%2Fc",
                 DLQ_TASK_ID_MAX);
        px_reply_error(p, req, RT_DLQ, t0, 422, "invalid_task_id", msg, 0);
        return;
    case DLQ_T_LIST:
        if (m != EVHTTP_REQ_GET) px_reply_method_not_allowed(p, req, RT_DLQ, t0, "GET", "use GET /api/dlq/list?limit=&offset=&eval_id=");
        else handle_list(p, req, t0);
        return;
    case DLQ_T_STATS:
        if (m != EVHTTP_REQ_GET) px_reply_method_not_allowed(p, req, RT_DLQ, t0, "GET", "use GET /api/dlq/stats");
        else handle_stats(p, req, t0);
        return;
    case DLQ_T_ENTRY:
        if (m == EVHTTP_REQ_GET) {
            int access = px_read_access(p, req, RT_DLQ, t0);
            if (access < 0) return;
            dlq_op *op = dlq_op_new(p, req, t0, tid, tid_len);
            if (!op) return;
            op->redact = access == 0;
            dlq_op_start_get(op, on_get);
        } else if (m == EVHTTP_REQ_DELETE) {
            if (!px_admin_authorized(p, req, RT_DLQ, t0)) return;
            dlq_op *op = dlq_op_new(p, req, t0, tid, tid_len);
            if (op) start_delete(op);
        } else {
            px_reply_method_not_allowed(p, req, RT_DLQ, t0, "GET, DELETE",
                               "use GET /api/dlq/{task_id} to read an entry, DELETE (admin token) to remove it");
        }
        return;
    case DLQ_T_RETRY:
        if (m != EVHTTP_REQ_POST) {
            px_reply_method_not_allowed(p, req, RT_DLQ, t0, "POST", "use POST /api/dlq/{task_id}/retry with the admin token");
            return;
        }
        if (!px_admin_authorized(p, req, RT_DLQ, t0)) return;
        dlq_op *op = dlq_op_new(p, req, t0, tid, tid_len);
        if (op) dlq_retry_start(op);
        return;
    }
}

/* ---------- turnout_dlq_size ---------- */

static void on_dlq_size(struct redisReply *reply, const char *err, void *arg)
{
    proxy *p = arg;
    (void)err;
    if (reply && reply->type == REDIS_REPLY_INTEGER) metrics_set(p->m.dlq_size, 0, (double)reply->integer);
}

void dlq_api_poll(proxy *p)
{
    const char *argv[] = {"ZCARD", DLQ_INDEX};
    size_t lens[] = {5, sizeof(DLQ_INDEX) - 1};
    if (rclient_is_up(p->broker)) (void)!rclient_command(p->broker, on_dlq_size, p, 2, argv, lens);
}
