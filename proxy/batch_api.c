#include "batch_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>

#include "dispatch.h"
#include "jsafe.h"
#include "pserver.h"
#include "reply.h"
#include "util.h"

#define BATCH_PRIORITY 9

typedef struct batch_op {
    preq *r;
    size_t waiting;  /* items not answered yet, + 1 while starting */
    json_t *results; /* one object per item, in order */
    size_t accepted, rejected, duplicates, by_path[PATH_COUNT];
} batch_op;

typedef struct item {
    batch_op *b;
    size_t index;
} item;

static void batch_done(batch_op *b)
{
    if (--b->waiting > 0) return;
    json_t *o = json_pack("{s:O, s:I, s:I, s:I, s:I, s:{s:I, s:I}}", "results", b->results, "total",
                          (json_int_t)json_array_size(b->results), "accepted", (json_int_t)b->accepted, "rejected",
                          (json_int_t)b->rejected, "duplicates", (json_int_t)b->duplicates, "paths", "new",
                          (json_int_t)b->by_path[PATH_NEW], "legacy", (json_int_t)b->by_path[PATH_LEGACY]);
    px_finish_json(b->r, 200, o);
    json_decref(o);
    json_decref(b->results);
    free(b);
}

static void set_result(batch_op *b, size_t index, json_t *o, int status)
{
    if (o) {
        json_object_set_new(o, "index", json_integer((json_int_t)index));
        json_object_set_new(o, "status_code", json_integer(status));
    }
    json_array_set_new(b->results, index, o ? o : json_null());
}

static void on_item(const dispatch_result *res, void *arg)
{
    item *it = arg;
    batch_op *b = it->b;
    if (res->status == 202) {
        b->accepted++;
        b->by_path[res->path]++;
        if (res->duplicate) b->duplicates++;
    } else {
        b->rejected++;
    }
    /* the item's reply as POST /api/eval would send it; should it not
     * read back, the item still says what happened */
    json_t *o = res->body ? json_loadb(res->body, res->body_len, JSON_ALLOW_NUL, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_pack("{s:s, s:s}", "error", res->status == 202 ? "unreadable_reply" : "item_failed", "message",
                      "the item's reply could not be read back; GET /api/eval-status/{eval_id} tells its state");
    }
    set_result(b, it->index, o, res->status);
    free(it);
    batch_done(b);
}

static void reply_field(proxy *p, struct evhttp_request *req, double t0, int status, const char *code, const char *msg)
{
    px_count_reject(p, status == 400 ? RJ_BAD_JSON : RJ_INVALID_FIELD);
    px_reply_error(p, req, RT_BATCH, t0, status, code, msg, 0);
}

void batch_api_handle(proxy *p, struct evhttp_request *req, double t0)
{
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    char msg[320];
    const char *sticky = NULL;
    if (!px_accept_json_post(p, req, RT_BATCH, t0, "use POST /api/eval-batch with {\"evaluations\": [...]}", &sticky))
        return;
    json_error_t jerr;
    json_t *doc = len ? json_loadb((const char *)evbuffer_pullup(body, -1), len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!doc) {
        if (len) util_snprintf(msg, sizeof(msg), "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
        else snprintf(msg, sizeof(msg), "the request body is empty; send {\"evaluations\": [...]}");
        reply_field(p, req, t0, 400, "invalid_json", msg);
        return;
    }
    json_t *items = json_object_get(doc, "evaluations");
    size_t n = json_array_size(items);
    if (!json_is_object(doc) || !json_is_array(items) || n == 0 || n > BATCH_MAX_ITEMS) {
        snprintf(msg, sizeof(msg), "field 'evaluations' must be an array of 1 to %d submissions (it is %s)",
                 BATCH_MAX_ITEMS, !json_is_array(items) ? "missing or not an array" : n == 0 ? "empty" : "too long");
        json_decref(doc);
        reply_field(p, req, t0, 422, "invalid_field", msg);
        return;
    }
    batch_op *b = calloc(1, sizeof(*b));
    preq *r = b ? px_req_new(p, req, RT_BATCH, t0) : NULL;
    if (b) b->results = json_array();
    for (size_t i = 0; b && b->results && i < n; i++)
        if (json_array_append_new(b->results, json_null()) != 0) break;
    if (!r || json_array_size(b->results) != n) {
        if (b) json_decref(b->results);
        free(b);
        json_decref(doc);
        px_reply_oom(p, req, RT_BATCH, t0, r);
        return;
    }
    b->r = r;
    b->waiting = n + 1;
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        submission sub;
        sub_error serr;
        memset(&sub, 0, sizeof(sub));
        if (!json_is_object(it)) {
            serr = (sub_error){422, "invalid_field", "evaluations", ""};
            snprintf(serr.message, sizeof(serr.message), "evaluations[%zu] must be a JSON object like POST /api/eval takes", i);
        } else if (submission_from_json(it, &p->cfg, &sub, &serr) == 0) {
            json_t *prio = json_object_get(it, "priority");
            if (!prio || json_is_null(prio)) {
                sub.priority = BATCH_PRIORITY;
                sub.priority_name = "batch";
            }
            item *ctx = malloc(sizeof(*ctx));
            if (ctx) {
                *ctx = (item){b, i};
                dispatch_start(p, &sub, sticky, on_item, ctx);
                continue;
            }
            submission_free(&sub);
            serr = (sub_error){503, "out_of_memory", NULL, "the proxy is short of memory; retry this item"};
        }
        px_count_reject(p, serr.status == 503 ? RJ_OOM : RJ_INVALID_FIELD);
        b->rejected++;
        json_t *eid = json_object_get(it, "eval_id");
        /* the message quotes the item: jsafe keeps it a JSON string whatever its bytes */
        json_t *e = json_pack("{s:s, s:o, s:o}", "error", serr.code, "message", jsafe_string(serr.message),
                              "eval_id", json_is_string(eid) ? json_copy(eid) : json_null());
        if (e && serr.field) json_object_set_new(e, "field", json_string(serr.field));
        set_result(b, i, e, serr.status);
        b->waiting--;
    }
    json_decref(doc);
    batch_done(b);
}
